"""The models/<name>/<version>/ tree (TensorFlow Serving's layout), shared by every model we ship."""

import json
from pathlib import Path
from typing import Any


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
