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

STUDY_FEATURE_SET = "study-v5"  # v4: jets by cardiac phase, the spectral traces; v5: valve morphology (B-mode)
# Aliasing speckle makes mosaic regions of up to ~9 mm in studies without any jet (measured on generated
# studies), so a frame shows a jet from 10 mm: WHF 2012's length for pathological AR, half of MR's.
JET_MIN_MM = 10.0
LONG_JET_MM = 20.0  # WHF 2012's length for pathological MR
JET_MIN_FRAMES = 2  # a video shows a jet when at least this many of its frames do: one frame may be noise
SYSTOLE_END = 0.42  # as rhd.imaging.ecg: the phase at which systole ends
# A continuous-wave trace through the aortic valve shows the systolic ejection away from the probe: slower than this,
# over at least this share of the screen. Through the mitral valve, flow away from the probe in systole is mitral
# regurgitation, faster (or none at all).
EJECTION_MAX_CM_S = 140.0
EJECTION_MIN_FRACTION = 0.15
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
# ... and of a spectral trace (the spectral stage's names).
TRACE_FEATURES_USED = (
    "toward_peak_cm_s",
    "away_peak_cm_s",
    "toward_mean_gradient_mmhg",
    "toward_fraction",
    "away_fraction",
    "systolic_away_cover",
    "diastolic_toward_cover",
)

# How a cardiologist reads a study, as numbers (docs/study-features.md):
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
    # By cardiac phase (videos whose ECG gave every frame its phase): MR shows in systole, AR in diastole.
    "systolic_jet_length_mm_max",  # the longest jet in a systolic frame: MR's length
    "second_view_systolic_jet_mm",  # ... in a second view
    "views_with_systolic_jet",  # distinct views with a video showing a jet in >= 2 systolic frames
    "systolic_jet_cover_max",  # per video, the share of its systolic frames with a jet: pan-systolic near 1
    "diastolic_jet_length_mm_max",  # AR's length
    "views_with_diastolic_jet",
    "diastolic_jet_cover_max",  # pan-diastolic near 1
    "phase_known_fraction",  # share of the colour videos whose cardiac phase is known
    "colour_videos_read",  # colour videos analysed whose view is a standard one (not off-axis or a poor window)
    # Continuous-wave spectral Doppler (the trace through each valve)
    "mr_peak_velocity_m_s",  # mitral trace: fastest flow away from the probe (regurgitation)
    "mr_systolic_cover",  # ... for what share of systole
    "ms_mean_gradient_mmhg",  # mitral trace: mean gradient of the diastolic inflow (stenosis >= 4 mmHg)
    "ar_peak_velocity_m_s",  # aortic trace: fastest flow towards the probe in diastole (regurgitation)
    "ar_diastolic_cover",
    "mitral_trace_read",  # 1 when a mitral trace was read
    "aortic_trace_read",
    # Valve morphology (the valve stage on B-mode videos in a standard view; docs/study-features.md)
    "amvl_thickness_mm",  # the mitral leaflets' thickness in diastole (PLAX, A4C, A5C)
    "chord_thickness_mm",
    "mitral_opening",  # how far the mitral leaflets open in diastole (A4C, A5C, PSAX): restricted when small
    "mitral_coaptation_mm",  # where the closed leaflets meet in systole: > 0 beyond the annulus (tip motion)
    "aortic_thickness_mm",  # the aortic cusps' thickness (PLAX, A5C)
    "aortic_opening",  # how far the cusps open in systole: restricted when small
    "aortic_closure_bow_mm",  # how far the closed cusps bow out of their line in diastole (prolapse)
    "aortic_gap_mm",  # the gap between the closed cusps' tips in diastole (coaptation defect)
    "mitral_valve_read",  # B-mode videos in which the mitral valve was measured
    "aortic_valve_read",  # ... the aortic valve
)
VALVE_FEATURES_USED = (
    "mitral_found",
    "mitral_thickness_mm",
    "mitral_opening",
    "mitral_coaptation_mm",
    "chord_found",
    "chord_thickness_mm",
    "aortic_found",
    "aortic_thickness_mm",
    "aortic_opening",
    "aortic_coaptation_mm",
    "aortic_gap_mm",
)
# Where each valve measurement is read: the views that show it in profile (PSAX cuts the mitral orifice across, so
# its leaflets show opening but not their thickness or where they meet).
MITRAL_VIEWS = ("plax", "a4c", "a5c")
OPENING_VIEWS = ("a4c", "a5c", "psax")
APICAL_VIEWS = ("a4c", "a5c")  # where the annulus lies across the beam, so tips beyond it show as depth
AORTIC_VIEWS = ("plax", "a5c")
OPEN_PERCENTILE = 75  # a video's opening: how far the leaflets open when open (not one stray frame)


@dataclass(frozen=True)
class AnalysedFrame:
    video_id: str
    view: str  # the view model's label for this frame
    features: Mapping[str, float]  # the frame's features by name
    phase: float | None = None  # the frame's cardiac phase, when its video's is known
    frame_index: int = -1


@dataclass(frozen=True)
class ValveVideo:
    """One B-mode video: its view (over its frames) and its frames' valve readings, with their phase when known."""

    video_id: str
    view: str
    frames: tuple[tuple[int, float | None, Mapping[str, float]], ...]  # (frame index, phase, readings)

    def phased(self, systolic: bool, found: str) -> list[tuple[int, Mapping[str, float]]]:
        """The frames of one phase that show the structure `found` names. Without an ECG, the mitral leaflets tell
        the phase: the half of the frames where they open least are taken as systole, the rest as diastole."""
        shown = [(i, p, r) for i, p, r in self.frames if r[found] > 0]
        if not shown:
            return []
        if all(p is not None for _, p, _ in shown):
            return [(i, r) for i, p, r in shown if (p is not None and p < SYSTOLE_END) == systolic]
        opening = np.array([r["mitral_opening"] if r["mitral_found"] > 0 else np.nan for _, _, r in shown])
        if np.isnan(opening).all():
            return [(i, r) for i, _, r in shown]
        middle = float(np.nanmedian(opening))
        return [(i, r) for (i, _, r), o in zip(shown, opening, strict=True) if (o <= middle) == systolic]


def _median_of(frames: Sequence[tuple[int, Mapping[str, float]]], name: str, absolute: bool = False) -> float | None:
    if not frames:
        return None
    values = np.array([r[name] for _, r in frames], np.float64)
    return float(np.median(np.abs(values) if absolute else values))


def _percentile_of(frames: Sequence[tuple[int, Mapping[str, float]]], name: str) -> float | None:
    if not frames:
        return None
    return float(np.percentile([r[name] for _, r in frames], OPEN_PERCENTILE))


# Study feature -> (views, systolic (True), diastolic (False) or any phase (None), the structure, how the frames are
# pooled per video, the frame reading). Per study, the median over the videos that show it.
VALVE_MEASUREMENTS: dict[str, tuple[tuple[str, ...], bool | None, str, str, str]] = {
    "amvl_thickness_mm": (MITRAL_VIEWS, False, "mitral_found", "median", "mitral_thickness_mm"),
    "chord_thickness_mm": (MITRAL_VIEWS, None, "chord_found", "median", "chord_thickness_mm"),
    "mitral_opening": (OPENING_VIEWS, False, "mitral_found", "percentile", "mitral_opening"),
    "mitral_coaptation_mm": (APICAL_VIEWS, True, "mitral_found", "median", "mitral_coaptation_mm"),
    "aortic_thickness_mm": (AORTIC_VIEWS, None, "aortic_found", "median", "aortic_thickness_mm"),
    "aortic_opening": (AORTIC_VIEWS, True, "aortic_found", "percentile", "aortic_opening"),
    "aortic_closure_bow_mm": (AORTIC_VIEWS, False, "aortic_found", "absolute", "aortic_coaptation_mm"),
    "aortic_gap_mm": (AORTIC_VIEWS, False, "aortic_found", "median", "aortic_gap_mm"),
}


def video_measurement(video: ValveVideo, feature: str) -> float | None:
    views, systolic, found, pooling, name = VALVE_MEASUREMENTS[feature]
    if video.view not in views:
        return None
    if systolic is None:
        frames = [(i, r) for i, _, r in video.frames if r[found] > 0]
    else:
        frames = video.phased(systolic, found)
    if pooling == "percentile":
        return _percentile_of(frames, name)
    return _median_of(frames, name, absolute=pooling == "absolute")


def _valves(videos: Sequence[ValveVideo]) -> dict[str, float]:
    out: dict[str, float] = {}
    for feature in VALVE_MEASUREMENTS:
        per_video = [m for m in (video_measurement(v, feature) for v in videos) if m is not None]
        out[feature] = float(np.median(per_video)) if per_video else 0.0
    out["mitral_valve_read"] = float(
        sum(v.view in MITRAL_VIEWS and any(r["mitral_found"] > 0 for _, _, r in v.frames) for v in videos)
    )
    out["aortic_valve_read"] = float(
        sum(v.view in AORTIC_VIEWS and any(r["aortic_found"] > 0 for _, _, r in v.frames) for v in videos)
    )
    return out


def valve_videos(frames: Sequence[AnalysedFrame]) -> list[ValveVideo]:
    """The valve stage's frames grouped per video, each video's view the one most of its frames got."""
    by_video: dict[str, list[AnalysedFrame]] = {}
    for f in frames:
        by_video.setdefault(f.video_id, []).append(f)
    out = []
    for video_id, mine in sorted(by_video.items()):
        missing = sorted({name for f in mine for name in VALVE_FEATURES_USED if name not in f.features})
        if missing:
            raise ValueError(f"valve readings lack {', '.join(missing)}")
        view = _video_view(np.array([f.view for f in mine]))
        readings = tuple((f.frame_index, f.phase, f.features) for f in sorted(mine, key=lambda f: f.frame_index))
        out.append(ValveVideo(video_id, view, readings))
    return out


@dataclass(frozen=True)
class Trace:
    """One spectral Doppler video: the median of its frames' readings, by name, and the valve it is read as."""

    video_id: str
    readings: Mapping[str, float]
    frames: tuple[tuple[int, Mapping[str, float]], ...] = ()  # (frame index, its readings)

    def frame_nearest(self, name: str) -> int:
        """The frame whose reading of `name` is nearest the video's median: the one to show."""
        if not self.frames:
            return -1
        return min(self.frames, key=lambda f: abs(f[1][name] - self.readings[name]))[0]

    @property
    def valve(self) -> str:
        ejection = (
            self.readings["away_fraction"] >= EJECTION_MIN_FRACTION
            and self.readings["away_peak_cm_s"] < EJECTION_MAX_CM_S
        )
        return "aortic" if ejection else "mitral"

    def cover(self, name: str, fraction: str, share: float) -> float:
        """For what share of its phase a flow lasts: from the ECG when known, else its share of the screen over the
        phase's usual share of the cycle."""
        value = self.readings[name]
        return value if value >= 0 else float(min(1.0, self.readings[fraction] / share))


def video_views(results: Sequence[pb.FrameResult]) -> dict[str, str]:
    """Each video's view: the label most of its frames the view model read got (`rhd.runtime.views.view_sampled`),
    over every terminal record that carries one (a colour video's frames without flow end in the valve stage). A clip
    shows one view, so every frame of the video takes it; a video none of whose read frames was analysed has none."""
    labels: dict[str, list[str]] = {}
    for r in results:
        if r.view.label:
            labels.setdefault(r.key.video_id, []).append(r.view.label)
    return {video: _video_view(np.array(mine)) for video, mine in labels.items()}


def _video_view(views: np.ndarray) -> str:
    """A video's view: the label most of its frames got (ties: the first in sort order)."""
    labels, counts = np.unique(views, return_counts=True)
    return str(labels[int(np.argmax(counts))])


def _by_phase(frames: Sequence[AnalysedFrame]) -> dict[str, float]:
    """The jets of the frames whose phase is known, systolic and diastolic apart."""
    out: dict[str, float] = {}
    phased = [f for f in frames if f.phase is not None]
    videos = {f.video_id for f in frames}
    out["phase_known_fraction"] = len({f.video_id for f in phased}) / len(videos) if videos else 0.0
    for name, in_phase in (("systolic", lambda p: p < SYSTOLE_END), ("diastolic", lambda p: p >= SYSTOLE_END)):
        mine = [f for f in phased if in_phase(f.phase)]
        per_view: dict[str, float] = {}
        views_with_jet: set[str] = set()
        cover = 0.0
        for video in sorted({f.video_id for f in mine}):
            frames_of = [f for f in mine if f.video_id == video]
            jets = np.array([f.features["jet_length_mm"] for f in frames_of])
            view = _video_view(np.array([f.view for f in frames_of]))
            per_view[view] = max(per_view.get(view, 0.0), float(jets.max()))
            cover = max(cover, float((jets >= JET_MIN_MM).mean()))
            if int((jets >= JET_MIN_MM).sum()) >= JET_MIN_FRAMES:
                views_with_jet.add(view)
        lengths = sorted(per_view.values(), reverse=True)
        out[f"{name}_jet_length_mm_max"] = lengths[0] if lengths else 0.0
        out[f"views_with_{name}_jet"] = float(len(views_with_jet))
        out[f"{name}_jet_cover_max"] = cover
        if name == "systolic":
            out["second_view_systolic_jet_mm"] = lengths[1] if len(lengths) > 1 else 0.0
    return out


def _chosen(traces: Sequence[Trace]) -> tuple[Trace | None, Trace | None, Trace | None]:
    """The traces the study's values come from: MR's (the fastest mitral regurgitation), AR's, and the mitral inflow's
    (the first mitral trace)."""
    mitral = [t for t in traces if t.valve == "mitral"]
    aortic = [t for t in traces if t.valve == "aortic"]
    mr = max(mitral, key=lambda t: t.readings["away_peak_cm_s"], default=None)
    ar = max(aortic, key=lambda t: t.readings["toward_peak_cm_s"], default=None)
    return mr, ar, mitral[0] if mitral else None


def _traces(traces: Sequence[Trace]) -> dict[str, float]:
    mitral = [t for t in traces if t.valve == "mitral"]
    aortic = [t for t in traces if t.valve == "aortic"]
    mr, ar, _ = _chosen(traces)
    return {
        "mr_peak_velocity_m_s": mr.readings["away_peak_cm_s"] / 100.0 if mr else 0.0,
        "mr_systolic_cover": mr.cover("systolic_away_cover", "away_fraction", SYSTOLE_END) if mr else 0.0,
        "ms_mean_gradient_mmhg": float(np.median([t.readings["toward_mean_gradient_mmhg"] for t in mitral]))
        if mitral
        else 0.0,
        "ar_peak_velocity_m_s": ar.readings["toward_peak_cm_s"] / 100.0 if ar else 0.0,
        "ar_diastolic_cover": ar.cover("diastolic_toward_cover", "toward_fraction", 1 - SYSTOLE_END) if ar else 0.0,
        "mitral_trace_read": float(bool(mitral)),
        "aortic_trace_read": float(bool(aortic)),
    }


def study_features(
    frames: Sequence[AnalysedFrame], traces: Sequence[Trace] = (), valves: Sequence[ValveVideo] = ()
) -> list[float]:
    """Aggregate a study's analysed colour frames, spectral traces and B-mode valve videos in STUDY_FEATURE_NAMES
    order; zero where a study has none."""
    values = {name: 0.0 for name in STUDY_FEATURE_NAMES}
    values.update(_traces(traces))
    values.update(_valves(valves))
    if not frames:
        return [values[name] for name in STUDY_FEATURE_NAMES]
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
    values.update(
        {
            "jet_length_mm_max": float(jets.max()),
            "plax_jet_length_mm_max": float(plax.max()) if plax.size else 0.0,
            "jet_length_mm_p75": float(np.percentile(jets, 75)),
            "second_view_jet_length_mm": per_view_max[1] if len(per_view_max) > 1 else 0.0,
            "views_with_jet": float(len({view for view, _, jet, _ in per_video if jet})),
            "views_with_long_jet": float(len({view for view, _, _, long in per_video if long})),
            "colour_videos_read": float(sum(view != "other" for view, _, _, _ in per_video)),
            "jet_cycle_fraction_max": max(share for _, share, _, _ in per_video),
            "plax_jet_cycle_fraction_max": max(
                (share for view, share, _, _ in per_video if view == "plax"), default=0.0
            ),
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
    )
    values.update(_by_phase(frames))
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

    def expire(self, at: float) -> tuple[list[pb.StudyFeatures], list[tuple[str, int]]]:
        """The studies whose deadline passed, closed as they stand; and the strays: (study, records) of frame
        results for a study the line never registered (no manifest from split by the deadline). A stray is not a
        study, so it gets no diagnosis; it is forgotten, not closed, so were its manifest only late the study
        still opens when it comes (and is answered at its own deadline)."""
        late = [sid for sid, s in self.open.items() if at - s.first_seen >= self.deadline_s]
        strays = [(sid, len(self.open.pop(sid).results)) for sid in late if self.open[sid].manifest is None]
        studies = [self._close(sid, self.open[sid], deadline_passed=True) for sid in late if sid in self.open]
        return studies, strays

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
    cycles = cardiac_cycles(manifest, results) if manifest is not None else []
    phases = {c.video_id: c.phases for c in cycles if c.known}
    done = [r for r in results if r.status == pb.FRAME_STATUS_ANALYSED]

    views = video_views(results)

    def analysed_frame(r: pb.FrameResult) -> AnalysedFrame:
        phase = float(phases[r.key.video_id][r.key.frame_index]) if r.key.video_id in phases else None
        view = views.get(r.key.video_id, "")
        return AnalysedFrame(r.key.video_id, view, _named(r.features), phase, r.key.frame_index)

    # A colour video's frames that show no flow at some moment are B-mode frames: the valve stage reads those.
    analysed = [analysed_frame(r) for r in done if not r.features.feature_set.startswith(("spectral", "valve"))]
    valves = valve_videos([analysed_frame(r) for r in done if r.features.feature_set.startswith("valve")])
    traces = _video_traces([r for r in done if r.features.feature_set.startswith("spectral")])
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
    elif not analysed and not traces and not deadline_passed and manifest is not None:
        completeness = pb.COMPLETENESS_FAILED
        reasons.append("no colour or spectral Doppler frame could be analysed")
    elif reasons or not (analysed or traces):
        completeness = pb.COMPLETENESS_INCOMPLETE
    else:
        completeness = pb.COMPLETENESS_COMPLETE
    features = pb.FeatureVector(
        feature_set=STUDY_FEATURE_SET, names=STUDY_FEATURE_NAMES, values=study_features(analysed, traces, valves)
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
        clinical=manifest.metadata if manifest else {},
    )
    study.cycles.extend(cycles)
    study.evidence.extend(evidence_frames(analysed, traces, valves))
    study.assembled_at.GetCurrentTime()
    return study


def _named(vector: pb.FeatureVector) -> dict[str, float]:
    return dict(zip(vector.names, vector.values, strict=True))


def _video_traces(results: list[pb.FrameResult]) -> list[Trace]:
    """Per spectral video, the median of each reading over its frames (each frame shows the last seconds of trace)."""
    by_video: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for r in results:
        by_video.setdefault(r.key.video_id, []).append((r.key.frame_index, _named(r.features)))
    traces = []
    for video_id, frames in sorted(by_video.items()):
        missing = sorted({name for _, f in frames for name in TRACE_FEATURES_USED if name not in f})
        if missing:
            raise ValueError(f"spectral readings lack {', '.join(missing)}")
        medians = {name: float(np.median([f[name] for _, f in frames])) for name in TRACE_FEATURES_USED}
        traces.append(Trace(video_id, medians, tuple(sorted(frames, key=lambda f: f[0]))))
    return traces


def evidence_frames(
    frames: Sequence[AnalysedFrame], traces: Sequence[Trace] = (), valves: Sequence[ValveVideo] = ()
) -> list[pb.EvidenceFrame]:
    """Where the study's criterion measurements were read: the frame of the longest jet (any phase, in systole, in
    diastole), per trace read the frame nearest its median reading, and per valve measurement the frame of the
    video nearest the study's value whose reading is nearest it."""
    out = []
    for feature, in_phase in (
        ("jet_length_mm_max", lambda f: True),
        ("systolic_jet_length_mm_max", lambda f: f.phase is not None and f.phase < SYSTOLE_END),
        ("diastolic_jet_length_mm_max", lambda f: f.phase is not None and f.phase >= SYSTOLE_END),
    ):
        mine = [f for f in frames if in_phase(f) and f.features["jet_length_mm"] >= JET_MIN_MM]
        if mine:
            best = max(mine, key=lambda f: f.features["jet_length_mm"])
            out.append(pb.EvidenceFrame(feature=feature, video_id=best.video_id, frame_index=best.frame_index))
    mr, ar, mitral = _chosen(traces)
    for feature, trace, reading in (
        ("mr_peak_velocity_m_s", mr, "away_peak_cm_s"),
        ("ar_peak_velocity_m_s", ar, "toward_peak_cm_s"),
        ("ms_mean_gradient_mmhg", mitral, "toward_mean_gradient_mmhg"),
    ):
        index = trace.frame_nearest(reading) if trace is not None and trace.readings[reading] > 0 else -1
        if trace is not None and index >= 0:
            out.append(pb.EvidenceFrame(feature=feature, video_id=trace.video_id, frame_index=index))
    study = _valves(valves)
    for feature, (_, systolic, found, pooling, name) in VALVE_MEASUREMENTS.items():
        candidates = []
        for video in valves:
            value = video_measurement(video, feature)
            if value is None:
                continue
            shown = (
                [(i, r) for i, _, r in video.frames if r[found] > 0]
                if systolic is None
                else video.phased(systolic, found)
            )
            for index, reading in shown:
                read = abs(reading[name]) if pooling == "absolute" else reading[name]
                candidates.append((abs(value - study[feature]), abs(read - value), video.video_id, index))
        if candidates:
            _, _, video_id, index = min(candidates)
            out.append(pb.EvidenceFrame(feature=feature, video_id=video_id, frame_index=index))
    return out


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
