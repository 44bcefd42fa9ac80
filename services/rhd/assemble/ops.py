"""Study assembly: account for every frame of every video, then aggregate frame features per study.

`Assembler` is a plain state machine (records in, finished studies out) so it is tested without Kafka;
`study_features` is the aggregation that training calls too.
"""

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rhd.imaging.ecg import cycle_message
from rhd.v1 import rhd_pb2 as pb

STUDY_FEATURE_SET = "study-v3"  # v3: per-video views, the share of the cycle with a jet, the jet in a second view
# Aliasing speckle makes mosaic regions of up to ~9 mm in studies without any jet (measured on generated
# studies), so a frame shows a jet from 10 mm: WHF 2012's length for pathological AR, half of MR's.
JET_MIN_MM = 10.0
LONG_JET_MM = 20.0  # WHF 2012's length for pathological MR
JET_MIN_FRAMES = 2  # a video shows a jet when at least this many of its frames do: one frame may be noise
# The frame features (by the names each FeatureVector carries) that the study's are made of.
FRAME_FEATURES_USED = (
    "jet_length_mm",
    "mosaic_area_mm2",
    "velocity_peak_cm_s",
    "velocity_mean_cm_s",
    "flow_area_mm2",
    "grey_mean",
    "glcm_contrast_d1",
    "glcm_homogeneity_d1",
)

# How a cardiologist reads a study's colour Doppler, as numbers (docs/study-features.md):
STUDY_FEATURE_NAMES: tuple[str, ...] = (
    "jet_length_mm_max",  # the largest jet, any view
    "plax_jet_length_mm_max",  # the largest jet in PLAX, where rheumatic MR is judged
    "jet_length_mm_p75",  # how large the jets are across the study's colour frames
    "second_view_jet_length_mm",  # the largest jet in a second view (WHF: seen in 2 views)
    "views_with_jet",  # distinct views with a video showing a jet (>= 10 mm in >= 2 frames)
    "views_with_long_jet",  # ... with a jet >= 20 mm
    "jet_cycle_fraction_max",  # per colour video, the share of its frames with a jet: for how much of the cycle
    "plax_jet_cycle_fraction_max",  # ... in PLAX videos
    "mosaic_area_mm2_max",
    "mosaic_area_mm2_mean",
    "aliased_frame_fraction",  # share of colour frames with aliasing/variance mosaic
    "velocity_peak_cm_s_max",
    "velocity_mean_cm_s_mean",
    "flow_area_mm2_mean",
    "grey_mean_mean",
    "glcm_contrast_d1_mean",
    "glcm_homogeneity_d1_mean",
)


@dataclass(frozen=True)
class AnalysedFrame:
    video_id: str
    view: str  # the view model's label for this frame
    features: Mapping[str, float]  # the frame's features by name


def _video_view(views: np.ndarray) -> str:
    """A video's view: the label most of its frames got (ties: the first in sort order)."""
    labels, counts = np.unique(views, return_counts=True)
    return str(labels[int(np.argmax(counts))])


def study_features(frames: Sequence[AnalysedFrame]) -> list[float]:
    """Aggregate a study's analysed frames in STUDY_FEATURE_NAMES order; all zero without any."""
    if not frames:
        return [0.0] * len(STUDY_FEATURE_NAMES)
    missing = sorted({name for f in frames for name in FRAME_FEATURES_USED if name not in f.features})
    if missing:
        raise ValueError(f"frame features lack {', '.join(missing)}")
    column = {name: np.array([f.features[name] for f in frames], np.float64) for name in FRAME_FEATURES_USED}
    jets = column["jet_length_mm"]
    videos = np.array([f.video_id for f in frames])
    frame_views = np.array([f.view for f in frames])
    # Per video: its view, the share of its frames with a jet, and whether it shows a jet at all / a long one.
    per_video = []
    for video in np.unique(videos):
        mine = jets[videos == video]
        per_video.append(
            (
                _video_view(frame_views[videos == video]),
                float((mine >= JET_MIN_MM).mean()),
                int((mine >= JET_MIN_MM).sum()) >= JET_MIN_FRAMES,
                int((mine >= LONG_JET_MM).sum()) >= JET_MIN_FRAMES,
            )
        )
    plax = jets[frame_views == "plax"]
    per_view_max = sorted((float(jets[frame_views == v].max()) for v in np.unique(frame_views)), reverse=True)
    values = {
        "jet_length_mm_max": float(jets.max()),
        "plax_jet_length_mm_max": float(plax.max()) if plax.size else 0.0,
        "jet_length_mm_p75": float(np.percentile(jets, 75)),
        "second_view_jet_length_mm": per_view_max[1] if len(per_view_max) > 1 else 0.0,
        "views_with_jet": float(len({view for view, _, jet, _ in per_video if jet})),
        "views_with_long_jet": float(len({view for view, _, _, long in per_video if long})),
        "jet_cycle_fraction_max": max(share for _, share, _, _ in per_video),
        "plax_jet_cycle_fraction_max": max((share for view, share, _, _ in per_video if view == "plax"), default=0.0),
        "mosaic_area_mm2_max": float(column["mosaic_area_mm2"].max()),
        "mosaic_area_mm2_mean": float(column["mosaic_area_mm2"].mean()),
        "aliased_frame_fraction": float((column["mosaic_area_mm2"] > 0).mean()),
        "velocity_peak_cm_s_max": float(column["velocity_peak_cm_s"].max()),
        "velocity_mean_cm_s_mean": float(column["velocity_mean_cm_s"].mean()),
        "flow_area_mm2_mean": float(column["flow_area_mm2"].mean()),
        "grey_mean_mean": float(column["grey_mean"].mean()),
        "glcm_contrast_d1_mean": float(column["glcm_contrast_d1"].mean()),
        "glcm_homogeneity_d1_mean": float(column["glcm_homogeneity_d1"].mean()),
    }
    return [values[name] for name in STUDY_FEATURE_NAMES]


@dataclass
class _Study:
    first_seen: float
    partition: int = -1  # where its records are read (they share the study_id key, so one partition)
    first_offset: int = -1  # its oldest record there: the state to rebuild after a restart starts here
    manifest: pb.StudyManifest | None = None
    results: dict[tuple[str, int], pb.FrameResult] = field(default_factory=dict)


class Assembler:
    """Deduplicates terminal records by (video, frame) and closes a study exactly once.

    Its state can be rebuilt from the input topic: `watermark` says how far a partition may be committed
    (not past the first record of a study still open), and `mark_closed` takes the studies already
    emitted, so records replayed after a restart rebuild the open studies and are dropped for the closed ones.
    """

    def __init__(self, deadline_s: float, remember_closed: int = 100_000) -> None:
        self.deadline_s = deadline_s
        self.open: dict[str, _Study] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()
        self.remember_closed = remember_closed
        self.duplicates = 0

    def add(
        self, study_id: str, done: pb.FrameDone, at: float, partition: int = -1, offset: int = -1
    ) -> pb.StudyFeatures | None:
        if study_id in self.closed:
            self.duplicates += 1
            return None
        study = self.open.setdefault(study_id, _Study(first_seen=at, partition=partition, first_offset=offset))
        if done.HasField("manifest"):
            if study.manifest is not None:
                self.duplicates += 1
            else:
                study.manifest = done.manifest
        else:
            key = (done.result.key.video_id, done.result.key.frame_index)
            if key in study.results:
                self.duplicates += 1
            else:
                study.results[key] = done.result
        if study.manifest is not None and not _missing(study):
            return self._close(study_id, study, deadline_passed=False)
        return None

    def watermark(self, partition: int, next_offset: int) -> int:
        """The offset a partition may be committed at: next_offset, or the first record of a study still open."""
        held = [s.first_offset for s in self.open.values() if s.partition == partition and s.first_offset >= 0]
        return min([next_offset, *held])

    def mark_closed(self, study_ids: list[str]) -> None:
        """Studies emitted before (by this replica before a restart, or by another one)."""
        for study_id in study_ids:
            self.open.pop(study_id, None)
            self._remember(study_id)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the open studies of partitions now read elsewhere (their new reader rebuilds them)."""
        gone = [sid for sid, s in self.open.items() if s.partition in partitions]
        for study_id in gone:
            del self.open[study_id]
        return len(gone)

    def expire(self, at: float) -> list[pb.StudyFeatures]:
        late = [sid for sid, s in self.open.items() if at - s.first_seen >= self.deadline_s]
        return [self._close(sid, self.open[sid], deadline_passed=True) for sid in late]

    def _close(self, study_id: str, study: _Study, deadline_passed: bool) -> pb.StudyFeatures:
        del self.open[study_id]
        self._remember(study_id)
        return assemble_study(study_id, study.manifest, list(study.results.values()), deadline_passed)

    def _remember(self, study_id: str) -> None:
        self.closed[study_id] = None
        self.closed.move_to_end(study_id)
        while len(self.closed) > self.remember_closed:
            self.closed.popitem(last=False)


def _expected(manifest: pb.StudyManifest) -> set[tuple[str, int]]:
    return {
        (v.video_id, i) for v in manifest.videos if v.status == pb.VIDEO_STATUS_DECODED for i in range(v.frame_count)
    }


def _missing(study: _Study) -> set[tuple[str, int]]:
    assert study.manifest is not None
    return _expected(study.manifest) - study.results.keys()


def assemble_study(
    study_id: str, manifest: pb.StudyManifest | None, results: list[pb.FrameResult], deadline_passed: bool
) -> pb.StudyFeatures:
    expected = _expected(manifest) if manifest else set()
    results = [r for r in results if (r.key.video_id, r.key.frame_index) in expected]
    status = [r.status for r in results]
    counts = pb.FrameCounts(
        expected=len(expected),
        analysed=status.count(pb.FRAME_STATUS_ANALYSED),
        skipped=status.count(pb.FRAME_STATUS_SKIPPED),
        failed=status.count(pb.FRAME_STATUS_FAILED),
        missing=len(expected) - len(results),
    )
    analysed = [
        AnalysedFrame(r.key.video_id, r.view.label, dict(zip(r.features.names, r.features.values, strict=True)))
        for r in results
        if r.status == pb.FRAME_STATUS_ANALYSED
    ]
    failed_videos = [v for v in manifest.videos if v.status == pb.VIDEO_STATUS_FAILED] if manifest else []
    reasons = [v.error for v in failed_videos]
    if manifest is None:
        reasons.append("deadline passed before split's manifest arrived")
    elif counts.missing:
        reasons.append(f"deadline passed with {counts.missing} of {counts.expected} frames unaccounted")
    if counts.failed:
        first = next(r for r in results if r.status == pb.FRAME_STATUS_FAILED)
        reasons.append(f"{counts.failed} frames failed (first: {first.stage}: {first.reason})")
    if manifest is not None and len(failed_videos) == len(manifest.videos):
        completeness = pb.COMPLETENESS_FAILED
    elif not analysed and not deadline_passed and manifest is not None:
        completeness = pb.COMPLETENESS_FAILED
        reasons.append("no colour Doppler frame could be analysed")
    elif reasons or not analysed:
        completeness = pb.COMPLETENESS_INCOMPLETE
    else:
        completeness = pb.COMPLETENESS_COMPLETE
    features = pb.FeatureVector(
        feature_set=STUDY_FEATURE_SET, names=STUDY_FEATURE_NAMES, values=study_features(analysed)
    )
    study = pb.StudyFeatures(
        study_id=study_id,
        completeness=completeness,
        reason="; ".join(reasons),
        frames=counts,
        features=features,
        videos_expected=len(manifest.videos) if manifest else 0,
        videos_failed=len(failed_videos),
        uploaded_at=manifest.uploaded_at if manifest else None,
    )
    if manifest is not None:
        study.cycles.extend(cardiac_cycles(manifest, results))
    study.assembled_at.GetCurrentTime()
    return study


def cardiac_cycles(manifest: pb.StudyManifest, results: list[pb.FrameResult]) -> list[pb.CardiacCycle]:
    """Per decoded video, every frame's cardiac phase, fitted over the ECG readings its frames' records carry."""
    readings: dict[str, list[pb.EcgReading | None]] = {
        v.video_id: [None] * v.frame_count for v in manifest.videos if v.status == pb.VIDEO_STATUS_DECODED
    }
    for r in results:
        if r.HasField("ecg") and 0 <= r.key.frame_index < len(readings.get(r.key.video_id, [])):
            readings[r.key.video_id][r.key.frame_index] = r.ecg
    fps = {v.video_id: v.fps for v in manifest.videos}
    return [cycle_message(video_id, frames, fps[video_id]) for video_id, frames in readings.items()]


def study_of(done: pb.FrameDone) -> str:
    """The study a frames.done.v1 record belongs to (a manifest, or a frame's terminal result)."""
    return done.manifest.study_id if done.HasField("manifest") else done.result.key.study_id
