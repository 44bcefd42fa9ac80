"""The view model's contract, shared by the stages that ask it (view on colour Doppler frames, valve on B-mode
frames) and the in-process path: its serving signature's names, and one frame's outputs -> the named probe view."""

from dataclasses import dataclass

import numpy as np

from rhd.labels import VIEW_CLASSES
from rhd.v1 import rhd_pb2 as pb

# A clip shows one view: the view model reads this many of a video's frames, evenly spread (all of a shorter video),
# and every frame of the video takes the view they vote for (rhd.assemble.ops.video_views).
VIEW_FRAMES = 8

# The view model's serving signature (`serving_default`), as exported by rhd.training.view.
INPUT_NAME = "frames"  # uint8 [batch, 240, 320, 3], BGR as OpenCV decodes
PROBABILITIES = "probabilities"  # float32 [batch, len(VIEW_CLASSES)], in VIEW_CLASSES order
VIEW_INDEX = "view_index"  # int64 [batch], argmax of PROBABILITIES


@dataclass(frozen=True)
class ViewResult:
    label: str
    probabilities: dict[str, float]
    model_version: int

    def message(self, model_name: str) -> pb.ViewPrediction:
        """As a frame's record carries it."""
        return pb.ViewPrediction(
            label=self.label, probabilities=self.probabilities, model_name=model_name, model_version=self.model_version
        )


def view_sampled(frame_index: int, video_frame_count: int) -> bool:
    """Whether the view model reads this frame of its video: VIEW_FRAMES of them, evenly spread over the clip."""
    if video_frame_count <= VIEW_FRAMES:
        return True
    step = (video_frame_count - 1) / (VIEW_FRAMES - 1)
    return any(round(k * step) == frame_index for k in range(VIEW_FRAMES))


def prediction_from_outputs(outputs_row: dict[str, np.ndarray], model_version: int) -> ViewResult:
    """The row of one frame (each output without its batch axis) -> its most probable view."""
    if PROBABILITIES not in outputs_row:
        raise ValueError(f"model outputs lack {PROBABILITIES!r} (got {sorted(outputs_row)})")
    probabilities = np.asarray(outputs_row[PROBABILITIES], np.float64).reshape(-1)
    if probabilities.shape != (len(VIEW_CLASSES),):
        raise ValueError(f"expected {len(VIEW_CLASSES)} view probabilities, got shape {probabilities.shape}")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"view probabilities are not finite: {probabilities.tolist()}")
    best = int(np.argmax(probabilities))
    named = {v: float(p) for v, p in zip(VIEW_CLASSES, probabilities, strict=True)}
    return ViewResult(VIEW_CLASSES[best], named, model_version)
