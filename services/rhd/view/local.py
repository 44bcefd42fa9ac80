"""The view SavedModel called in-process (training, the in-process path); services use the model server."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rhd.imaging.sector import images_only
from rhd.modelstore import LocalModel
from rhd.view.ops import prediction_from_outputs


class LocalViewModel:
    def __init__(self, models_dir: Path, name: str = "view", version: int = 0) -> None:
        self._model = LocalModel(models_dir, name, version)
        self.version = self._model.version

    def __call__(self, frames: np.ndarray, fans: Sequence[np.ndarray | None] | None = None) -> Sequence[str]:
        arrays = self._model.outputs(images_only(frames, fans))
        rows = len(next(iter(arrays.values()))) if arrays else 0
        return [
            prediction_from_outputs({k: v[row] for k, v in arrays.items()}, self.version).label for row in range(rows)
        ]
