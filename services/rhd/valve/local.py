"""The valve SavedModel called in-process (training, the in-process path); the valve service uses the model server."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rhd.imaging.sector import images_only
from rhd.modelstore import LocalModel
from rhd.valve.ops import PROBABILITIES


class LocalValveModel:
    def __init__(self, models_dir: Path, name: str = "valve", version: int = 0) -> None:
        self._model = LocalModel(models_dir, name, version, batch=64)
        self.version = self._model.version

    def __call__(self, frames: np.ndarray, fans: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """uint8 frames [N, 240, 320, 3] -> label probabilities [N, 108, 136, 4]."""
        return self._model.outputs(images_only(frames, fans))[PROBABILITIES]
