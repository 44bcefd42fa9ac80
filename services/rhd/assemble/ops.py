"""Study assembly: account for every frame of every video, then aggregate frame features per study.

`Assembler` is a plain state machine (records in, finished studies out) so it is tested without Kafka;
`study_features` is the aggregation that training calls too.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rhd.features.ops import FEATURE_NAMES
from rhd.runtime.records import now
from rhd.v1 import rhd_pb2 as pb

STUDY_FEATURE_SET = "study-v2"  # v2: no frame count (it measures the recording, not the heart)
JET_MIN_MM = 3.0  # shorter mosaics are speckle, not a regurgitant jet
_IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}

STUDY_FEATURE_NAMES: tuple[str, ...] = (
    "jet_length_mm_max", "jet_length_mm_p75", "plax_jet_length_mm_max",
    "mosaic_area_mm2_max", "mosaic_area_mm2_mean",
    "aliased_frame_fraction", "views_with_jet",
    "velocity_peak_cm_s_max", "velocity_mean_cm_s_mean", "flow_area_mm2_mean",
    "grey_mean_mean", "glcm_contrast_d1_mean", "glcm_homogeneity_d1_mean",
)


@dataclass(frozen=True)
class AnalysedFrame:
    view: str
    values: Sequence[float]  # in features.ops.FEATURE_NAMES order


def study_features(frames: Sequence[AnalysedFrame]) -> list[float]:
    """Aggregate as a reader would: the largest jet, the one seen in PLAX, how many views show one,
    for how much of the cycle (share of aliased frames), the peak velocity."""
    if not frames:
        return [0.0] * len(STUDY_FEATURE_NAMES)
    matrix = np.array([f.values for f in frames], np.float64)
    column = {name: matrix[:, i] for name, i in _IDX.items()}
    jets = column["jet_length_mm"]
    views = np.array([f.view for f in frames])
    plax = jets[views == "plax"]
    values = {
        "jet_length_mm_max": float(jets.max()),
        "jet_length_mm_p75": float(np.percentile(jets, 75)),
        "plax_jet_length_mm_max": float(plax.max()) if plax.size else 0.0,
        "mosaic_area_mm2_max": float(column["mosaic_area_mm2"].max()),
        "mosaic_area_mm2_mean": float(column["mosaic_area_mm2"].mean()),
        "aliased_frame_fraction": float((column["mosaic_area_mm2"] > 0).mean()),
        "views_with_jet": float(len(set(views[jets >= JET_MIN_MM]))),
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
    manifest: pb.StudyManifest | None = None
    results: dict[tuple[str, int], pb.FrameResult] = field(default_factory=dict)


class Assembler:
    """Deduplicates terminal records by (video, frame) and closes a study exactly once."""

    def __init__(self, deadline_s: float, remember_closed: int = 100_000) -> None:
        self.deadline_s = deadline_s
        self.open: dict[str, _Study] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()
        self.remember_closed = remember_closed
        self.duplicates = 0

    def add(self, study_id: str, done: pb.FrameDone, at: float) -> pb.StudyFeatures | None:
        if study_id in self.closed:
            self.duplicates += 1
            return None
        study = self.open.setdefault(study_id, _Study(first_seen=at))
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

    def expire(self, at: float) -> list[pb.StudyFeatures]:
        late = [sid for sid, s in self.open.items() if at - s.first_seen >= self.deadline_s]
        return [self._close(sid, self.open[sid], deadline_passed=True) for sid in late]

    def _close(self, study_id: str, study: _Study, deadline_passed: bool) -> pb.StudyFeatures:
        del self.open[study_id]
        self.closed[study_id] = None
        while len(self.closed) > self.remember_closed:
            self.closed.popitem(last=False)
        return assemble_study(study_id, study.manifest, list(study.results.values()), deadline_passed)


def _expected(manifest: pb.StudyManifest) -> set[tuple[str, int]]:
    return {(v.video_id, i) for v in manifest.videos if v.status == pb.VIDEO_STATUS_DECODED
            for i in range(v.frame_count)}


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
    analysed = [AnalysedFrame(r.view.label, list(r.features.values))
                for r in results if r.status == pb.FRAME_STATUS_ANALYSED]
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
    features = pb.FeatureVector(feature_set=STUDY_FEATURE_SET, names=STUDY_FEATURE_NAMES,
                                values=study_features(analysed))
    return pb.StudyFeatures(
        study_id=study_id, completeness=completeness, reason="; ".join(reasons), frames=counts,
        features=features, videos_expected=len(manifest.videos) if manifest else 0,
        videos_failed=len(failed_videos),
        uploaded_at=manifest.uploaded_at if manifest else None, assembled_at=now(),
    )
