"""assemble's state machine: deduplication, completion, deadlines, completeness."""

import numpy as np
import pytest
from rhd.assemble.ops import (
    FRAME_FEATURES_USED,
    STUDY_FEATURE_NAMES,
    TRACE_FEATURES_USED,
    AnalysedFrame,
    Assembler,
    Trace,
    assemble_study,
    evidence_frames,
    study_features,
    video_views,
)
from rhd.features.ops import FEATURE_NAMES
from rhd.v1 import rhd_pb2 as pb


def manifest(study_id="S1", frames=(3, 2), failed=()):
    m = pb.StudyManifest(study_id=study_id)
    for i, n in enumerate(frames):
        m.videos.add(video_id=f"V{i}", status=pb.VIDEO_STATUS_DECODED, frame_count=n)
    for video_id, error in failed:
        m.videos.add(video_id=video_id, status=pb.VIDEO_STATUS_FAILED, error=error)
    return pb.FrameDone(manifest=m)


def result(video, index, status=pb.FRAME_STATUS_ANALYSED, jet=0.0, view="plax", study_id="S1"):
    values = [0.0] * len(FEATURE_NAMES)
    values[FEATURE_NAMES.index("jet_length_mm")] = jet
    return pb.FrameDone(
        result=pb.FrameResult(
            key=pb.FrameKey(study_id=study_id, video_id=video, frame_index=index),
            status=status,
            view=pb.ViewPrediction(label=view),
            features=pb.FeatureVector(names=FEATURE_NAMES, values=values),
            stage="features",
            reason="x" if status == pb.FRAME_STATUS_FAILED else "",
        )
    )


def all_results():
    return [result("V0", i) for i in range(3)] + [result("V1", i, pb.FRAME_STATUS_SKIPPED) for i in range(2)]


def test_study_closes_once_when_every_frame_is_accounted_for_in_any_order():
    assembler = Assembler(deadline_s=60)
    records = all_results() + [manifest()]
    outputs = [assembler.add("S1", r, at=0.0) for r in records]
    assert [o is not None for o in outputs] == [False] * 5 + [True]
    study = outputs[-1]
    assert study.completeness == pb.COMPLETENESS_COMPLETE
    assert (study.frames.expected, study.frames.analysed, study.frames.skipped, study.frames.missing) == (5, 3, 2, 0)
    # Redelivered records, and a re-published upload's records, change nothing.
    assert all(assembler.add("S1", r, at=1.0) is None for r in records)
    assert assembler.duplicates == len(records)


def test_duplicates_before_completion_are_counted_once():
    assembler = Assembler(deadline_s=60)
    for r in all_results()[:2] * 3:
        assert assembler.add("S1", r, at=0.0) is None
    assert assembler.duplicates == 4
    outputs = [assembler.add("S1", r, at=0.0) for r in all_results()[2:] + [manifest()]]
    assert outputs[-1].frames.analysed == 3


def test_deadline_emits_incomplete_with_what_is_missing():
    assembler = Assembler(deadline_s=10)
    assembler.add("S1", manifest(), at=0.0)
    assembler.add("S1", result("V0", 0), at=0.0)
    assert assembler.expire(at=9.0) == ([], [])
    (study,), strays = assembler.expire(at=10.0)
    assert strays == []
    assert study.completeness == pb.COMPLETENESS_INCOMPLETE
    assert study.frames.missing == 4
    assert "4 of 5 frames unaccounted" in study.reason
    assert assembler.add("S1", result("V0", 1), at=11.0) is None  # late records do not reopen it


def test_frame_results_for_a_study_never_registered_are_strays_not_a_study():
    assembler = Assembler(deadline_s=10)
    assembler.add("GHOST", result("V0", 0), at=0.0, partition=1, offset=7)
    assembler.add("GHOST", result("V0", 1), at=0.0, partition=1, offset=8)
    assert assembler.watermark(1, 9) == 7
    assert assembler.expire(at=10.0) == ([], [("GHOST", 2)])  # no StudyFeatures: nothing to diagnose
    assert assembler.watermark(1, 9) == 9 and "GHOST" not in assembler.closed
    # Were its manifest only late, the study opens when it comes and is answered at its own deadline.
    assembler.add("GHOST", manifest(frames=(2,)), at=20.0)
    (study,), _ = assembler.expire(at=30.0)
    assert study.study_id == "GHOST" and study.frames.missing == 2


def test_failed_video_makes_the_study_incomplete_with_its_reason():
    assembler = Assembler(deadline_s=60)
    assembler.add("S1", manifest(frames=(3,), failed=[("V9", "video 'V9': truncated video")]), at=0)
    outputs = [assembler.add("S1", result("V0", i), at=0) for i in range(3)]
    study = outputs[-1]
    assert study.completeness == pb.COMPLETENESS_INCOMPLETE
    assert "truncated video" in study.reason and study.videos_failed == 1


def test_study_with_no_decodable_video_fails():
    assembler = Assembler(deadline_s=60)
    study = assembler.add("S1", manifest(frames=(), failed=[("V0", "not a video")]), at=0)
    assert study.completeness == pb.COMPLETENESS_FAILED


def test_failed_frames_are_reported():
    assembler = Assembler(deadline_s=60)
    assembler.add("S1", manifest(frames=(2,)), at=0)
    assembler.add("S1", result("V0", 0), at=0)
    study = assembler.add("S1", result("V0", 1, status=pb.FRAME_STATUS_FAILED), at=0)
    assert study.completeness == pb.COMPLETENESS_INCOMPLETE
    assert study.frames.failed == 1 and "1 frames failed" in study.reason


def _frame(video: str, view: str, jet: float) -> AnalysedFrame:
    return AnalysedFrame(video, view, {n: jet if n == "jet_length_mm" else 0.0 for n in FEATURE_NAMES})


def test_study_features_follow_the_largest_jet_and_plax():
    frames = [
        _frame("V0", "plax", 12.0),
        _frame("V0", "plax", 12.5),
        _frame("V1", "a4c", 25.0),
        _frame("V1", "a4c", 24.0),
        _frame("V1", "a4c", 1.0),
        _frame("V2", "psax", 9.0),
        _frame("V2", "psax", 9.5),
    ]
    features = dict(zip(STUDY_FEATURE_NAMES, study_features(frames), strict=True))
    assert features["jet_length_mm_max"] == 25.0
    assert features["plax_jet_length_mm_max"] == 12.5
    assert features["second_view_jet_length_mm"] == 12.5  # PLAX is the second view with the largest jet
    assert features["views_with_jet"] == 2.0  # plax and a4c; psax's 9.5 mm is below a jet
    assert features["views_with_long_jet"] == 1.0  # a4c
    assert study_features([]) == pytest.approx([0.0] * len(STUDY_FEATURE_NAMES))


def test_a_video_shows_a_jet_in_its_majority_view_for_a_share_of_the_cycle():
    # V0: PLAX by most frames (one frame mislabelled), a jet (>= 10 mm) in 3 of 6 frames, long (>= 20 mm) in 2.
    v0 = [_frame("V0", "plax", j) for j in (0.0, 14.0, 21.0, 22.0, 0.0)] + [_frame("V0", "a4c", 0.0)]
    # V1: a single-frame 25 mm mosaic is noise, not a jet; V2: a 11-13 mm jet through the whole video.
    v1 = [_frame("V1", "a4c", j) for j in (25.0, 0.0, 0.0, 0.0)]
    v2 = [_frame("V2", "psax", j) for j in (11.0, 12.0, 13.0, 11.5)]
    features = dict(zip(STUDY_FEATURE_NAMES, study_features(v0 + v1 + v2), strict=True))
    assert features["views_with_jet"] == 2.0  # plax and psax; not a4c
    assert features["views_with_long_jet"] == 1.0  # plax
    assert features["jet_cycle_fraction_max"] == 1.0  # V2
    assert features["plax_jet_cycle_fraction_max"] == pytest.approx(3 / 6)
    assert features["jet_length_mm_max"] == 25.0  # the largest is still reported as measured


def test_the_watermark_holds_a_partition_at_the_first_record_of_an_open_study():
    assembler = Assembler(deadline_s=60)
    assembler.add("A", manifest(frames=(2,)), at=0, partition=0, offset=10)
    assembler.add("B", manifest(frames=(1,)), at=0, partition=0, offset=11)
    assembler.add("C", manifest(frames=(1,)), at=0, partition=1, offset=5)
    assert assembler.watermark(0, 12) == 10 and assembler.watermark(1, 6) == 5 and assembler.watermark(2, 3) == 3
    assert assembler.add("B", result("V0", 0), at=0, partition=0, offset=12) is not None  # B closes
    assert assembler.watermark(0, 13) == 10  # A still holds it
    assembler.add("A", result("V0", 0), at=0, partition=0, offset=13)
    assert assembler.add("A", result("V0", 1), at=0, partition=0, offset=14) is not None
    assert assembler.watermark(0, 15) == 15


def test_studies_emitted_before_are_not_emitted_again_and_revoked_partitions_are_forgotten():
    assembler = Assembler(deadline_s=60)
    assembler.mark_closed(["A"])
    assert assembler.add("A", manifest(frames=(1,)), at=0, partition=0, offset=0) is None
    assert assembler.add("A", result("V0", 0), at=0, partition=0, offset=1) is None
    assert assembler.duplicates == 2 and "A" not in assembler.open
    assembler.add("B", manifest(frames=(2,)), at=0, partition=3, offset=0)
    assert assembler.drop_partitions({3}) == 1 and assembler.open == {}
    assert assembler.expire(at=1_000) == ([], [])  # a forgotten study is not expired here: its new reader owns it


def test_each_decoded_videos_cardiac_cycle_is_fitted_from_its_frames_readings_or_says_why_not():
    from rhd.assemble.ops import cardiac_cycles

    fps, rate = 24.0, 1.5  # 90 bpm
    m = pb.StudyManifest(study_id="S1")
    m.videos.add(video_id="V0", status=pb.VIDEO_STATUS_DECODED, frame_count=24, fps=fps)
    m.videos.add(video_id="V1", status=pb.VIDEO_STATUS_DECODED, frame_count=10, fps=fps)
    m.videos.add(video_id="V2", status=pb.VIDEO_STATUS_FAILED, error="truncated")
    true_phase = (0.3 + rate * np.arange(24) / fps) % 1.0
    results = []
    for i in range(24):
        key = pb.FrameKey(study_id="S1", video_id="V0", frame_index=i, video_frame_count=24)
        result = pb.FrameResult(key=key, status=pb.FRAME_STATUS_SKIPPED)
        if i % 5:  # every fifth frame unread (the cursor at an end of the sweep)
            result.ecg.CopyFrom(pb.EcgReading(phase=true_phase[i], systole=true_phase[i] < 0.42, rr_px=60, beats=4))
        results.append(result)
    results += [pb.FrameResult(key=pb.FrameKey(study_id="S1", video_id="V1", frame_index=i)) for i in range(10)]
    v0, v1 = cardiac_cycles(m, results)
    assert v0.video_id == "V0" and v0.known and v0.heart_rate_bpm == pytest.approx(90.0, rel=1e-6)
    assert np.abs(np.array(v0.phases) - true_phase).max() < 1e-5 and len(v0.phases) == 24
    assert v0.frames_read == 19  # frames 0, 5, 10, 15 and 20 unread
    assert v1.video_id == "V1" and not v1.known and "0 of 10 frames" in v1.reason and not v1.phases


def _phased(video, view, jets, phases):
    return [
        AnalysedFrame(video, view, {**dict.fromkeys(FRAME_FEATURES_USED, 0.0), "jet_length_mm": j}, p)
        for j, p in zip(jets, phases, strict=True)
    ]


def test_jets_are_split_by_cardiac_phase_mr_in_systole_ar_in_diastole():
    # A PLAX video: a 24 mm jet in all three systolic frames, a 12 mm jet in one of three diastolic ones; an A4C video
    # with a 15 mm systolic jet in 2 of 3 systolic frames; a video without an ECG counts for neither.
    frames = (
        _phased("V0", "plax", [24, 24, 24, 12, 0, 0], [0.05, 0.2, 0.35, 0.5, 0.7, 0.9])
        + _phased("V1", "a4c", [15, 15, 0, 0], [0.1, 0.2, 0.3, 0.6])
        + _phased("V2", "psax", [30, 30], [None, None])
    )
    f = dict(zip(STUDY_FEATURE_NAMES, study_features(frames), strict=True))
    assert f["systolic_jet_length_mm_max"] == 24 and f["second_view_systolic_jet_mm"] == 15
    assert f["views_with_systolic_jet"] == 2 and f["systolic_jet_cover_max"] == 1.0
    assert f["diastolic_jet_length_mm_max"] == 12 and f["views_with_diastolic_jet"] == 0
    assert f["diastolic_jet_cover_max"] == pytest.approx(1 / 3)
    assert f["phase_known_fraction"] == pytest.approx(2 / 3)
    assert f["jet_length_mm_max"] == 30  # the phase-blind features still see every frame
    frames = [AnalysedFrame(a.video_id, a.view, a.features, a.phase, k) for k, a in enumerate(frames)]
    read_on = {e.feature: (e.video_id, e.frame_index) for e in evidence_frames(frames)}
    assert read_on == {
        "jet_length_mm_max": ("V2", 10),
        "systolic_jet_length_mm_max": ("V0", 0),
        "diastolic_jet_length_mm_max": ("V0", 3),
    }


def _trace(away_peak, away_fraction, toward_peak=0.0, gradient=0.0, systolic_cover=-1.0, diastolic_cover=-1.0):
    return Trace(
        "T",
        {
            "toward_peak_cm_s": toward_peak,
            "away_peak_cm_s": away_peak,
            "toward_mean_gradient_mmhg": gradient,
            "toward_fraction": 0.3,
            "away_fraction": away_fraction,
            "systolic_away_cover": systolic_cover,
            "diastolic_toward_cover": diastolic_cover,
        },
    )


def test_a_trace_is_aortic_when_it_shows_the_systolic_ejection_and_mitral_otherwise():
    assert _trace(away_peak=110, away_fraction=0.35).valve == "aortic"
    assert _trace(away_peak=420, away_fraction=0.4).valve == "mitral"  # regurgitation, not ejection
    assert _trace(away_peak=0, away_fraction=0.0).valve == "mitral"  # nothing in systole: the mitral inflow's trace
    mitral = _trace(away_peak=380, away_fraction=0.3, toward_peak=150, gradient=6.0, systolic_cover=0.95)
    aortic = _trace(away_peak=100, away_fraction=0.35, toward_peak=350, diastolic_cover=0.5)
    f = dict(zip(STUDY_FEATURE_NAMES, study_features([], [mitral, aortic]), strict=True))
    assert (f["mr_peak_velocity_m_s"], f["mr_systolic_cover"], f["ms_mean_gradient_mmhg"]) == (3.8, 0.95, 6.0)
    # Without an ECG the cover is the share of the screen over the phase's usual share of the cycle.
    assert f["ar_peak_velocity_m_s"] == 3.5 and f["ar_diastolic_cover"] == 0.5
    assert (f["mitral_trace_read"], f["aortic_trace_read"]) == (1.0, 1.0)
    assert _trace(300, 0.21).cover("systolic_away_cover", "away_fraction", 0.42) == pytest.approx(0.5)
    # The frame shown for a trace is the one whose reading is nearest the video's median.
    frames = tuple((k, {**mitral.readings, "away_peak_cm_s": v}) for k, v in enumerate((350.0, 381.0, 420.0)))
    shown = Trace("M", mitral.readings, frames)
    assert {e.feature: e.frame_index for e in evidence_frames([], [shown, aortic])} == {
        "mr_peak_velocity_m_s": 1,
        "ms_mean_gradient_mmhg": 0,
    }  # the aortic trace came without its frames' readings: no frame to show


def test_a_study_of_spectral_traces_only_is_still_analysed():
    m = pb.StudyManifest(study_id="S1")
    m.videos.add(video_id="V0", status=pb.VIDEO_STATUS_DECODED, frame_count=1)
    names = list(TRACE_FEATURES_USED) + ["phase_known"]
    values = [300.0, 120.0, 1.0, 0.3, 0.35, -1.0, -1.0, 0.0]
    r = pb.FrameResult(
        key=pb.FrameKey(study_id="S1", video_id="V0", frame_index=0),
        status=pb.FRAME_STATUS_ANALYSED,
        features=pb.FeatureVector(feature_set="spectral-v1", names=names, values=values),
    )
    study = assemble_study("S1", m, [r], deadline_passed=False)
    assert study.completeness == pb.COMPLETENESS_COMPLETE
    f = dict(zip(study.features.names, study.features.values, strict=True))
    assert f["aortic_trace_read"] == 1.0 and f["ar_peak_velocity_m_s"] == 3.0 and f["jet_length_mm_max"] == 0.0


def test_age_travels_as_years_while_the_dates_it_comes_from_stay_behind():
    from rhd.split.ops import acquisition

    scan = acquisition({"birth_date": "2013-05-02", "study_date": "2025-05-01", "patient_name": "Ana", "device": "X"})
    assert scan.clinical == {"age_years": "12.0", "device": "X"}
    assert "age_years" not in acquisition({"birth_date": "not a date", "study_date": "2025-05-01"}).clinical
    assert "age_years" not in acquisition({"birth_date": "2026-01-01", "study_date": "2025-05-01"}).clinical


def test_a_study_is_referred_when_the_criteria_do_not_apply_or_their_evidence_is_missing():
    from rhd.diagnose.ops import referral

    good = {
        "colour_videos_read": 3.0,
        "phase_known_fraction": 1.0,
        "mitral_trace_read": 1.0,
        "aortic_trace_read": 0.0,
        "mitral_valve_read": 2.0,
    }
    names, values = list(good), list(good.values())
    assert referral({"age_years": "12.0"}, names, values) is None
    assert "age unknown" in referral({}, names, values).reason
    adult = referral({"age_years": "34.2"}, names, values)
    assert "age 34 years" in adult.reason and not adult.scored
    assert referral({"age_years": "20.0"}, names, values) is None  # up to 20 inclusive
    for missing, why in (
        ("colour_videos_read", "no colour Doppler"),
        ("phase_known_fraction", "no ECG"),
        ("mitral_trace_read", "no spectral Doppler trace"),
        ("mitral_valve_read", "no B-mode video shows the mitral valve"),
    ):
        referred = referral({"age_years": "9.0"}, names, [0.0 if n == missing else v for n, v in good.items()])
        assert why in referred.reason and referred.scored


def test_a_videos_frames_take_the_view_its_read_frames_vote_for():
    """The view model reads some frames of a clip (view_sampled); every frame of the video, whichever stage ended it,
    takes the view most of them got. A video none of whose read frames came back has none."""
    records = [
        result("V0", 0, view="plax"),
        result("V0", 1, view="", jet=25.0),  # not read by the view model
        result("V0", 2, view="plax"),
        result("V0", 3, status=pb.FRAME_STATUS_FAILED, view="a4c"),  # failed, but its view was read: it votes
        result("V1", 0, view=""),
        result("V1", 1, view=""),
    ]
    assert video_views([r.result for r in records]) == {"V0": "plax"}
    study = assemble_study("S1", manifest(frames=(4, 2)).manifest, [r.result for r in records], deadline_passed=False)
    named = dict(zip(study.features.names, study.features.values, strict=True))
    assert named["plax_jet_length_mm_max"] == 25.0  # the unread frame's jet counts as the PLAX clip's
