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


def test_per_frame_costs_are_multiples_of_a_raw_decode_and_of_a_frames_pixels():
    s = load.Step(
        "t",
        0.2,
        60,
        {},
        frames=1000,
        cpu_s={"features": 3.0, "broker": 1.0},
        broker_bytes=5_000_000,
        store_bytes=230_400_000,
    )
    cost = load.per_frame(s, decode_s=0.0002)
    assert cost["cpu_ms"] == pytest.approx(4.0) and cost["cpu_over_decode"] == pytest.approx(20.0)
    assert cost["broker_bytes"] == 5_000 and cost["store_bytes"] == 230_400
    assert cost["bytes_over_pixels"] == pytest.approx((5_000 + 230_400) / (240 * 320 * 3))
    assert load.per_frame(load.Step("t", 0.2, 60, {}), 0.0002) == {}


def test_the_scaling_plan_gives_each_stage_the_replicas_its_cpu_per_frame_needs():
    s = load.Step("t", 0.2, 60, {}, frames=1000, cpu_s={"features": 2.8, "inspect": 0.7, "model-server": 1.4})
    cluster = load.scaling_plan(s, 500.0)
    # features: 500 frames/s x 2.8 ms = 1.4 cores, at most 0.7 of a core a replica: 2 replicas.
    assert cluster["replicas"] == {"features": 2, "inspect": 1, "model-server": 1}
    assert cluster["cores"] == pytest.approx(500 * 4.9e-3 / 0.7) and cluster["partitions"] == 4
    node = load.scaling_plan(s, 0.0, cores=16)
    assert node["frames_per_s"] == pytest.approx(16 * 0.7 / 4.9e-3) and node["cores"] == pytest.approx(16)
    # 2,286 frames/s x 2.8 ms / 0.7 = 9.1: 10 replicas of features, and 16 partitions for them to read.
    assert node["replicas"] == {"features": 10, "inspect": 3, "model-server": 5} and node["partitions"] == 16
