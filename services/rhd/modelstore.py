"""The models/<name>/<version>/ tree (TensorFlow Serving's layout), shared by every model we ship."""

import hashlib
import json
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
    """The named version, or the latest when version is 0."""
    available = versions(models_dir, name)
    if not available:
        raise FileNotFoundError(f"no versions of model {name!r} under {Path(models_dir) / name}; run `make models`")
    chosen = version or available[-1]
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
        self._tf = tf

    def outputs(self, frames: Any) -> dict[str, Any]:
        """uint8 frames [N, H, W, 3] -> every output of the signature as a numpy array with N rows."""
        import numpy as np

        parts: dict[str, list] = {}
        for start in range(0, len(frames), self.batch):
            answer = self._signature(frames=self._tf.constant(frames[start : start + self.batch]))
            for key, value in answer.items():
                parts.setdefault(key, []).append(value.numpy())
        return {key: np.concatenate(value) for key, value in parts.items()}
