"""The web page without a browser or a broker: its database (sign-in, sessions, a hospital's studies, reads, backup),
its access rules through real HTTP requests (aiohttp's test server), the evidence drawing, and `rhd up`'s restarts."""

import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from rhd.local.stack import ServiceProcess
from rhd.local.up import FIRST_BACKOFF_S, MAX_BACKOFF_S, Supervised, Supervisor
from rhd.runtime.frames import FrameStore
from rhd.runtime.secrets import init_secrets
from rhd.runtime.settings import Settings
from rhd.v1 import rhd_pb2 as pb
from rhd.web.app import COOKIE, WebApp
from rhd.web.db import PSEUDONYMOUS, SESSION_S, AuthError, Database, first_users, is_server_address
from rhd.web.evidence import jet_evidence, valve_evidence

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """The page's database on both engines: SQLite (the embedded default) and a real PostgreSQL server."""
    where = tmp_path / "web.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_database")
    database = Database(where)
    database.add_user("ana", "H001", "clinician", PASSWORD)
    database.add_user("bo", "H002", "clinician", PASSWORD)
    database.add_user("op", "H001", "operator", PASSWORD)
    yield database
    database.close()


def _diagnosis(label: int = pb.LABEL_BORDERLINE) -> pb.Diagnosis:
    d = pb.Diagnosis(study_id="pseudo-1", label=label, completeness=pb.COMPLETENESS_COMPLETE, model_version="study/1")
    d.probabilities.update({"normal": 0.1, "borderline": 0.7, "definite": 0.2})
    d.frames.expected, d.frames.analysed, d.frames.skipped = 10, 8, 2
    c = d.criteria.add(criterion="pathological_mr", probability=0.8, met=True)
    c.measurements["systolic_jet_length_mm_max"] = 21.5
    c.frames.add(feature="systolic_jet_length_mm_max", video_id="V-pseudo", frame_index=3)
    return d


def test_sign_in_sessions_and_expiry(db):
    with pytest.raises(AuthError):
        db.sign_in("ana", "wrong password")
    with pytest.raises(AuthError):
        db.sign_in("nobody", PASSWORD)
    token = db.sign_in("ana", PASSWORD, now=1000.0)
    assert db.session_user(token, now=1001.0).hospital == "H001"
    with pytest.raises(AuthError):
        db.session_user(token, now=1000.0 + SESSION_S + 1)
    db.sign_out(token)
    with pytest.raises(AuthError):
        db.session_user(token, now=1001.0)
    with pytest.raises(ValueError):
        db.add_user("x", "H001", "admin", PASSWORD)  # not a role
    with pytest.raises(ValueError):
        db.add_user("x", "H001", "clinician", "short")


def test_studies_are_per_hospital_and_reads_are_kept_beside_the_suggestion(db, tmp_path):
    db.uploaded("H001", "S1", "ana", at=100.0)
    db.uploaded("H002", "S1", "bo", at=100.0)  # the same id at another hospital is another study
    db.diagnosed("H001", "S1", "pseudo-1", "ACC-9", "borderline", "COMPLETE", _diagnosis().SerializeToString(), 200.0)
    assert [s.label for s in db.studies("H001")] == ["borderline"]
    assert [s.label for s in db.studies("H002")] == [""]
    assert db.studies("H001", label="pending") == [] and len(db.studies("H002", label="pending")) == 1
    assert db.studies("H001", since=150.0) == [] and len(db.studies("H001", until=150.0)) == 1
    with pytest.raises(ValueError):
        db.read("H002", "S1", "bo", "normal")  # not diagnosed
    read = db.read("H001", "S1", "ana", "definite", "thick AMVL")
    assert (read.suggested, read.final_label, read.agrees) == ("borderline", "definite", False)
    db.read("H001", "S1", "ana", "borderline")  # the same reader changes their read: one read each
    assert [(r.final_label, r.agrees) for r in db.reads("H001", "S1")] == [("borderline", True)]
    assert db.agreement("H001") == {"reads": 1, "agreed": 1, "agreement": 1.0}
    copy = db.backup(tmp_path / "backup")
    assert copy is not None
    if is_server_address(db.where):  # pg_dump's custom format: the reads table's rows as pg_restore gives them back
        rows = subprocess.run(
            ["pg_restore", "--data-only", "--table=reads", "--file=-", str(copy)], capture_output=True, text=True
        ).stdout
        assert "H001\tS1\tana\tborderline\tborderline\t1" in rows
    else:
        with sqlite3.connect(copy) as backup:
            assert backup.execute("SELECT COUNT(*) FROM reads").fetchone()[0] == 1


def test_first_users_once_with_private_passwords(tmp_path):
    made = first_users(tmp_path / "w.sqlite", "H009", tmp_path / "users.tsv")
    assert [role for _, role, _ in made] == ["clinician", "operator", "researcher"]
    assert (tmp_path / "users.tsv").stat().st_mode & 0o077 == 0
    assert first_users(tmp_path / "w.sqlite", "H009", tmp_path / "users.tsv") == []  # a database with users
    db = Database(tmp_path / "w.sqlite")
    assert db.session_user(db.sign_in(made[0][0], made[0][2])).hospital == "H009"
    db.close()


async def _client(db: Database, tmp_path) -> TestClient:
    settings = Settings(blob_dir=tmp_path / "blobs", models_dir=tmp_path / "models", secrets_dir=tmp_path / "keys")
    init_secrets(settings.secrets_dir)
    app = WebApp(settings, db, follow_line=False)
    client = TestClient(TestServer(app.application()))
    await client.start_server()
    return client


async def _signed_in(client: TestClient, db: Database, name: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={db.sign_in(name, PASSWORD)}"}


async def test_access_rules_over_http(db, tmp_path):
    db.uploaded("H001", "S1", "ana", at=time.time())
    db.diagnosed("H001", "S1", "pseudo-1", "ACC-9", "borderline", "COMPLETE", _diagnosis().SerializeToString(), 1.0)
    client = await _client(db, tmp_path)
    try:
        signed_out = await client.get("/studies/S1", allow_redirects=False)
        assert signed_out.status == 303 and signed_out.headers["Location"].startswith("/login")
        assert (await client.get("/studies/S1/progress.json")).status == 401
        ana, bo, op = [await _signed_in(client, db, n) for n in ("ana", "bo", "op")]

        progress = await (await client.get("/studies/S1/progress.json", headers=ana)).json()
        assert (progress["accounted"], progress["expected"], progress["diagnosed"]) == (10, 10, True)
        page = await client.get("/studies/S1", headers=ana)
        html = await page.text()
        assert page.status == 200 and "borderline" in html and "systolic_jet_length_mm_max" in html
        assert "not a diagnosis" in html and "ACC-9" in html
        assert "/studies/S1/evidence/pathological_mr.png" in html

        # Another hospital's clinician: not found, not in the list, not in the export, no evidence, no read.
        for path in ("/studies/S1", "/studies/S1/progress.json", "/studies/S1/evidence/pathological_mr.png"):
            assert (await client.get(path, headers=bo)).status == 404, path
        assert "S1" not in await (await client.get("/studies", headers=bo)).text()
        assert "S1" not in await (await client.get("/studies.csv", headers=bo)).text()
        refused = await client.post("/studies/S1/read", data={"final_label": "normal"}, headers=bo)
        assert refused.status == 404 and db.reads("H001", "S1") == []

        # Roles: an operator reads no study; a clinician does not see the operators' page.
        assert (await client.get("/studies", headers=op)).status == 403
        assert (await client.get("/operators", headers=ana)).status == 403
        assert (await client.get("/operators", headers=op)).status == 200

        csv = await (await client.get("/studies.csv?label=borderline", headers=ana)).text()
        assert csv.splitlines()[1].startswith("S1,ACC-9,") and csv.splitlines()[1].endswith("0.100,0.700,0.200")
        assert (await client.post("/studies/S1/read", data={"final_label": "maybe"}, headers=ana)).status == 400
        # The frame is no longer in the frame store: the evidence says so (410), it does not fail.
        assert (await client.get("/studies/S1/evidence/pathological_mr.png", headers=ana)).status == 410

        # An upload that is not a study is refused, and nothing is recorded.
        form = FormData()
        form.add_field("files", b"hello", filename="notes.txt")
        bad = await client.post("/upload", data=form, headers=ana)
        assert bad.status == 400 and len(db.studies("H001")) == 1
    finally:
        await client.close()


def test_evidence_outlines_the_jet_and_the_valve(tmp_path):
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[100:140, 150:190] = (0, 0, 255)  # saturated red: colour flow
    drawn = jet_evidence(frame, "MR")
    assert drawn.shape == (480, 640, 3)
    assert (drawn[195:285, 295:385] == 255).all(axis=-1).any()  # the white outline around the flow
    probabilities = np.zeros((108, 136, 4), np.float32)
    probabilities[..., 0] = 1.0
    probabilities[40:50, 60:80] = (0, 1, 0, 0)  # a mitral leaflet
    valve = valve_evidence(frame, probabilities, "MV")
    assert (valve == (80, 220, 80)).all(axis=-1).any()
    frames = tmp_path / "frames"
    frames.mkdir()
    np.save(frames / "V1.0123456789abcdef.npy", np.stack([frame, frame + 1]))
    store = FrameStore(tmp_path, 3600.0)
    assert store.video_frame("V1", 1)[0, 0, 0] == 1
    with pytest.raises(ValueError):
        store.video_frame("V1", 2)
    with pytest.raises(ValueError):
        store.video_frame("../V1", 0)


def test_supervisor_restarts_with_doubling_backoff(tmp_path):
    supervisor = Supervisor(tmp_path, Settings(blob_dir=tmp_path / "blobs"))
    crash = ServiceProcess("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path / "c.log")
    crash.start()
    crash.process.wait()
    s = Supervised(crash, 0)
    supervisor.services = [s]
    now = time.monotonic()
    assert supervisor.check(now) == [] and s.state() == "backoff" and s.last_exit == 3
    assert supervisor.check(now + FIRST_BACKOFF_S / 2) == []  # still waiting
    assert supervisor.check(now + FIRST_BACKOFF_S) == [s] and s.restarts == 1
    s.process.process.wait()
    supervisor.check(now + 2)
    assert s.restart_at == pytest.approx(now + 2 + 2 * FIRST_BACKOFF_S)  # doubled
    for _ in range(10):
        s.backoff_s = min(s.backoff_s * 2, MAX_BACKOFF_S)
    assert s.backoff_s == MAX_BACKOFF_S
    supervisor.write_state()
    assert "crasher" in (tmp_path / "services.json").read_text()


def test_drift_marks_a_device_whose_mix_differs_from_the_rest():
    from collections import Counter

    from rhd.web.drift import DRIFT, MIN_STUDIES, DriftMonitor, StudySummary, distance

    assert distance(Counter(a=1), Counter(a=5)) == 0.0 and distance(Counter(a=1), Counter(b=1)) == 1.0
    monitor = DriftMonitor()
    usual = StudySummary(Counter(plax=8, a4c=8), Counter(features=150, valve=100, spectral=60), "normal")
    for hospital in ("H001", "H002"):
        for _ in range(20):
            monitor.add(hospital, "Vivid iq", usual)
    # A new device at H003 whose clips the view model reads as "other" and whose studies are all referred.
    odd = StudySummary(Counter(other=14, plax=2), Counter(features=150, valve=100), "referred")
    for _ in range(MIN_STUDIES - 1):
        monitor.add("H003", "Model X/9", odd)
    rows = {(r["hospital"], r["device"]): r for r in monitor.report()}
    assert not rows[("H003", "Model X_9")]["aspects"]["views"]["alert"]  # too few studies yet
    monitor.add("H003", "Model X/9", odd)
    rows = {(r["hospital"], r["device"]): r for r in monitor.report()}
    h3 = rows[("H003", "Model X_9")]
    assert h3["aspects"]["views"]["alert"] and h3["aspects"]["labels"]["alert"] and h3["referred"] == 1.0
    assert h3["aspects"]["views"]["distance"] == pytest.approx(1 - 2 / 16)
    assert not rows[("H001", "Vivid iq")]["aspects"]["views"]["alert"]  # the usual mix, beside the new one
    assert DRIFT.labels("H003", "Model X_9", "views")._value.get() == pytest.approx(1 - 2 / 16)


def _fake_versions(models_dir, name, *numbers):
    for n in numbers:
        folder = models_dir / name / str(n)
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text('{"metrics": {"accuracy": 0.9, "held_out_frames": 10}}')


def test_promotion_needs_a_second_person_and_rolls_back_in_one_action(tmp_path):
    from rhd.modelstore import PromotionError, pin_serving, promoted, request_promotion, roll_back, sign_off
    from rhd.modelstore import version_dir as chosen

    _fake_versions(tmp_path, "study", 1, 2, 3)
    assert chosen(tmp_path, "study").name == "3"  # nothing promoted: the newest
    assert pin_serving(tmp_path, "study", "ana") == 3
    _fake_versions(tmp_path, "study", 4)
    assert chosen(tmp_path, "study").name == "3"  # a newer build does not serve by being newest
    with pytest.raises(PromotionError):
        request_promotion(tmp_path, "study", 9, "ana")  # no such version
    request_promotion(tmp_path, "study", 4, "ana")
    assert promoted(tmp_path, "study") == 3  # asked, not signed off
    with pytest.raises(PromotionError, match="second person"):
        sign_off(tmp_path, "study", "ana")
    sign_off(tmp_path, "study", "bo")
    assert chosen(tmp_path, "study").name == "4" and chosen(tmp_path, "study", 2).name == "2"
    roll_back(tmp_path, "study", "bo")
    assert promoted(tmp_path, "study") == 3
    with pytest.raises(PromotionError):
        sign_off(tmp_path, "study", "bo")  # nothing pending


def test_the_model_server_answers_latest_with_the_promoted_version(tmp_path):
    from rhd.model_server import server
    from rhd.modelstore import pin_serving
    from tensorflow_serving.apis import model_pb2

    _fake_versions(tmp_path, "view", 1, 2)
    repo = server.ModelRepository({"view": {1: "v1", 2: "v2"}}, tmp_path)  # servables stand-ins: find returns them
    assert repo.find(model_pb2.ModelSpec(name="view")) == "v2"
    (tmp_path / "promotions.json").write_text('{"view": {"serving": 1, "pending": null, "history": []}}')
    repo._promoted = (0.0, {})  # the cache's time-to-live passed
    assert repo.find(model_pb2.ModelSpec(name="view")) == "v1"
    spec = model_pb2.ModelSpec(name="view")
    spec.version.value = 2
    assert repo.find(spec) == "v2"  # a version asked for by number is served as it is
    assert pin_serving(tmp_path, "view", "x") == 1


async def test_research_pages_promote_with_two_people(db, tmp_path):
    settings = Settings(blob_dir=tmp_path / "blobs", models_dir=tmp_path / "models", secrets_dir=tmp_path / "keys")
    _fake_versions(settings.models_dir, "study", 1, 2)
    db.add_user("rita", "H001", "researcher", PASSWORD)
    db.add_user("raul", "H002", "researcher", PASSWORD)
    client = TestClient(TestServer(WebApp(settings, db, follow_line=False).application()))
    await client.start_server()
    try:
        rita, raul, ana = [await _signed_in(client, db, n) for n in ("rita", "raul", "ana")]
        assert (await client.get("/models", headers=ana)).status == 403  # clinicians do not promote models
        page = await (await client.get("/models", headers=rita)).text()
        assert "Ask to promote study 1" in page and "held-out accuracy 0.900" in page
        asked = await client.post("/models/study/1/promote", headers=rita, allow_redirects=False)
        assert asked.status == 303
        assert (await client.post("/models/study/sign-off", headers=rita)).status == 409
        manifest = await (await client.get("/models/study/1", headers=raul)).text()
        assert "Sign off: study 1 serves" in manifest and "held_out_frames" in manifest
        assert (await client.post("/models/study/sign-off", headers=raul, allow_redirects=False)).status == 303
        from rhd.modelstore import promoted

        assert promoted(settings.models_dir, "study") == 1
        assert (await client.post("/models/study/rollback", headers=raul, allow_redirects=False)).status == 303
        assert promoted(settings.models_dir, "study") is None
        bad = await client.post(
            "/models/study/build", data={"seed": "1", "studies": "5", "held_out_per_class": "5"}, headers=rita
        )
        assert bad.status == 400  # fewer studies than a build needs
    finally:
        await client.close()


async def test_outside_the_home_region_the_page_shows_pseudonyms_only(db, tmp_path):
    from rhd.runtime.topics import STUDIES_DIAGNOSED

    settings = Settings(
        region="gpu",
        home_region="br",
        blob_dir=tmp_path / "blobs",
        models_dir=tmp_path / "m",
        secrets_dir=tmp_path / "k",
    )
    init_secrets(settings.secrets_dir)  # even with the keyring at hand, it does not re-link outside the home region
    app = WebApp(settings, db, follow_line=False)
    assert not app.tracker.relinks
    app.tracker.add(STUDIES_DIAGNOSED, _diagnosis().SerializeToString(), b"pseudo-1")
    assert app.tracker.file_diagnoses() == 1
    assert db.studies("H001") == [] and [s.study_id for s in db.studies(PSEUDONYMOUS)] == ["pseudo-1"]
    assert db.study(PSEUDONYMOUS, "pseudo-1").accession == ""
    db.add_user("rita", "H001", "researcher", PASSWORD)
    client = TestClient(TestServer(app.application()))
    await client.start_server()
    try:
        rita, ana, op = [await _signed_in(client, db, n) for n in ("rita", "ana", "op")]
        listing = await (await client.get("/studies", headers=rita)).text()
        assert "pseudo-1" in listing and "outside the patients' home region" in listing
        page = await client.get("/studies/pseudo-1", headers=rita)
        html = await page.text()
        assert page.status == 200 and "borderline" in html and "Accession" not in html
        assert (await client.get("/studies/pseudo-1/progress.json", headers=rita)).status == 200
        # No uploads here, for anyone; a clinician is sent to the home region's page.
        assert (await client.post("/upload", data={"x": "1"}, headers=rita)).status == 404
        refused = await client.get("/studies", headers=ana)
        assert refused.status == 403 and "home region 'br'" in await refused.text()
        assert (await client.get("/upload", headers=ana)).status == 403
        assert (await client.get("/operators", headers=op)).status == 200
    finally:
        await client.close()


async def test_sign_in_form_sets_a_session_and_refuses_a_wrong_password(db, tmp_path):
    client = await _client(db, tmp_path)
    try:
        wrong = await client.post("/login", data={"name": "ana", "password": "nope", "next": "/studies"})
        assert wrong.status == 401 and "unknown user or wrong password" in await wrong.text()
        right = await client.post(
            "/login", data={"name": "ana", "password": PASSWORD, "next": "//evil.example/"}, allow_redirects=False
        )
        assert right.status == 303 and right.headers["Location"] == "/"  # no redirect off the site
        cookie = right.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert db.session_user(cookie.value).name == "ana"
    finally:
        await client.close()


def test_the_tracker_forgets_the_progress_of_old_diagnosed_studies(db, monkeypatch):
    from rhd.web import tracker as tracking

    monkeypatch.setattr(tracking, "MAX_DIAGNOSED", 2)
    follower = tracking.LineTracker(Settings(), db)
    for n in range(4):
        done = pb.FrameDone()
        done.result.key.study_id, done.result.key.video_id, done.result.stage = f"p{n}", "v", "valve"
        follower.add("frames.done.v1", done.SerializeToString(), None)
        follower.saved[f"p{n}"] = 1
    follower.add("frames.done.v1", _undiagnosed_frame(), None)
    follower._forget_oldest()
    assert sorted(follower.by_pseudonym) == ["p2", "p3", "waiting"]  # the two newest diagnosed, and the undiagnosed


def _undiagnosed_frame() -> bytes:
    done = pb.FrameDone()
    done.result.key.study_id, done.result.key.video_id = "waiting", "v"
    return done.SerializeToString()


def test_uploaded_files_of_one_name_are_all_kept():
    from rhd.web.app import _unique

    taken: dict[str, bytes] = {}
    for _ in range(3):
        taken[_unique("IM0001", taken)] = b""
    assert sorted(taken) == ["1-IM0001", "2-IM0001", "IM0001"]


def test_the_models_page_reads_each_networks_report_of_record():
    from rhd.web.research import MODELS, headline

    assert "video" in MODELS  # researchers promote the video network like the others
    video = {"held_out_videos": {"jet": {"roc_auc": 0.974, "videos": 72}, "morphology": {"videos": 4}}}
    assert headline(video) == "held-out ROC AUC jet 0.974"
    valve = {"background": {"iou": 0.99}, "mitral_leaflet": {"iou": 0.7}}
    assert headline(valve) == "held-out IoU mitral_leaflet 0.700"
