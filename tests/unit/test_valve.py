"""The valve stage's measurements, on generated frames whose leaflets, chords and cusps are known: given the
structures where the generator drew them (the network's answer at its best), each measurement tells the
morphological feature apart, and thickness is within a pixel and a half of what was drawn in a single frame."""

import numpy as np
import pytest
from rhd.assemble.ops import STUDY_FEATURE_NAMES as STUDY
from rhd.assemble.ops import AnalysedFrame, study_features, valve_videos
from rhd.synth.render import VALVE_LABELS, Pose, Scene, render_frame
from rhd.valve import ops

DIASTOLE, SYSTOLE, EJECTION = 0.62, 0.05, 0.2  # open mitral leaflets; closed ones; aortic cusps open


def measured(scene: Scene, phase: float, seed: int = 0) -> dict[str, float]:
    image, truth = render_frame(scene, phase, np.random.default_rng(seed))
    answer = np.eye(len(ops.LABELS), dtype=np.float32)[ops.half_resolution(truth.valve_mask)]
    return dict(zip(ops.FEATURE_NAMES, ops.valve_features(image, answer, scene.pixel_spacing_mm), strict=True))


def test_the_network_contract_matches_the_generator_and_the_model():
    from rhd.valve import model

    assert ops.LABELS == VALVE_LABELS == model.LABELS
    assert (ops.CROP_TOP, ops.CROP_LEFT, ops.POOL) == (model.SECTOR_CROP[0][0], model.SECTOR_CROP[1][0], model.POOL)
    assert ops.CROP_SHAPE == model.INPUT_SHAPE[:2]


@pytest.mark.parametrize("view", ["plax", "a4c", "a5c"])
@pytest.mark.parametrize("leaflet_mm", [1.8, 3.0, 5.4])
def test_leaflet_thickness_is_within_a_pixel_and_a_half_of_what_was_drawn(view, leaflet_mm):
    scene = Scene(view=view, leaflet_mm=leaflet_mm)
    drawn_mm = leaflet_mm  # drawn to a fraction of a pixel (rhd.synth.render._bar)
    values = [measured(scene, DIASTOLE, seed)["mitral_thickness_mm"] for seed in range(5)]
    assert abs(np.median(values) - drawn_mm) <= 1.5 * scene.pixel_spacing_mm, values


@pytest.mark.parametrize("view", ["a4c", "a5c", "psax"])
def test_restricted_leaflets_open_less_in_diastole(view):
    free = measured(Scene(view=view), DIASTOLE)["mitral_opening"]
    restricted = measured(Scene(view=view, mitral_restricted=True), DIASTOLE)["mitral_opening"]
    assert restricted < free - 0.1, (restricted, free)


@pytest.mark.parametrize("view", ["a4c", "a5c"])  # in PLAX the generator moves the tips along the annulus
def test_leaflet_tips_beyond_the_annulus_in_systole_read_positive(view):
    normal = measured(Scene(view=view), SYSTOLE)["mitral_coaptation_mm"]
    excess = measured(Scene(view=view, mitral_tip_excess=True), SYSTOLE)["mitral_coaptation_mm"]
    assert normal < 0 < excess, (normal, excess)


@pytest.mark.parametrize("view", ["a4c", "a5c"])
def test_thickened_chords_read_thicker(view):
    thin = np.median([measured(Scene(view=view), DIASTOLE, s)["chord_thickness_mm"] for s in range(3)])
    thick = np.median(
        [measured(Scene(view=view, chordal_thickening=True), DIASTOLE, s)["chord_thickness_mm"] for s in range(3)]
    )
    assert thick > thin, (thin, thick)


@pytest.mark.parametrize("view", ["plax", "a5c"])
def test_aortic_cusps_thickening_restriction_prolapse_and_gap(view):
    plain = Scene(view=view)
    assert (
        measured(Scene(view=view, aortic_thick=True), DIASTOLE)["aortic_thickness_mm"]
        > (measured(plain, DIASTOLE)["aortic_thickness_mm"])
    )
    assert measured(Scene(view=view, aortic_restricted=True), EJECTION)["aortic_opening"] < (
        measured(plain, EJECTION)["aortic_opening"] - 0.1
    )
    assert abs(measured(Scene(view=view, aortic_prolapse=True), DIASTOLE)["aortic_coaptation_mm"]) > (
        abs(measured(plain, DIASTOLE)["aortic_coaptation_mm"]) + 0.5
    )
    assert (
        measured(Scene(view=view, aortic_coaptation_defect=True), DIASTOLE)["aortic_gap_mm"]
        > (measured(plain, DIASTOLE)["aortic_gap_mm"])
    )


def test_a_frame_without_valves_finds_none_and_bad_answers_are_errors():
    image, _ = render_frame(Scene(view="a4c", pose=Pose(dx=0)), DIASTOLE, np.random.default_rng(0))
    nothing = np.zeros((*ops.CROP_SHAPE, len(ops.LABELS)), np.float32)
    nothing[..., 0] = 1.0
    values = dict(zip(ops.FEATURE_NAMES, ops.valve_features(image, nothing, 0.6), strict=True))
    assert values["mitral_found"] == values["chord_found"] == values["aortic_found"] == 0.0
    with pytest.raises(ops.ValveError, match="no 'label_probabilities'"):
        ops.valve_features(image, None, 0.6)
    with pytest.raises(ops.ValveError, match="cannot be read"):
        ops.valve_features(image, np.zeros((108, 136, 3), np.float32), 0.6)
    with pytest.raises(ops.ValveError, match="cannot be read"):
        ops.valve_features(image, np.full((108, 136, 4), np.nan, np.float32), 0.6)
    with pytest.raises(ops.ValveError, match="pixel spacing"):
        ops.valve_features(image, nothing, float("nan"))


def _frame(video: str, view: str, index: int, phase: float | None, **readings: float) -> AnalysedFrame:
    values = dict.fromkeys(ops.FEATURE_NAMES, 0.0)
    values.update(readings)
    return AnalysedFrame(video, view, values, phase, index)


def test_assemble_reads_each_measurement_in_its_phase_and_views_and_pools_videos_by_median():
    frames = []
    for k in range(10):  # A4C, ECG known: thickness 2 mm in diastole (systolic frames read 9: the closed V)
        phase = k / 10
        systolic = phase < 0.42
        frames.append(
            _frame(
                "V1",
                "a4c",
                k,
                phase,
                mitral_found=1,
                mitral_thickness_mm=9.0 if systolic else 2.0,
                mitral_opening=0.05 if systolic else 0.3 + 0.02 * k,
                mitral_coaptation_mm=-1.0 if systolic else -8.0,
            )
        )
    for k in range(10):  # PLAX without an ECG: the leaflets' opening tells the phase
        systolic = k % 2 == 0
        frames.append(
            _frame(
                "V2",
                "plax",
                k,
                None,
                mitral_found=1,
                mitral_thickness_mm=9.0 if systolic else 3.0,
                mitral_opening=0.05 if systolic else 0.4,
                mitral_coaptation_mm=1.0 if systolic else -8.0,
                aortic_found=1,
                aortic_thickness_mm=1.5,
            )
        )
    frames += [_frame("V3", "other", k, k / 10, mitral_found=1, mitral_thickness_mm=7.0) for k in range(10)]
    videos = valve_videos(frames)
    assert [v.view for v in videos] == ["a4c", "plax", "other"]
    values = dict(zip(STUDY, study_features([], (), videos), strict=True))
    assert values["amvl_thickness_mm"] == pytest.approx(2.5)  # median of 2 (A4C) and 3 (PLAX); "other" ignored
    assert values["mitral_coaptation_mm"] == pytest.approx(-1.0)  # A4C's, in systole; PLAX does not count
    assert values["mitral_opening"] == pytest.approx(np.percentile([0.3 + 0.02 * k for k in range(5, 10)], 75))
    assert values["aortic_thickness_mm"] == pytest.approx(1.5)
    assert values["mitral_valve_read"] == 2.0 and values["aortic_valve_read"] == 1.0


def test_valve_readings_missing_a_name_are_an_error():
    frame = AnalysedFrame("V1", "a4c", {"mitral_found": 1.0}, 0.5, 0)
    with pytest.raises(ValueError, match="valve readings lack"):
        valve_videos([frame])


def test_a_colour_videos_flowless_frames_are_read_as_b_mode_and_its_colour_frames_as_colour():
    """In a colour video, frames at a moment with no flow under the box reach the valve stage: assemble reads each
    frame by its feature set, not by its video."""
    from rhd.assemble.ops import FRAME_FEATURES_USED, assemble_study
    from rhd.features.ops import FEATURE_SET as COLOUR_SET
    from rhd.v1 import rhd_pb2 as pb

    manifest = pb.StudyManifest(study_id="S")
    manifest.videos.add(video_id="V", status=pb.VIDEO_STATUS_DECODED, frame_count=4, fps=24.0)
    results = []
    for index in range(4):
        valve = index % 2 == 1
        names = ops.FEATURE_NAMES if valve else FRAME_FEATURES_USED
        values = [1.0 if n in ("mitral_found", "jet_length_mm") else 2.5 for n in names]
        vector = pb.FeatureVector(feature_set=ops.FEATURE_SET if valve else COLOUR_SET, names=names, values=values)
        key = pb.FrameKey(study_id="S", video_id="V", frame_index=index, video_frame_count=4)
        view = pb.ViewPrediction(label="a4c")
        results.append(pb.FrameResult(key=key, status=pb.FRAME_STATUS_ANALYSED, view=view, features=vector))
    study = assemble_study("S", manifest, results, deadline_passed=False)
    values = dict(zip(study.features.names, study.features.values, strict=True))
    assert values["mitral_valve_read"] == 1.0 and values["colour_videos_read"] == 1.0
