"""The models/<name>/<version>/ tree (TensorFlow Serving's layout), shared by every model we ship."""

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# What a model server loads of a SavedModel version folder (the rest, the manifest and reports, it does not read).
SAVED_MODEL_PARTS = ("saved_model.pb", "variables", "assets")


def versions(models_dir: Path, name: str) -> list[int]:
    root = Path(models_dir) / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def version_dir(models_dir: Path, name: str, version: int = 0) -> Path:
    """The named version; when version is 0, the promoted one (promotions.json), else the latest."""
    available = versions(models_dir, name)
    if not available:
        raise FileNotFoundError(f"no versions of model {name!r} under {Path(models_dir) / name}; run `make models`")
    chosen = version or promoted(models_dir, name) or available[-1]
    if chosen not in available:
        raise FileNotFoundError(f"model {name!r} has no version {chosen} (has {available})")
    return Path(models_dir) / name / str(chosen)


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "manifest.json").read_text())


def saved_model_sha256(folder: Path) -> str:
    """sha256 over the files a server loads of a SavedModel (graph, variables, assets), by relative path and
    content: what the manifest's `saved_model_sha256` records at export and the model server checks at load."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for part in SAVED_MODEL_PARTS:
        path = folder / part
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(str(file.relative_to(folder)).encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


class ModelIntegrityError(ValueError):
    """A model's files are not the ones its manifest recorded (changed, swapped or damaged since export)."""


def check_saved_model(folder: Path) -> None:
    """Refuse a SavedModel whose files do not hash to its manifest's saved_model_sha256 (or that has none)."""
    folder = Path(folder)
    try:
        recorded = read_manifest(folder).get("saved_model_sha256")
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"refusing {folder}: no readable manifest.json ({exc})") from None
    if not recorded:
        raise ModelIntegrityError(f"refusing {folder}: its manifest records no saved_model_sha256 (retrain it)")
    found = saved_model_sha256(folder)
    if found != recorded:
        raise ModelIntegrityError(
            f"refusing {folder}: its files hash to {found[:12]}, the manifest recorded {recorded[:12]}"
        )


class LocalModel:
    """A SavedModel's serving signature called in-process (training, the in-process path); services ask the
    model server instead. Frames go in batches of `batch`; each output comes back with one row per frame."""

    def __init__(self, models_dir: Path, name: str, version: int = 0, batch: int = 256) -> None:
        import tensorflow as tf  # heavy: only where a model runs in-process

        path = version_dir(models_dir, name, version)
        check_saved_model(path)
        self.name, self.version, self.batch = name, int(path.name), batch
        self._signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        (self._input,) = self._signature.structured_input_signature[1]  # frames, or the video model's clips
        self._tf = tf

    def outputs(self, frames: Any) -> dict[str, Any]:
        """uint8 frames [N, H, W, 3] (or clips [N, T, H, W, 3]) -> every output of the signature as a numpy array with
        N rows."""
        import numpy as np

        parts: dict[str, list] = {}
        for start in range(0, len(frames), self.batch):
            answer = self._signature(**{self._input: self._tf.constant(frames[start : start + self.batch])})
            for key, value in answer.items():
                parts.setdefault(key, []).append(value.numpy())
        return {key: np.concatenate(value) for key, value in parts.items()}


# -- promotion: which version serves -------------------------------------------------------------------------------
# models/promotions.json records, per model, the version that serves (what "version 0" means to every client and to
# the model server), the promotion waiting for its second sign-off, and the history (for rollback and audit). Without
# an entry for a model, its latest version serves (a fresh `make models`).

PROMOTIONS = "promotions.json"


class PromotionError(ValueError):
    """A promotion that the rules refuse: unknown version, the same person signing twice, nothing to roll back to."""


def _promotions_path(models_dir: Path) -> Path:
    return Path(models_dir) / PROMOTIONS


def promotions(models_dir: Path) -> dict[str, Any]:
    try:
        return json.loads(_promotions_path(models_dir).read_text())
    except FileNotFoundError:
        return {}


def promoted(models_dir: Path, name: str) -> int | None:
    """The version promoted to serve, or None (then the latest serves)."""
    entry = promotions(models_dir).get(name) or {}
    version = entry.get("serving")
    return int(version) if version else None


@contextmanager
def _editing(models_dir: Path) -> Iterator[dict[str, Any]]:
    """The promotions, locked against another editor, written back whole (renamed into place) on success."""
    path = _promotions_path(models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = promotions(models_dir)
        yield data
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)


def request_promotion(models_dir: Path, name: str, version: int, by: str) -> dict[str, Any]:
    """A researcher asks for `version` to serve; it serves once someone else signs it off."""
    if version not in versions(models_dir, name):
        raise PromotionError(f"model {name!r} has no version {version}")
    try:
        read_manifest(Path(models_dir) / name / str(version))
    except (OSError, ValueError):
        raise PromotionError(
            f"{name} version {version} has no manifest (its report of record): still building?"
        ) from None
    with _editing(models_dir) as data:
        entry = data.setdefault(name, {"serving": None, "pending": None, "history": []})
        entry["pending"] = {"version": version, "requested_by": by, "requested_at": time.time()}
        return dict(entry)


def pin_serving(models_dir: Path, name: str, by: str) -> int | None:
    """Record the version serving now (the latest, where nothing was promoted) as promoted, so that a version built
    next does not serve merely by being the newest; no change to what serves, so no second sign-off."""
    with _editing(models_dir) as data:
        entry = data.setdefault(name, {"serving": None, "pending": None, "history": []})
        found = versions(models_dir, name)
        if entry.get("serving") is None and found:
            entry["serving"] = found[-1]
            entry["history"].append(
                {"action": "pin", "version": found[-1], "previous": None, "by": by, "at": time.time()}
            )
        return entry.get("serving")


def sign_off(models_dir: Path, name: str, by: str) -> dict[str, Any]:
    """The second person's sign-off: the pending version serves from now on."""
    with _editing(models_dir) as data:
        entry = data.get(name) or {}
        pending = entry.get("pending")
        if not pending:
            raise PromotionError(f"no promotion of {name!r} is waiting for a sign-off")
        if pending["requested_by"] == by:
            raise PromotionError("a promotion needs a second person: the one who asked cannot sign it off")
        entry["history"].append(
            {
                "action": "promote",
                "version": pending["version"],
                "previous": entry.get("serving"),
                "requested_by": pending["requested_by"],
                "signed_off_by": by,
                "at": time.time(),
            }
        )
        entry["serving"], entry["pending"] = pending["version"], None
        return dict(entry)


def roll_back(models_dir: Path, name: str, by: str) -> dict[str, Any]:
    """One action: the version that served before the current one serves again (the latest, when none did)."""
    with _editing(models_dir) as data:
        entry = data.get(name) or {}
        promotions_made = [h for h in entry.get("history", []) if h["action"] == "promote"]
        if not promotions_made:
            raise PromotionError(f"{name!r} has no promotion to roll back")
        current = entry["serving"]
        previous = next((h["previous"] for h in reversed(promotions_made) if h["version"] == current), None)
        entry["history"].append(
            {"action": "rollback", "version": previous, "previous": current, "by": by, "at": time.time()}
        )
        entry["serving"], entry["pending"] = previous, None
        return dict(entry)
