"""The load test's own arithmetic: fresh ids per arrival, latency from the due time, when a step keeps up, and
which stage is the bottleneck."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
import load
from rhd.v1 import rhd_pb2 as pb


def template() -> pb.StudyUpload:
    upload = pb.StudyUpload(study_id="S1", upload_id="u" * 32, metadata={"study_id": "S1", "nyquist_cm_s": "60"})
    upload.videos.add(video_id="S1-V01", inline_data=b"mp4")
    upload.videos.add(video_id="S1-V02", blob_uri="blob://x")
    return upload


def test_an_arrival_is_the_template_under_fresh_ids_uploaded_at_its_due_time():
    a, b = load.arrival(template(), "r-0", 1000.25), load.arrival(template(), "r-1", 1001.0)
    assert (a.study_id, b.study_id) == ("S1-r-0", "S1-r-1")
    assert a.metadata["study_id"] == "S1-r-0" and a.metadata["nyquist_cm_s"] == "60"
    assert [v.video_id for v in a.videos] == ["S1-V01-r-0", "S1-V02-r-0"]
    assert a.videos[0].inline_data == b"mp4" and a.videos[1].blob_uri == "blob://x"
    assert a.upload_id != b.upload_id
    assert a.uploaded_at.ToNanoseconds() == 1000_250_000_000
    assert template().study_id == "S1"  # the template is untouched


def step(sent: int, latencies: list[float], pace: float) -> tuple[load.Step, list[tuple[float, float]]]:
    s = load.Step("t", 0.1, 60, {}, sent=sent, diagnosed=len(latencies), throughput_per_s=pace)
    return s, [(float(i), lat) for i, lat in enumerate(latencies)]


@pytest.mark.parametrize(
    ("sent", "latencies", "pace", "expected"),
    [
        (6, [10, 11, 10, 12, 11, 10], 0.1, True),  # flat latency, all diagnosed at the offered pace
        (6, [10, 11, 10, 12, 11, 10], 0.085, False),  # diagnoses leave slower than studies arrive
        (6, [10, 11, 14, 18, 24, 30], 0.1, False),  # a queue builds: the last third waits 2.5x longer
        (7, [10, 11, 10, 12, 11, 10], 0.1, False),  # one arrival never diagnosed
        (2, [10, 30], 0.1, True),  # too few to see a trend, all diagnosed
        (0, [], 0.0, False),  # nothing sent is not keeping up
    ],
)
def test_a_step_keeps_up_when_everything_is_diagnosed_at_the_pace_offered_and_no_queue_builds(
    sent, latencies, pace, expected
):
    s, points = step(sent, latencies, pace)
    assert load.keeps_up(s, points) is expected


def test_the_bottleneck_is_where_the_lag_piles_up_else_the_busiest_stage():
    s = load.Step("t", 0.1, 60, {})
    s.stage_peak_lag = {st: 0.0 for st in load.STAGES} | {"inspect": 3, "features": 800}
    s.stage_busy_s = {st: 1.0 for st in load.STAGES} | {"split": 50.0}
    assert load.bottleneck(s) == "features"
    s.stage_peak_lag = {st: 0.0 for st in load.STAGES}
    assert load.bottleneck(s) == "split"


def test_percentiles_of_latencies():
    p = load.percentiles([float(x) for x in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["max"] == 100
    assert load.percentiles([]) == {}


def test_throughput_is_the_pace_at_which_diagnoses_leave():
    assert load.completion_rate([100.0, 104.0, 108.0, 112.0]) == pytest.approx(0.25)
    assert load.completion_rate([5.0, 1.0, 3.0]) == pytest.approx(0.5)  # order does not matter
    assert load.completion_rate([7.0]) == 0.0 and load.completion_rate([]) == 0.0
