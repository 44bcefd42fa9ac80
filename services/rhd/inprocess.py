"""The in-process path: a study folder through the very stage functions the services call, no Kafka.

Training computes its features here, and the parity test compares it with the streaming line: each frame ends in
the same terminal record as in the line, and the study is put together by assemble's own function.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from rhd.assemble.ops import assemble_study
from rhd.deid import ops as deid
from rhd.deid.policy import load_policy
from rhd.features.ops import FEATURE_NAMES, FEATURE_SET, FeatureError, frame_features
from rhd.imaging.burned_in import clean_frames
from rhd.imaging.ecg import reading_message
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.imaging.video import VideoDecodeError, decode_video
from rhd.inspect.ops import ANATOMICAL, NOT_ECHO, SPECTRAL, inspect
from rhd.runtime.codec import decode_png, encode_png
from rhd.runtime.settings import Settings
from rhd.runtime.views import view_sampled
from rhd.segment.ops import segment
from rhd.spectral import ops as spectral
from rhd.split.ops import acquisition
from rhd.v1 import rhd_pb2 as pb
from rhd.valve import ops as valve

# frames (N x H x W x 3 BGR uint8) and each one's video's sector (bool H x W) -> view label per frame
ViewPredictor = Callable[[np.ndarray, Sequence[np.ndarray]], Sequence[str]]
# frames and their videos' sectors -> the valve model's label probabilities per frame
ValveSegmenter = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class StudyAnalysis:
    study_id: str
    names: tuple[str, ...]
    values: list[float]
    analysed: int
    skipped: int
    failed_videos: int
    failed_frames: int  # frames whose features could not be measured (e.g. no colour bar)
    features: pb.StudyFeatures  # as assemble emits it: counts, cardiac cycles, feature vector


def _result(
    key: pb.FrameKey, status: "pb.FrameStatus", stage: str, ecg: pb.EcgReading | None, **fields
) -> pb.FrameResult:
    result = pb.FrameResult(key=key, status=status, stage=stage, **fields)
    if ecg is not None:
        result.ecg.CopyFrom(ecg)
    return result


# In process nothing leaves the machine, so pseudonyms need no secret; the fields the analysis reads (age band, sex,
# acquisition) do not depend on the key.
IN_PROCESS_KEY = bytes(32)


def _sampled_views(
    predict_views: ViewPredictor, frames: Sequence[tuple[pb.FrameKey, np.ndarray, np.ndarray, pb.EcgReading | None]]
) -> list[str]:
    """The view model's label for the frames it reads (`view_sampled`, as the stages ask it), "" for the others."""
    asked = [i for i, (key, _, _, _) in enumerate(frames) if view_sampled(key.frame_index, key.video_frame_count)]
    labels = [""] * len(frames)
    if asked:
        answers = predict_views(np.stack([frames[i][1] for i in asked]), [frames[i][2] for i in asked])
        for i, label in zip(asked, answers, strict=True):
            labels[i] = label
    return labels


def analysis_fields(meta: dict) -> dict[str, str]:
    """The sidecar's fields as deid's line profile lets them reach split."""
    policy = load_policy()
    profile = policy.profile(Settings().deid_profile)
    fields = {k: str(v) for k, v in meta.items() if k != "videos"}
    try:
        ctx = deid.study_context(IN_PROCESS_KEY, profile, fields.get("hospital_id", ""), fields)
    except deid.DeidError:
        return {}
    return deid.deidentify_fields(fields, policy, ctx)


def analyse_study(
    study_dir: Path, predict_views: ViewPredictor, segment_valves: ValveSegmenter, clean_pixels: bool = True
) -> StudyAnalysis:
    """Features of one study folder as the line sees it: through deid's fields and clean pixels (clean_pixels=False
    reads the frames with their burned-in text, to show the analysis does not depend on the cleaning)."""
    meta = json.loads((Path(study_dir) / "study.json").read_text())
    scan = acquisition(analysis_fields(meta))
    spacing, nyquist = scan.pixel_spacing_mm, scan.nyquist_cm_s
    manifest = pb.StudyManifest(study_id=meta["study_id"], metadata=scan.clinical)
    results: list[pb.FrameResult] = []
    # Each frame with its video's sector (found once per video, as split does).
    doppler: list[tuple[pb.FrameKey, np.ndarray, np.ndarray, pb.EcgReading | None]] = []
    bmode: list[tuple[pb.FrameKey, np.ndarray, np.ndarray, pb.EcgReading | None]] = []
    for video in meta["videos"]:
        try:
            decoded = decode_video((Path(study_dir) / video["filename"]).read_bytes())
        except VideoDecodeError as exc:
            manifest.videos.add(video_id=video["video_id"], status=pb.VIDEO_STATUS_FAILED, error=str(exc))
            continue
        manifest.videos.add(
            video_id=video["video_id"], status=pb.VIDEO_STATUS_DECODED, frame_count=len(decoded.frames), fps=decoded.fps
        )
        regions = [json_format.ParseDict(r, pb.UltrasoundRegion()) for r in video.get("regions", [])]
        strip = spectral.spectral_region(regions)
        images = clean_frames(decoded.frames, regions) if clean_pixels else decoded.frames
        fan = sector_mask(video_sector(images), images[0].shape) if len(images) else None
        for index, image in enumerate(images):
            key = pb.FrameKey(
                study_id=meta["study_id"],
                video_id=video["video_id"],
                frame_index=index,
                video_frame_count=len(decoded.frames),
            )
            # The services may pass frames as PNG; the round trip is lossless, so it is skipped here.
            seen = inspect(image, spectral=strip is not None, fan=fan)
            ecg = reading_message(seen.ecg) if seen.ecg is not None else None
            if seen.kind == SPECTRAL and strip is not None:
                try:
                    values = spectral.spectral_features(image, strip, ecg)
                except spectral.SpectralError as exc:
                    results.append(_result(key, pb.FRAME_STATUS_FAILED, "spectral", ecg, reason=str(exc)))
                    continue
                vector = pb.FeatureVector(feature_set=spectral.FEATURE_SET, names=spectral.FEATURE_NAMES, values=values)
                results.append(_result(key, pb.FRAME_STATUS_ANALYSED, "spectral", ecg, features=vector))
            elif seen.doppler:
                doppler.append((key, image, fan, ecg))
            elif seen.kind == ANATOMICAL:
                bmode.append((key, image, fan, ecg))
            else:
                status = pb.FRAME_STATUS_FAILED if seen.kind == NOT_ECHO else pb.FRAME_STATUS_SKIPPED
                results.append(_result(key, status, "inspect", ecg, reason=seen.reason))
    if doppler:
        views = _sampled_views(predict_views, doppler)
        for (key, image, fan, ecg), view in zip(doppler, views, strict=True):
            # Masks travel as PNG between services; decode(encode) keeps both paths identical.
            labels = decode_png(encode_png(segment(image, fan).labels))
            prediction = pb.ViewPrediction(label=view)
            try:
                values = frame_features(image, labels, spacing, nyquist, fan)
            except FeatureError as exc:
                results.append(_result(key, pb.FRAME_STATUS_FAILED, "features", ecg, reason=str(exc), view=prediction))
                continue
            vector = pb.FeatureVector(feature_set=FEATURE_SET, names=FEATURE_NAMES, values=values)
            results.append(_result(key, pb.FRAME_STATUS_ANALYSED, "features", ecg, view=prediction, features=vector))
    if bmode:
        frames, fans = np.stack([image for _, image, _, _ in bmode]), [fan for _, _, fan, _ in bmode]
        views, probabilities = _sampled_views(predict_views, bmode), segment_valves(frames, fans)
        for (key, image, fan, ecg), view, answer in zip(bmode, views, probabilities, strict=True):
            prediction = pb.ViewPrediction(label=view)
            try:
                values = valve.valve_features(image, answer, spacing, image_only(image, fan))
            except valve.ValveError as exc:
                results.append(_result(key, pb.FRAME_STATUS_FAILED, "valve", ecg, reason=str(exc), view=prediction))
                continue
            vector = pb.FeatureVector(feature_set=valve.FEATURE_SET, names=valve.FEATURE_NAMES, values=values)
            results.append(_result(key, pb.FRAME_STATUS_ANALYSED, "valve", ecg, view=prediction, features=vector))
    study = assemble_study(meta["study_id"], manifest, results, deadline_passed=False)
    return StudyAnalysis(
        meta["study_id"],
        tuple(study.features.names),
        list(study.features.values),
        study.frames.analysed,
        study.frames.skipped,
        study.videos_failed,
        study.frames.failed,
        study,
    )
