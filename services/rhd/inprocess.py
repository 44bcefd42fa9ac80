"""The in-process path: a study folder through the very stage functions the services call, no Kafka.

Training computes its features here, and the parity test compares it with the streaming line.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rhd.assemble.ops import STUDY_FEATURE_NAMES, AnalysedFrame, study_features
from rhd.features.ops import FEATURE_NAMES, FeatureError, frame_features
from rhd.imaging.codec import decode_png, encode_png
from rhd.inspect.ops import inspect
from rhd.segment.ops import segment
from rhd.split.ops import VideoDecodeError, decode_video

# frames (N x H x W x 3 BGR uint8) -> view label per frame
ViewPredictor = Callable[[np.ndarray], Sequence[str]]


@dataclass(frozen=True)
class StudyAnalysis:
    study_id: str
    names: tuple[str, ...]
    values: list[float]
    analysed: int
    skipped: int
    failed_videos: int
    failed_frames: int  # Doppler frames whose features could not be measured (e.g. no colour bar)


def analyse_study(study_dir: Path, predict_views: ViewPredictor) -> StudyAnalysis:
    meta = json.loads((Path(study_dir) / "study.json").read_text())
    spacing, nyquist = float(meta["pixel_spacing_mm"]), float(meta["nyquist_cm_s"])
    doppler_frames: list[np.ndarray] = []
    doppler_videos: list[str] = []
    skipped = failed_videos = failed_frames = 0
    for video in meta["videos"]:
        try:
            decoded = decode_video((Path(study_dir) / video["filename"]).read_bytes())
        except VideoDecodeError:
            failed_videos += 1
            continue
        for image in decoded.frames:
            # The services may pass frames as PNG; the round trip is lossless, so it is skipped here.
            if inspect(image).doppler:
                doppler_frames.append(image)
                doppler_videos.append(video["video_id"])
            else:
                skipped += 1
    analysed: list[AnalysedFrame] = []
    if doppler_frames:
        views = predict_views(np.stack(doppler_frames))
        for image, video_id, view in zip(doppler_frames, doppler_videos, views, strict=True):
            labels = segment(image).labels
            # Masks travel as PNG between services; decode(encode) keeps both paths identical.
            labels = decode_png(encode_png(labels))
            try:
                values = frame_features(image, labels, spacing, nyquist)
                analysed.append(AnalysedFrame(video_id, view, dict(zip(FEATURE_NAMES, values, strict=True))))
            except FeatureError:
                failed_frames += 1
    return StudyAnalysis(
        meta["study_id"],
        STUDY_FEATURE_NAMES,
        study_features(analysed),
        len(analysed),
        skipped,
        failed_videos,
        failed_frames,
    )
