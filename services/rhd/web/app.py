"""The web page for clinicians and operators (aiohttp + Jinja2, plain HTML, no build step), beside the line in the
home region: sign in per hospital; upload a study folder (published to the hospital's upload topic like any
hospital's); watch its frames accounted per stage; read its diagnosis with the criteria, their measurements and an
evidence frame each; confirm or override it (the read is stored beside the suggestion); list and export studies;
the operators' view of services, lag and dead letters.

Screening support, not a diagnosis: the page says so on every page (INTENDED_USE).
"""

import asyncio
import csv
import datetime as dt
import io
import json
import logging
import re
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import BodyPartReader, web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from rhd.labels import CLASSES, CRITERIA
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.runtime.blobs import BlobStore
from rhd.runtime.frames import FrameStore, FrameStoreError
from rhd.runtime.secrets import SecretError
from rhd.runtime.settings import Settings
from rhd.v1 import rhd_pb2 as pb
from rhd.web.db import PSEUDONYMOUS, AuthError, Database, User
from rhd.web.drift import DRIFT_ALERT
from rhd.web.evidence import evidence_png
from rhd.web.research import MODELS, ResearchPages, model_versions
from rhd.web.tracker import TERMINAL_STAGES, LineTracker

log = logging.getLogger(__name__)

INTENDED_USE = (
    "Screening support for rheumatic heart disease (World Heart Federation 2012 criteria), not a diagnosis: every "
    "suggestion is read and confirmed by a cardiologist before it is acted on. Software as a medical device; "
    "investigational use."
)
COOKIE = "rhd_session"
USER = web.RequestKey("user", User)  # the signed-in user, set by the auth middleware (None: signed out)
LABELS = (*CLASSES, "referred")
COMPLETENESS = ("COMPLETE", "INCOMPLETE", "FAILED")
CRITERION_NAMES = {
    "pathological_mr": "Pathological mitral regurgitation",
    "pathological_ar": "Pathological aortic regurgitation",
    "mitral_stenosis": "Mitral stenosis (mean gradient)",
    "mitral_features": "Morphological features of the mitral valve",
    "aortic_features": "Morphological features of the aortic valve",
}
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # a study of a few hundred MB of video at most

UPLOADS = Counter("rhd_web_uploads_total", "Studies uploaded through the page", ["hospital"])
READS = Counter("rhd_web_reads_total", "Cardiologists' reads stored", ["hospital", "agrees"])
REFUSED = Counter("rhd_web_refused_total", "Requests refused (not signed in, wrong role)", ["reason"])

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("rhd.web", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


TEMPLATES.filters["when"] = _when


class WebApp:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        services: Path | None = None,
        grafana_url: str = "",
        valve_model: Any = None,
        prometheus_url: str = "",
        follow_line: bool = True,
    ) -> None:
        self.settings, self.db = settings, db
        self.tracker = LineTracker(settings, db)
        self.frames = FrameStore(settings.blob_dir, settings.frame_retention_s)  # the evidence frames
        self.services = services  # `rhd up`'s state file: each service's state, restarts
        self.grafana_url, self.prometheus_url = grafana_url, prometheus_url
        self.valve_model = valve_model  # the model server's valve model, for the evidence of morphology
        self.follow_line = follow_line  # False: the page alone, its tracker fed by the caller (tests)
        self.research = ResearchPages(settings.models_dir, self.need, self.page)
        # In the home region the page takes uploads and shows each hospital its studies under its own ids and
        # accession numbers. Anywhere else it holds no link keyring: studies under their pseudonyms only, for
        # operators and researchers; no uploads, no clinicians' pages.
        self.at_home = settings.region == settings.home_region

    def scope(self, user: User) -> str:
        """Whose studies a user reads: their hospital's at home; elsewhere the pseudonymous ones (no hospital known)."""
        return user.hospital if self.at_home else PSEUDONYMOUS

    # -- plumbing ----------------------------------------------------------------------------
    def page(self, template: str, request: web.Request, /, status: int = 200, **context: Any) -> web.Response:
        user = request.get(USER)
        html = TEMPLATES.get_template(template).render(
            user=user, intended_use=INTENDED_USE, home=self.at_home, region=self.settings.region, **context
        )
        return web.Response(text=html, content_type="text/html", status=status)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        open_paths = ("/login", "/healthz", "/metrics", "/static/")
        if request.path.startswith(open_paths):
            return await handler(request)
        token = request.cookies.get(COOKIE, "")
        try:
            request[USER] = await asyncio.to_thread(self.db.session_user, token) if token else None
        except AuthError:
            request[USER] = None
        if request[USER] is None:
            REFUSED.labels("signed_out").inc()
            if request.method == "GET" and not request.path.endswith((".json", ".png", ".csv")):
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
            raise web.HTTPUnauthorized(text="sign in first")
        if not self.at_home and request[USER].role == "clinician":
            REFUSED.labels("role").inc()
            raise web.HTTPForbidden(
                text=f"the clinicians' pages (uploads, your hospital's studies under its own ids) are served in the "
                f"home region {self.settings.home_region!r} only; this page, in {self.settings.region!r}, shows "
                "pseudonymous studies to operators and researchers"
            )
        return await handler(request)

    @staticmethod
    def need(request: web.Request, *roles: str) -> User:
        user: User = request[USER]
        if user.role not in roles:
            REFUSED.labels("role").inc()
            raise web.HTTPForbidden(text=f"a {user.role} may not do this: {', '.join(roles)} only")
        return user

    async def own_study(self, request: web.Request) -> Any:
        """The study the path names, of the signed-in user's hospital; another hospital's is not found."""
        user: User = request[USER]
        study = await asyncio.to_thread(self.db.study, self.scope(user), request.match_info["study_id"])
        if study is None:
            REFUSED.labels("other_hospital_or_unknown").inc()
            raise web.HTTPNotFound(text="no such study for your hospital")
        return study

    # -- sign in -----------------------------------------------------------------------------
    async def login_form(self, request: web.Request) -> web.Response:
        return self.page("login.html", request, next=request.query.get("next", "/"), error="")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        try:
            token = await asyncio.to_thread(self.db.sign_in, str(form.get("name", "")), str(form.get("password", "")))
        except AuthError as exc:
            return self.page("login.html", request, status=401, next=target, error=str(exc))
        response = web.HTTPSeeOther(target)
        # Secure over HTTPS (always under `rhd up`); SameSite=Strict keeps other sites from posting the forms with it.
        response.set_cookie(COOKIE, token, httponly=True, secure=request.secure, samesite="Strict", max_age=8 * 3600)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        await asyncio.to_thread(self.db.sign_out, request.cookies.get(COOKIE, ""))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE)
        raise response

    async def home(self, request: web.Request) -> web.Response:
        user: User = request[USER]
        raise web.HTTPSeeOther("/operators" if user.role == "operator" else "/studies")

    # -- studies -----------------------------------------------------------------------------
    def _filters(self, request: web.Request) -> dict[str, Any]:
        q = request.query

        def day(value: str) -> float | None:
            try:
                return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp() if value else None
            except ValueError:
                raise web.HTTPBadRequest(text=f"not a date (YYYY-MM-DD): {value!r}") from None

        until = day(q.get("until", ""))
        return {
            "label": q.get("label", ""),
            "completeness": q.get("completeness", ""),
            "since": day(q.get("since", "")),
            "until": until + 86400 if until is not None else None,
        }

    async def studies(self, request: web.Request) -> web.Response:
        user = self.need(request, "clinician", "researcher")
        studies = await asyncio.to_thread(self.db.studies, self.scope(user), **self._filters(request))
        return self.page(
            "studies.html",
            request,
            studies=studies,
            labels=LABELS,
            completeness=COMPLETENESS,
            query=request.query,
            query_string=request.query_string,
        )

    async def studies_csv(self, request: web.Request) -> web.Response:
        user = self.need(request, "clinician", "researcher")
        studies = await asyncio.to_thread(self.db.studies, self.scope(user), **self._filters(request))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["study_id", "accession", "uploaded_at", "label", "completeness", "diagnosed_at", *CLASSES])
        for s in studies:
            probabilities = pb.Diagnosis.FromString(s.diagnosis).probabilities if s.diagnosis else {}
            writer.writerow(
                [
                    s.study_id,
                    s.accession,
                    _when(s.uploaded_at),
                    s.label,
                    s.completeness,
                    _when(s.diagnosed_at),
                    *(f"{probabilities[c]:.3f}" if c in probabilities else "" for c in CLASSES),
                ]
            )
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="studies-{self.scope(user)}.csv"'},
        )

    async def upload_form(self, request: web.Request) -> web.Response:
        self.need(request, "clinician")
        return self.page("upload.html", request, error="")

    async def upload(self, request: web.Request) -> web.Response:
        """A study folder's files (study.json and its MP4 videos, or one study's DICOM files), multipart; published
        to the hospital's upload topic under the signed-in user's hospital."""
        user = self.need(request, "clinician")
        reader = await request.multipart()
        files: dict[str, bytes] = {}
        total = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.filename:
                continue
            name = Path(part.filename.replace("\\", "/")).name  # a folder's files may come as folder/name
            if not _FILENAME.fullmatch(name):
                raise web.HTTPBadRequest(text=f"file name not accepted: {name!r}")
            chunks = []
            while chunk := await part.read_chunk(1 << 20):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise web.HTTPRequestEntityTooLarge(max_size=MAX_UPLOAD_BYTES, actual_size=total)
                chunks.append(chunk)
            if name.upper() == "DICOMDIR" or name.startswith("."):  # a media index, the file system's own files
                continue
            files[_unique(name, files)] = b"".join(chunks)
        if not files:
            raise web.HTTPBadRequest(text="no files: drop a study folder or pick its files")
        try:
            upload = await asyncio.to_thread(self._upload_of, files, user.hospital)
        except SecretError as exc:  # the home region's keys are not here: nothing can be sealed or sent
            raise web.HTTPServiceUnavailable(text=f"uploads are not possible here: {exc}") from None
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"not a study: {exc}") from None
        await publish_uploads(self.settings, [upload])
        await asyncio.to_thread(self.db.uploaded, user.hospital, upload.study_id, user.name)
        UPLOADS.labels(user.hospital).inc()
        log.info("a study uploaded through the page for %s", user.hospital)  # no id: ids stay out of the logs
        return web.json_response({"study_id": upload.study_id, "page": f"/studies/{upload.study_id}"})

    def _upload_of(self, files: dict[str, bytes], hospital: str) -> pb.StudyUpload:
        """The files as a study folder (a temporary one, gone once the upload is made) -> the hospital's upload."""
        blobs = BlobStore(self.settings.blob_dir)
        seal = raw_keyring(self.settings).seal
        with tempfile.TemporaryDirectory(prefix="rhd-upload-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            return upload_from_dir(Path(tmp), blobs, self.settings.max_message_bytes, hospital_id=hospital, seal=seal)

    def _progress(self, study: Any) -> dict[str, Any]:
        mine = self.tracker.study_progress(study.hospital, study.study_id)
        expected = mine.expected if mine else 0
        if mine is None and study.diagnosis:  # diagnosed long ago (the tracker forgot it): the diagnosis' counts
            f = pb.Diagnosis.FromString(study.diagnosis).frames
            return {
                "expected": f.expected,
                "accounted": f.analysed + f.skipped + f.failed,
                "stages": dict.fromkeys(TERMINAL_STAGES, 0),
                "status": {"analysed": f.analysed, "skipped": f.skipped, "failed": f.failed},
                "diagnosed": True,
            }
        return {
            "expected": expected,
            "accounted": mine.accounted() if mine else 0,
            "stages": {stage: (mine.by_stage.get(stage, 0) if mine else 0) for stage in TERMINAL_STAGES},
            "status": dict(mine.by_status) if mine else {},
            "diagnosed": study.diagnosed_at is not None,
        }

    async def progress(self, request: web.Request) -> web.Response:
        self.need(request, "clinician", "researcher")
        return web.json_response(self._progress(await self.own_study(request)))

    async def study(self, request: web.Request) -> web.Response:
        user = self.need(request, "clinician", "researcher")
        study = await self.own_study(request)
        diagnosis = pb.Diagnosis.FromString(study.diagnosis) if study.diagnosis else None
        reads = await asyncio.to_thread(self.db.reads, self.scope(user), study.study_id)
        return self.page(
            "study.html",
            request,
            study=study,
            diagnosis=diagnosis,
            criteria=_criteria(diagnosis) if diagnosis else [],
            probabilities=[(c, diagnosis.probabilities.get(c, 0.0)) for c in CLASSES] if diagnosis else [],
            progress=self._progress(study),
            stages=TERMINAL_STAGES,
            reads=reads,
            labels=LABELS,
            completeness_note=_completeness_note(diagnosis) if diagnosis else "",
        )

    async def evidence(self, request: web.Request) -> web.Response:
        self.need(request, "clinician", "researcher")
        study = await self.own_study(request)
        if not study.diagnosis:
            raise web.HTTPNotFound(text="not diagnosed yet")
        diagnosis = pb.Diagnosis.FromString(study.diagnosis)
        criteria = {c.criterion: c for c in diagnosis.criteria}
        criterion = criteria.get(request.match_info["criterion"])
        if criterion is None or not criterion.frames:
            raise web.HTTPNotFound(text="no evidence frame for this criterion")
        frame = criterion.frames[0]
        caption = f"{CRITERION_NAMES.get(criterion.criterion, criterion.criterion)}: P {criterion.probability:.2f}"
        try:
            png = await evidence_png(
                self.frames,
                frame.video_id,
                frame.frame_index,
                criterion.criterion,
                caption,
                self.valve_model,
            )
        except FrameStoreError as exc:
            raise web.HTTPGone(text=str(exc)) from None
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def read(self, request: web.Request) -> web.Response:
        user = self.need(request, "clinician")
        study = await self.own_study(request)
        form = await request.post()
        final = str(form.get("final_label", ""))
        if final not in LABELS:
            raise web.HTTPBadRequest(text=f"final label must be one of {LABELS}")
        try:
            read = await asyncio.to_thread(
                self.db.read, self.scope(user), study.study_id, user.name, final, str(form.get("note", ""))[:2000]
            )
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        READS.labels(user.hospital, str(read.agrees).lower()).inc()
        raise web.HTTPSeeOther(f"/studies/{study.study_id}#reads")

    # -- operators ---------------------------------------------------------------------------
    async def operators(self, request: web.Request) -> web.Response:
        self.need(request, "operator")
        services = json.loads(self.services.read_text()) if self.services and self.services.exists() else []
        letters = [
            {
                "topic": letter.source_topic,
                "stage": letter.stage,
                "reason": letter.reason,
                "error_type": letter.error_type,
                "at": _when(letter.failed_at.ToSeconds()) if letter.HasField("failed_at") else "",
            }
            for letter in reversed(self.tracker.letters)
        ]
        return self.page(
            "operators.html",
            request,
            services=services,
            letters=letters[:200],
            models=await asyncio.to_thread(self._served_models),
            grafana_url=self.grafana_url,
            prometheus_url=self.prometheus_url,
            connected=self.tracker.connected.is_set(),
            agreement=await asyncio.to_thread(self.db.agreement),
        )

    def _served_models(self) -> list[dict[str, Any]]:
        """Every model version with its report of record (those still building, without a manifest, left out)."""
        return [v for name in MODELS for v in model_versions(self.settings.models_dir, name) if v["manifest"]]

    async def drift(self, request: web.Request) -> web.Response:
        """Input drift per hospital and device (rhd.web.drift): operators and researchers see every hospital's."""
        self.need(request, "operator", "researcher")
        return self.page("drift.html", request, rows=self.tracker.drift.report(), threshold=DRIFT_ALERT)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "broker": self.tracker.connected.is_set()})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.auth], client_max_size=MAX_UPLOAD_BYTES)
        r = app.router
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.home)
        r.add_get("/studies", self.studies)
        r.add_get("/studies.csv", self.studies_csv)
        if self.at_home:  # identifiable data comes in through the page at home only
            r.add_get("/upload", self.upload_form)
            r.add_post("/upload", self.upload)
        r.add_get("/studies/{study_id}", self.study)
        r.add_get("/studies/{study_id}/progress.json", self.progress)
        r.add_get("/studies/{study_id}/evidence/{criterion}.png", self.evidence)
        r.add_post("/studies/{study_id}/read", self.read)
        r.add_get("/operators", self.operators)
        r.add_get("/drift", self.drift)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_static("/static/", Path(__file__).parent / "static")
        self.research.routes(r)

        async def started(_: web.Application) -> None:
            if self.follow_line:
                self.tracker.start()

        async def stopped(_: web.Application) -> None:
            await self.tracker.stop()
            self.research.stop()

        app.on_startup.append(started)
        app.on_cleanup.append(stopped)
        return app


def _unique(name: str, taken: dict[str, bytes]) -> str:
    """A file name not yet taken: a DICOM export keeps instances of one name in several series folders, which the
    browser sends by their base names (IM0001 twice is two instances, not one)."""
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{n}-{name}", n + 1
    return candidate


def _criteria(diagnosis: pb.Diagnosis) -> list[dict[str, Any]]:
    """Each WHF criterion as the page shows it: name, probability, met, its measurements, its evidence frame."""
    order = {c: i for i, c in enumerate(CRITERIA)}
    out = []
    for c in sorted(diagnosis.criteria, key=lambda c: order.get(c.criterion, len(order))):
        out.append(
            {
                "key": c.criterion,
                "name": CRITERION_NAMES.get(c.criterion, c.criterion),
                "probability": c.probability,
                "met": c.met,
                "measurements": sorted(c.measurements.items()),
                "has_frame": len(c.frames) > 0,
            }
        )
    return out


def _completeness_note(diagnosis: pb.Diagnosis) -> str:
    if diagnosis.referred:
        return f"Referred to a cardiologist without a suggestion: {diagnosis.referral}"
    if diagnosis.completeness == pb.COMPLETENESS_FAILED:
        return f"This study could not be diagnosed: {diagnosis.reason or 'no frame could be analysed'}"
    if diagnosis.completeness == pb.COMPLETENESS_INCOMPLETE:
        return (
            f"INCOMPLETE: part of the study could not be analysed ({diagnosis.reason or 'frames missing'}). "
            "The suggestion rests on what was analysed; consider repeating the missing views."
        )
    return ""


def ssl_context(pem: Path) -> ssl.SSLContext:
    """HTTPS with a PEM holding the key and its certificate chain."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    return context


async def serve(
    settings: Settings,
    db_where: str | Path,
    backup_to: Path,
    host: str,
    port: int,
    pem: Path | None,
    services: Path | None = None,
    grafana_url: str = "",
    prometheus_url: str = "",
    backup_every_s: float = 3600.0,
) -> None:
    """Run the page until SIGTERM/SIGINT; the database is backed up to `backup_to` every `backup_every_s` and at the
    end."""
    import signal

    from rhd.runtime.model_client import ModelClient

    if settings.region != settings.home_region:
        log.info("outside the home region: studies under their pseudonyms only, no uploads, no clinicians' pages")
    db = Database(db_where)
    valves = ModelClient.from_settings(settings, settings.valve_model_name, settings.valve_model_version)
    app = WebApp(settings, db, services, grafana_url, valve_model=valves.predict, prometheus_url=prometheus_url)
    runner = web.AppRunner(app.application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context(pem) if pem else None)
    await site.start()
    scheme = "https" if pem else "http"
    print(f"web page on {scheme}://{host}:{port}/", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    next_backup = time.monotonic() + backup_every_s
    try:
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), timeout=5.0)
            except TimeoutError:
                pass
            if time.monotonic() >= next_backup:
                next_backup = time.monotonic() + backup_every_s
                await asyncio.to_thread(db.backup, backup_to)
    finally:
        await runner.cleanup()
        await valves.close()
        await asyncio.to_thread(db.backup, backup_to)
        db.close()
