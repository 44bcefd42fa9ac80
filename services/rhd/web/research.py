"""The researchers' pages: the models and their versions with the report of record, a study-model build on a chosen
labelled set (the generator's, by seed and size: the only labelled studies this project holds) watched as it runs,
and promotion: a version serves only once a second researcher has signed off the first one's request, with its
manifest shown; a rollback is one action. What serves is models/promotions.json (rhd.modelstore): the model server
answers "latest" with the promoted version and diagnose follows it within seconds, without a restart.
"""

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from rhd.modelstore import (
    PromotionError,
    pin_serving,
    promoted,
    promotions,
    read_manifest,
    request_promotion,
    roll_back,
    sign_off,
    version_dir,
    versions,
)
from rhd.web.db import User

MODELS = ("view", "valve", "video", "study")
BUILDS = ".builds"  # models/<name>/.builds/<version>.log: each build's output, for the page
LIMITS = {"seed": (0, 10**9), "studies": (30, 600), "held_out_per_class": (5, 100)}


@dataclass
class Build:
    name: str
    version: int
    by: str
    log: Path
    process: subprocess.Popen

    def state(self) -> str:
        code = self.process.poll()
        return "running" if code is None else ("done" if code == 0 else f"failed (exit {code})")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").replace("\r", "\n")  # progress bars redraw with \r
            return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
        except FileNotFoundError:
            return ""


def headline(metrics: dict[str, Any]) -> str:
    """A model's report of record in one line: the study model's held-out and cross-validated balanced accuracy
    with their intervals; a network's held-out accuracy, per-structure IoU or per-output ROC AUC."""
    parts = []
    for where in ("held_out", "cv"):
        figure = (metrics.get(where) or {}).get("figures", {}).get("balanced_accuracy")
        if figure:
            low, high = figure["ci95"]
            parts.append(f"{where.replace('_', '-')} balanced accuracy {figure['value']:.3f} ({low:.3f}-{high:.3f})")
    if "accuracy" in metrics:
        parts.append(f"held-out accuracy {metrics['accuracy']:.3f} on {metrics.get('held_out_frames', '?')} frames")
    videos = metrics.get("held_out_videos") or {}  # the video network: ROC AUC per output on held-out videos
    aucs = {k: v["roc_auc"] for k, v in videos.items() if v.get("roc_auc") is not None}
    if aucs:
        parts.append("held-out ROC AUC " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    ious = {k: v["iou"] for k, v in metrics.items() if isinstance(v, dict) and v.get("iou") is not None}
    if ious and "background" in ious:
        ious.pop("background")
        parts.append("held-out IoU " + ", ".join(f"{k} {v:.3f}" for k, v in ious.items()))
    return "; ".join(parts)


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        return read_manifest(folder)
    except (OSError, ValueError):  # still building, or damaged: no report of record
        return {}


def model_versions(models_dir: Path, name: str) -> list[dict[str, Any]]:
    """Each version of a model with its manifest (its report of record), headline figures, weights hash and report
    file, and whether it is the one serving (the promoted version, else the newest)."""
    found = versions(models_dir, name)
    try:
        serving = int(version_dir(models_dir, name).name) if found else None
    except FileNotFoundError:  # promoted, then removed
        serving = None
    rows = []
    for version in found:
        folder = Path(models_dir) / name / str(version)
        manifest = _manifest(folder)
        report = folder / "report.md"
        rows.append(
            {
                "name": name,
                "version": version,
                "manifest": manifest,
                "headline": headline(manifest.get("metrics") or {}),
                "weights": str(manifest.get("weights_sha256") or manifest.get("parameters_sha256") or "")[:12],
                # Named within the models directory (RHD_MODELS_DIR): no machine path on the page.
                "report": f"{name}/{version}/{'report.md' if report.exists() else 'manifest.json'}",
                "serving": version == serving,
            }
        )
    return rows


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class ResearchPages:
    def __init__(self, models_dir: Path, need: Any, page: Any) -> None:
        self.models_dir = Path(models_dir)
        self.need, self.page = need, page
        self.builds: list[Build] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/models", self.models)
        router.add_get("/models/{name}/{version:\\d+}", self.version)
        router.add_post("/models/{name}/{version:\\d+}/promote", self.promote)
        router.add_post("/models/{name}/sign-off", self.sign_off)
        router.add_post("/models/{name}/rollback", self.rollback)
        router.add_post("/models/study/build", self.build)

    def _name(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in MODELS:
            raise web.HTTPNotFound(text=f"no model {name!r}")
        return name

    async def models(self, request: web.Request) -> web.Response:
        user: User = self.need(request, "researcher")
        table = []
        registry = await asyncio.to_thread(promotions, self.models_dir)
        for name in MODELS:
            entry = registry.get(name) or {}
            rows = await asyncio.to_thread(model_versions, self.models_dir, name)
            table.append(
                {
                    "name": name,
                    "versions": rows,
                    "promoted": entry.get("serving"),
                    "pending": entry.get("pending"),
                    "history": list(reversed(entry.get("history", [])))[:10],
                }
            )
        return self.page(
            "models.html",
            request,
            table=table,
            builds=[b for b in self.builds if b.state() == "running" or b.by == user.name][-10:],
            limits=LIMITS,
        )

    async def version(self, request: web.Request) -> web.Response:
        self.need(request, "researcher")
        name, version = self._name(request), int(request.match_info["version"])
        folder = self.models_dir / name / str(version)
        if version not in versions(self.models_dir, name):
            raise web.HTTPNotFound(text=f"{name} has no version {version}")
        report = folder / "report.md"
        entry = (await asyncio.to_thread(promotions, self.models_dir)).get(name) or {}
        return self.page(
            "model.html",
            request,
            name=name,
            version=version,
            manifest=json.dumps(_manifest(folder), indent=2),
            report=report.read_text() if report.exists() else "",
            pending=entry.get("pending"),
            serving=promoted(self.models_dir, name),
        )

    async def _act(self, request: web.Request, action: Any, *args: Any) -> web.Response:
        user: User = self.need(request, "researcher")
        try:
            await asyncio.to_thread(action, self.models_dir, *args, user.name)
        except PromotionError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        raise web.HTTPSeeOther("/models")

    async def promote(self, request: web.Request) -> web.Response:
        return await self._act(request, request_promotion, self._name(request), int(request.match_info["version"]))

    async def sign_off(self, request: web.Request) -> web.Response:
        return await self._act(request, sign_off, self._name(request))

    async def rollback(self, request: web.Request) -> web.Response:
        return await self._act(request, roll_back, self._name(request))

    async def build(self, request: web.Request) -> web.Response:
        """A new study-model version trained on the generator's labelled studies of the chosen seed and size; it is
        not served until promoted."""
        user: User = self.need(request, "researcher")
        form = await request.post()
        values = {}
        for key, (low, high) in LIMITS.items():
            try:
                values[key] = int(str(form.get(key, "")))
            except ValueError:
                raise web.HTTPBadRequest(text=f"{key} must be a whole number") from None
            if not low <= values[key] <= high:
                raise web.HTTPBadRequest(text=f"{key} must be between {low} and {high}")
        if any(b.state() == "running" for b in self.builds):
            raise web.HTTPConflict(text="a build is running: one at a time on this machine")
        await asyncio.to_thread(pin_serving, self.models_dir, "study", user.name)  # the new one waits for promotion
        version = max(versions(self.models_dir, "study"), default=0) + 1
        log = self.models_dir / "study" / BUILDS / f"{version}.log"
        argv = [sys.executable, "-m", "rhd.cli", "train", "study", "--models-dir", str(self.models_dir)]
        argv += ["--version", str(version), "--seed", str(values["seed"]), "--studies", str(values["studies"])]
        argv += ["--held-out-per-class", str(values["held_out_per_class"]), "--workers", "1"]
        process = await asyncio.to_thread(_start, argv, log)
        self.builds.append(Build("study", version, user.name, log, process))
        raise web.HTTPSeeOther("/models#builds")

    def stop(self) -> None:
        for build in self.builds:
            if build.process.poll() is None:
                build.process.terminate()
