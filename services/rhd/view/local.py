"""The view SavedModel called in-process (training, the in-process path); services use the model server."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rhd.modelstore import version_dir
from rhd.view.ops import prediction_from_outputs

BATCH = 256


class LocalViewModel:
    def __init__(self, models_dir: Path, name: str = "view", version: int = 0) -> None:
        import tensorflow as tf  # heavy: only where the model runs in-process

        path = version_dir(models_dir, name, version)
        self.version = int(path.name)
        self._signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        self._tf = tf

    def __call__(self, frames: np.ndarray) -> Sequence[str]:
        labels: list[str] = []
        for start in range(0, len(frames), BATCH):
            outputs = self._signature(frames=self._tf.constant(frames[start : start + BATCH]))
            arrays = {k: v.numpy() for k, v in outputs.items()}
            for row in range(len(arrays["probabilities"])):
                labels.append(prediction_from_outputs({k: v[row] for k, v in arrays.items()}, self.version).label)
        return labels
