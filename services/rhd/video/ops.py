"""What the video network reads of a video and what a study takes from its answers; plain functions."""

from collections.abc import Sequence

import numpy as np

from rhd.video.model import CLIP_FRAMES, OUTPUTS

# The study features the video network's answers give, pooled over a study's videos (the most certain video).
STUDY_VIDEO_FEATURES = ("video_jet_p_max", "video_morphology_p_max")


def clip_indices(n_frames: int, length: int = CLIP_FRAMES) -> np.ndarray:
    """`length` frame indices spread evenly over the whole video (a cardiac cycle or more), repeating frames of a
    shorter video; a video with no frame has no clip."""
    if n_frames < 1:
        raise ValueError("a video with no frame has no clip")
    return np.round(np.linspace(0, n_frames - 1, length)).astype(int)


def clip_of(frames: Sequence[np.ndarray], length: int = CLIP_FRAMES) -> np.ndarray:
    """uint8 [length, H, W, 3]: the video's clip."""
    return np.stack([frames[i] for i in clip_indices(len(frames), length)])


def study_video_features(answers: Sequence[tuple[str, np.ndarray]]) -> list[float]:
    """A study's STUDY_VIDEO_FEATURES from its videos' (mode, P(finding)) answers: the largest P(jet) of its colour
    Doppler videos and the largest P(morphology) of its B-mode ones (0 where it has none)."""
    jet = [float(p[OUTPUTS.index("jet")]) for mode, p in answers if mode == "colour"]
    morphology = [float(p[OUTPUTS.index("morphology")]) for mode, p in answers if mode == "bmode"]
    return [max(jet, default=0.0), max(morphology, default=0.0)]
