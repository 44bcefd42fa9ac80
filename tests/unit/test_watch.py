"""`rhd watch`: the dashboard's arithmetic as PromQL does it, targets as Prometheus reads them, and one snapshot
scraped from live endpoints with known counts."""

import asyncio
import json
import math
import re

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from rhd.cli import main
from rhd.local.stack import EmbeddedStack, ServiceProcess
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES
from rhd.watch.console import plain_text
from rhd.watch.figures import (
    Samples,
    Scrape,
    Target,
    counter_increase,
    figures,
    file_sd,
    histogram_quantile,
    parse_samples,
    parse_target,
    quantile,
    read_targets,
    window,
)

INF = math.inf


def test_a_counter_increase_is_the_difference_and_a_reset_counts_from_zero():
    assert counter_increase(10.0, 25.0) == 15.0
    assert counter_increase(7.0, 7.0) == 0.0
    assert counter_increase(40.0, 6.0) == 6.0  # the process restarted: 6 since, not -34


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.3),  # rank 20: halfway through (0.1, 0.5], which holds ranks 10-30
        (0.95, 0.9),  # rank 38: 8 of the 10 in (0.5, 1.0]
        (0.1, 0.04),  # rank 4 in the first bucket, which starts at 0
        (0.0, 0.0),
        (1.0, 1.0),
    ],
)
def test_histogram_quantile_interpolates_linearly_inside_the_bucket_as_promql(q, expected):
    buckets = [(0.1, 10), (0.5, 30), (1.0, 40), (INF, 40)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)
    assert histogram_quantile(q, reversed(buckets)) == pytest.approx(expected)  # order of the series is no matter


def test_histogram_quantile_edges_follow_promql():
    assert histogram_quantile(0.9, [(1.0, 5), (INF, 10)]) == 1.0  # rank in +Inf: the highest finite bound
    assert histogram_quantile(0.5, [(1.0, 0), (INF, 0)]) is None  # no observations: NaN in PromQL
    assert histogram_quantile(0.5, [(1.0, 3), (2.0, 5)]) is None  # no +Inf bucket
    assert histogram_quantile(0.5, [(INF, 5)]) is None
    assert histogram_quantile(0.25, [(-1.0, 2), (INF, 4)]) == -1.0  # a first bound <= 0 is not interpolated from 0
    assert histogram_quantile(1.5, [(1.0, 1), (INF, 1)]) == INF
    assert histogram_quantile(-0.5, [(1.0, 1), (INF, 1)]) == -INF
    # Deltas across a restart can make a higher bucket count less than a lower one: evened out, as PromQL does.
    assert histogram_quantile(0.5, [(1.0, 5), (2.0, 3), (INF, 10)]) == pytest.approx(1.0)


def test_quantile_of_a_real_histograms_exposition():
    registry = CollectorRegistry()
    seconds = Histogram("rhd_stage_seconds", "", ["stage"], registry=registry, buckets=(0.1, 0.2, 0.5, 1.0))
    for value in (0.05, 0.15, 0.15, 0.3, 0.7):
        seconds.labels("split").observe(value)
    seconds.labels("view").observe(0.9)
    samples = parse_samples(generate_latest(registry).decode())
    # rank 2.5 of 5: in (0.1, 0.2], which holds ranks 1-3
    assert quantile(samples, 0.5, "rhd_stage_seconds", stage="split") == pytest.approx(0.175)
    # both stages: rank 3 of 6, still in (0.1, 0.2]: 0.1 + 0.1 * (3 - 1) / 2
    assert quantile(samples, 0.5, "rhd_stage_seconds") == pytest.approx(0.2)
    assert quantile(samples, 0.5, "rhd_stage_seconds", stage="segment") is None


def exposition(
    messages: dict[tuple[str, str], float],
    buckets: dict[float, float] | None = None,
    lag: dict[int, float] | None = None,
) -> Samples:
    """Samples as a stage service exposes them: messages by (stage, outcome), split's cumulative buckets, lag."""
    samples: Samples = {
        ("rhd_messages_total", (("outcome", outcome), ("stage", stage))): value
        for (stage, outcome), value in messages.items()
    }
    for bound, count in (buckets or {}).items():
        samples[("rhd_stage_seconds_bucket", (("le", str(bound)), ("stage", "split")))] = count
    for partition, value in (lag or {}).items():
        samples[
            ("rhd_consumer_lag", (("partition", str(partition)), ("stage", "split"), ("topic", "studies.uploaded.v1")))
        ] = value
    return samples


def test_the_window_sums_replicas_after_taking_each_ones_increase_so_a_restart_subtracts_nothing():
    first, second, third = (Target("split", f"127.0.0.1:{port}") for port in (1, 2, 3))
    down = Target("view", "127.0.0.1:4")
    before = Scrape(
        10.0,
        {
            first: exposition({("split", "ok"): 10}),
            second: exposition({("split", "ok"): 50}),
            third: None,
            down: exposition({("view", "ok"): 3}),
        },
    )
    after = Scrape(
        12.0,
        {
            first: exposition({("split", "ok"): 30, ("split", "dead_letter"): 2}),  # a series born in the window
            second: exposition({("split", "ok"): 5}),  # restarted: 5 since
            third: exposition({("split", "ok"): 100}),  # up only now: nothing known of its window
            down: None,
        },
    )
    w = window(before, after)
    assert w.seconds == 2.0
    assert w.rate("rhd_messages_total", stage="split", outcome="ok") == pytest.approx((20 + 5) / 2)
    assert w.rate("rhd_messages_total", stage="split", outcome="dead_letter") == pytest.approx(1.0)
    assert w.rate("rhd_messages_total", stage="view") == 0.0
    assert w.up == {"split": (3, 3), "view": (0, 1)}
    assert w.down == [down]
    snapshot = figures(w, STAGES)
    split = snapshot.stages[0]
    assert (split.stage, split.replicas) == ("split", (3, 3))
    assert split.in_per_s == {"ok": 12.5, "dead_letter": 1.0} and split.duplicates_per_s == 0.0
    assert split.dead_letters == 2
    assert [s.stage for s in snapshot.stages] == ["split", "view"]
    assert snapshot.stages[1].replicas == (0, 1)


def test_processing_time_quantiles_are_of_the_window_not_of_all_time_and_lag_is_summed_and_maxed():
    target = Target("split", "127.0.0.1:1")
    # Before: 100 fast messages. In the window: 10 more, all between 0.5 and 1 s.
    before = exposition({("split", "ok"): 100}, {0.1: 100, 0.5: 100, 1.0: 100, INF: 100}, {0: 7, 1: 0})
    after = exposition({("split", "ok"): 110}, {0.1: 100, 0.5: 100, 1.0: 110, INF: 110}, {0: 4, 1: 9, 2: 1})
    split = figures(window(Scrape(0.0, {target: before}), Scrape(2.0, {target: after})), STAGES).stages[0]
    assert split.p50_s == pytest.approx(0.75)
    assert split.p95_s == pytest.approx(0.975)
    assert (split.lag, split.lag_max_partition) == (14, 9)
    assert split.in_per_s["ok"] == 5.0


def test_targets_round_trip_through_prometheus_file_sd(tmp_path):
    targets = [
        Target("split", "127.0.0.1:1"),
        Target("split", "127.0.0.1:2"),
        Target("model-server", "127.0.0.1:3", "/monitoring/prometheus/metrics"),
    ]
    entries = file_sd(targets)
    assert entries == [
        {"targets": ["127.0.0.1:1", "127.0.0.1:2"], "labels": {"job": "split"}},
        {
            "targets": ["127.0.0.1:3"],
            "labels": {"job": "model-server", "__metrics_path__": "/monitoring/prometheus/metrics"},
        },
    ]
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(entries))
    assert read_targets(path) == targets
    path.write_text('{"targets": []}')
    with pytest.raises(ValueError, match="file_sd"):
        read_targets(path)


def test_a_target_on_the_command_line():
    assert parse_target("view=10.0.0.5:8080") == Target("view", "10.0.0.5:8080", "/metrics")
    assert parse_target("model-server=tf:8501") == Target("model-server", "tf:8501", "/monitoring/prometheus/metrics")
    assert parse_target("model-server=tf:8501/metrics") == Target("model-server", "tf:8501", "/metrics")
    for bad in ("view", "view=host", "=host:1"):
        with pytest.raises(ValueError, match="JOB=HOST:PORT"):
            parse_target(bad)


def test_the_embedded_stack_lists_every_replica_and_the_model_servers_path(tmp_path):
    stack = EmbeddedStack(tmp_path, Settings())
    stack.services = [
        ServiceProcess(
            "model-server", [], {}, tmp_path / "m.log", http_port=8501, metrics_path="/monitoring/prometheus/metrics"
        ),
        ServiceProcess("split", [], {}, tmp_path / "s0.log", http_port=9001),
        ServiceProcess("view", [], {}, tmp_path / "v.log", http_port=9002),
    ]
    stack.write_targets()
    stack.services.append(ServiceProcess("split", [], {}, tmp_path / "s1.log", http_port=9003))
    stack.write_targets()  # as start_stage does for a replica started later
    assert json.loads((tmp_path / "targets.json").read_text()) == [
        {
            "targets": ["127.0.0.1:8501"],
            "labels": {"job": "model-server", "__metrics_path__": "/monitoring/prometheus/metrics"},
        },
        {"targets": ["127.0.0.1:9001", "127.0.0.1:9003"], "labels": {"job": "split"}},
        {"targets": ["127.0.0.1:9002"], "labels": {"job": "view"}},
    ]


class Replica:
    """A service's metrics endpoint whose registry moves one step between scrapes: the first scrape sees the state
    before, every later one the state after, so a snapshot's rates are known exactly in counts."""

    def __init__(self, index: int, before, step) -> None:
        self.index = index
        self.registry = CollectorRegistry()
        self.messages = Counter("rhd_messages_total", "", ["stage", "outcome"], registry=self.registry)
        self.outputs = Counter("rhd_outputs_total", "", ["stage", "topic"], registry=self.registry)
        self.seconds = Histogram("rhd_stage_seconds", "", ["stage"], registry=self.registry, buckets=(0.01, 0.1, 1.0))
        self.lag = Gauge("rhd_consumer_lag", "", ["stage", "topic", "partition"], registry=self.registry)
        self.requests = Histogram(
            "rhd_model_request_seconds", "", ["model", "code"], registry=self.registry, buckets=(0.01, 0.1, 1.0)
        )
        self.frames = Histogram("rhd_model_batch_size", "", ["model"], registry=self.registry, buckets=(1, 8, 32))
        self.served = Histogram(
            "rhd_model_server_request_seconds",
            "",
            ["model", "method", "code"],
            registry=self.registry,
            buckets=(0.01, 0.1, 1.0),
        )
        self.rows = Histogram("rhd_model_server_batch_size", "", ["model"], registry=self.registry, buckets=(16, 64))
        before(self)
        self.step, self.scrapes = step, 0

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        self.scrapes += 1
        if self.scrapes == 1:
            self.step(self)
        return web.Response(body=body, content_type="text/plain")


def split_before(r: Replica) -> None:
    r.messages.labels("split", "ok").inc(40)
    r.lag.labels("split", "studies.uploaded.v1", str(r.index)).set(3 + 2 * r.index)  # each its own partition


def split_step(r: Replica) -> None:
    r.messages.labels("split", "ok").inc(10)
    r.messages.labels("split", "dead_letter").inc(1)
    r.outputs.labels("split", "frames.decoded.v1").inc(600)
    for _ in range(10):
        r.seconds.labels("split").observe(0.05)


def view_before(r: Replica) -> None:
    r.messages.labels("view", "ok").inc(1000)


def view_step(r: Replica) -> None:
    r.messages.labels("view", "ok").inc(64)
    r.outputs.labels("view", "frames.viewed.v1").inc(64)
    for _ in range(4):
        r.requests.labels("view", "OK").observe(0.02)
        r.frames.labels("view").observe(16)


def server_step(r: Replica) -> None:
    for rows in (16, 48):
        r.served.labels("view", "Predict", "OK").observe(0.02)
        r.rows.labels("view").observe(rows)


@pytest.fixture
async def replicas():
    """Two split replicas, one view and the model server, each a tiny aiohttp server on a free port."""
    runners, addresses = [], []
    services = [
        ("split", split_before, split_step),
        ("split", split_before, split_step),
        ("view", view_before, view_step),
        ("model-server", lambda _: None, server_step),
    ]
    for index, (job, before, step) in enumerate(services):
        app = web.Application()
        path = "/monitoring/prometheus/metrics" if job == "model-server" else "/metrics"  # as --target assumes
        app.router.add_get(path, Replica(index, before, step).metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        addresses.append(f"{job}=127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
    yield addresses
    for runner in runners:
        await runner.cleanup()


def row(output: str, panel: str, first: str) -> list[str]:
    """The cells of the row starting with `first` in the panel whose title starts with `panel`."""
    [text] = [block for block in output.split("\n\n") if block.startswith(panel)]
    [line] = [line for line in text.splitlines() if line.split()[:1] == [first]]
    return line.split()


async def test_once_prints_each_stages_rates_summed_over_replicas_and_shows_a_dead_target_down(replicas, capsys):
    interval = 0.5
    argv = [
        "watch",
        "--once",
        "--interval",
        str(interval),
        *(f"--target={a}" for a in replicas),
        "--target=inspect=127.0.0.1:1",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    output = capsys.readouterr().out
    stage, up, ok, dlq, dup, out, p50, p95, lag, lag_max, dead = row(output, "stages", "split")
    assert up == "2/2"
    seconds = 20 / float(ok)  # 2 x 10 messages in the window: the window the watcher measured
    assert interval <= seconds < interval + 0.5
    assert float(dlq) == pytest.approx(2 / seconds, abs=0.06)
    assert float(out) == pytest.approx(1200 / seconds, rel=0.01)
    assert float(p50) == pytest.approx(10 + 90 * 0.5)  # 20 observations in (10, 100] ms: the middle is 55 ms
    assert (dup, lag, lag_max, dead) == ("0.0", "8", "5", "2")
    view = row(output, "stages", "view")
    assert view[1] == "1/1" and float(view[2]) == pytest.approx(64 / seconds, rel=0.01)
    assert row(output, "stages", "inspect")[1:4] == ["0/1", "-", "-"]
    assert re.search(r"4/5 targets up; down: inspect 127\.0\.0\.1:1", output)
    _, requests, failed, p95_ms, frames_per_request, served, served_p95_ms, server_batch, _ = row(
        output, "model", "view"
    )
    assert float(requests) == pytest.approx(4 / seconds, rel=0.02)
    assert (failed, frames_per_request, server_batch) == ("0.0", "16.0", "32.0")
    assert float(p95_ms) == float(served_p95_ms) == pytest.approx(10 + 90 * 0.95)
    assert float(served) == pytest.approx(2 / seconds, abs=0.06)


def test_once_without_targets_says_where_it_looked(tmp_path):
    with pytest.raises(SystemExit, match=r"rhd watch: .*missing\.json.*--target"):
        main(["watch", "--once", "--interval", "0.1", "--targets-file", str(tmp_path / "missing.json")])


def test_plain_text_of_an_empty_window_has_every_panel():
    text = plain_text(figures(window(Scrape(0.0, {}), Scrape(1.0, {})), STAGES))
    assert "0/0 targets up" in text
    assert "stages: messages/s over the last 1.0 s" in text and "studies diagnosed" in text
