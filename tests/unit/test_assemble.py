"""assemble's state machine: deduplication, completion, deadlines, completeness."""

import pytest
from rhd.assemble.ops import STUDY_FEATURE_NAMES, AnalysedFrame, Assembler, study_features
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
    return pb.FrameDone(result=pb.FrameResult(
        key=pb.FrameKey(study_id=study_id, video_id=video, frame_index=index), status=status,
        view=pb.ViewPrediction(label=view), features=pb.FeatureVector(names=FEATURE_NAMES, values=values),
        stage="features", reason="x" if status == pb.FRAME_STATUS_FAILED else ""))


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
    assert assembler.expire(at=9.0) == []
    (study,) = assembler.expire(at=10.0)
    assert study.completeness == pb.COMPLETENESS_INCOMPLETE
    assert study.frames.missing == 4
    assert "4 of 5 frames unaccounted" in study.reason
    assert assembler.add("S1", result("V0", 1), at=11.0) is None  # late records do not reopen it


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


def test_study_features_follow_the_largest_jet_and_plax():
    values = lambda jet: [jet if n == "jet_length_mm" else 0.0 for n in FEATURE_NAMES]  # noqa: E731
    frames = [AnalysedFrame("plax", values(12.0)), AnalysedFrame("a4c", values(25.0)),
              AnalysedFrame("a4c", values(1.0))]
    features = dict(zip(STUDY_FEATURE_NAMES, study_features(frames), strict=True))
    assert features["jet_length_mm_max"] == 25.0
    assert features["plax_jet_length_mm_max"] == 12.0
    assert features["views_with_jet"] == 2.0
    assert study_features([]) == pytest.approx([0.0] * len(STUDY_FEATURE_NAMES))
