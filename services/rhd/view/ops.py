"""View stage's pure functions: model outputs -> a named view with its probabilities."""

from dataclasses import dataclass

import numpy as np

from rhd.labels import VIEWS

INPUT_NAME = "frames"          # uint8 [batch, 240, 320, 3], BGR as OpenCV decodes
PROBABILITIES = "probabilities"  # float32 [batch, len(VIEWS)]


@dataclass(frozen=True)
class ViewResult:
    label: str
    probabilities: dict[str, float]
    model_version: int


def prediction_from_outputs(outputs_row: dict[str, np.ndarray], model_version: int) -> ViewResult:
    probabilities = np.asarray(outputs_row[PROBABILITIES], np.float64).reshape(-1)
    if probabilities.shape != (len(VIEWS),):
        raise ValueError(f"expected {len(VIEWS)} view probabilities, got shape {probabilities.shape}")
    best = int(np.argmax(probabilities))
    return ViewResult(VIEWS[best], {v: float(p) for v, p in zip(VIEWS, probabilities, strict=True)}, model_version)
