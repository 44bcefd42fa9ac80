"""Open-loop load test of the whole line: generated studies published at a fixed arrival rate for a bounded time,
diagnoses read back, throughput and latency percentiles reported. Prints figures and writes JSON + PNG; asserts
nothing.

    .venv/bin/python loadtest/load.py [--search] [--rates 0.05,0.1] [--duration S] [--replicas stage=N ...]
                                      [--bootstrap HOST:PORT] [--out DIR]

Open loop: arrival i is due at t0 + i / rate whatever happened to the arrivals before it, and its latency runs
from that due time (it is the upload's `uploaded_at`), so a publisher or a line that falls behind shows up as
latency instead of silently lowering the offered rate (no coordinated omission). Each arrival is a study of a
small generated pool published again under fresh study and video ids; the line never sees the same ids twice.

Without --bootstrap the embedded stack (the broker of --broker, the model server, every stage as its own process)
is started here, with --replicas; with it, the line already running on that broker is loaded (its blob directory must be
the RHD_BLOB_DIR given here) and replicas are the operator's business.

--search, on the embedded stack: the latency of one study alone; a burst of studies for a first estimate of the
capacity; open-loop steps around it until the line stops keeping up (the saturation rate); the bottleneck stage
(where the consumer lag piles up, and the busiest); a step at half the saturation rate; then the overloaded
rate again with two replicas of the bottleneck. Then the in-process reference (the same stage functions in a
loop, one process per core) and the ratio of the two.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rhd.deid.ops import study_pseudonym
from rhd.imaging.video import LINE_SHAPE
from rhd.local.broker import kafka_available
from rhd.local.publish import upload_from_dir
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import EmbeddedStack, ServiceProcess
from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import now
from rhd.runtime.secrets import RAW_KEYRING, init_secrets, load_keyring, load_pseudonym_key, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES, STUDIES_DIAGNOSED, STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Target, total
from rhd.watch.figures import scrape as scrape_target

ROOT = Path(__file__).resolve().parents[1]
# The demo's studies: the screening protocol's first 10 videos of 1-2 s (about 340 frames, 80% colour Doppler).
SYNTH = SynthConfig(videos_per_study=10, duration_s=(1.0, 2.0))
FRAME_PIXEL_BYTES = LINE_SHAPE[0] * LINE_SHAPE[1] * 3  # one frame of the line's size, BGR
KEEPS_UP_PACE = 0.9  # diagnoses leave at least this share of the offered rate
KEEPS_UP_LATENCY_GROWTH = 1.5  # last third's median latency over the first third's: above it, a queue is building


def say(text: str) -> None:
    print(text, flush=True)


# -- the study pool and its arrivals ----------------------------------------------------------------------------


def study_pool(
    workdir: Path, n: int, seed: int, blobs: BlobStore, max_message_bytes: int, config: SynthConfig = SYNTH
) -> list[pb.StudyUpload]:
    """Generated uploads, their stored videos sealed with the run's raw keyring (workdir/secrets, the stack's)."""
    dirs = synth_studies(seed, n, workdir / "pool", config, balanced=True)
    init_secrets(workdir / "secrets")
    seal = load_keyring(workdir / "secrets" / RAW_KEYRING).seal
    return [upload_from_dir(d, blobs, max_message_bytes, seal=seal) for d in dirs]


def arrival(template: pb.StudyUpload, tag: str, due: float) -> pb.StudyUpload:
    """The template under fresh ids, uploaded (for latency) at its due time."""
    upload = pb.StudyUpload()
    upload.CopyFrom(template)
    upload.study_id = f"{template.study_id}-{tag}"
    upload.upload_id = f"{template.upload_id[:16]}-{tag}"
    upload.metadata["study_id"] = upload.study_id
    for video in upload.videos:
        video.video_id = f"{video.video_id}-{tag}"
    upload.uploaded_at.FromNanoseconds(int(due * 1e9))
    return upload


# -- reading diagnoses and stage metrics ------------------------------------------------------------------------


class Diagnoses:
    """Every diagnosis of the run, from the topic's end at start: study id -> (uploaded, diagnosed, completeness)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, tuple[float, float, int]] = {}
        self.frames: dict[str, int] = {}  # study id -> its frames (the manifest's count)
        self.duplicates = 0
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        # Assigned, not subscribed: no group to join, so nothing is missed while a join waits.
        self._consumer = kafka.consumer(self.settings, None, "rhd-load-diagnoses")  # committed records only
        await self._consumer.start()
        self._consumer.assign([TopicPartition(STUDIES_DIAGNOSED, p) for p in range(self.settings.partitions)])
        await self._consumer.seek_to_end()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    d = pb.Diagnosis.FromString(record.value or b"")
                    if d.study_id in self.seen:
                        self.duplicates += 1
                        continue
                    self.seen[d.study_id] = (
                        d.uploaded_at.ToNanoseconds() / 1e9,
                        d.diagnosed_at.ToNanoseconds() / 1e9,
                        d.completeness,
                    )
                    self.frames[d.study_id] = d.frames.expected

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def wait_for(self, ids: Sequence[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.seen for i in ids):
                return True
            await asyncio.sleep(0.2)
        return False


async def scrape(http: aiohttp.ClientSession, services: Sequence[ServiceProcess]) -> dict[str, dict[str, float]]:
    """Per stage, summed over its replicas: seconds in the stage logic, consumer lag now, bytes produced so far."""
    figures = {s: {"busy_s": 0.0, "lag": 0.0, "bytes": 0.0} for s in STAGES}
    for service in services:
        if service.name in figures and service.alive():
            samples = await scrape_target(http, Target(service.name, f"127.0.0.1:{service.http_port}"))
            if samples is not None:
                figures[service.name]["busy_s"] += total(samples, "rhd_stage_seconds_sum")
                figures[service.name]["lag"] += total(samples, "rhd_consumer_lag")
                figures[service.name]["bytes"] += total(samples, "rhd_output_bytes_total")
    return figures


def cpu_seconds(processes: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system, all threads) used so far by each named group of processes, from /proc: where
    the line's time goes. Empty where /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    used: dict[str, float] = {}
    for name, pids in processes.items():
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def rss_mb(pid: int | None) -> float:
    """A process's resident memory now, MB (0 where /proc is not there)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def stored_bytes(root: Path) -> int:
    """Bytes in the blob and frame stores (files under the blob directory)."""
    return sum(path.stat().st_size for path in Path(root).rglob("*") if path.is_file())


def raw_decode_s_per_frame(study_dirs: Sequence[Path]) -> tuple[float, dict[str, int]]:
    """CPU seconds of one raw OpenCV decode of a frame (every thread FFmpeg uses counted), over the pool's videos;
    and each study's frame count."""
    import cv2

    frames, counts = 0, {}
    started = time.process_time()
    for study_dir in study_dirs:
        counts[study_dir.name] = 0
        for video in sorted(study_dir.glob("*.mp4")):
            capture = cv2.VideoCapture(str(video))
            while capture.read()[0]:
                counts[study_dir.name] += 1
            capture.release()
        frames += counts[study_dir.name]
    return (time.process_time() - started) / max(frames, 1), counts


# -- one open-loop step ---------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    offered_per_s: float
    duration_s: float
    replicas: dict[str, int]
    sent: int = 0
    diagnosed: int = 0
    incomplete: int = 0
    throughput_per_s: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)
    kept_up: bool = False
    publish_late_s_max: float = 0.0  # how far behind its schedule the publisher ever was
    stage_busy_s: dict[str, float] = field(default_factory=dict)
    stage_peak_lag: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process group (stage, model-server, broker)
    points: list[tuple[float, float]] = field(default_factory=list)  # (arrival since step start, latency)
    frames: int = 0  # frames of the diagnosed studies
    broker_bytes: int = 0  # produced to the broker: the uploads and every stage's records
    store_bytes: int = 0  # written to the blob and frame stores
    broker_rss_start_mb: float = 0.0  # the broker's resident memory when the step began
    broker_rss_mb: float = 0.0  # and at its end


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(max(values)),
        "mean": float(statistics.fmean(values)),
    }


def completion_rate(finished: Sequence[float]) -> float:
    """Diagnoses per second between the first and the last: the arrival rate while the line keeps up, its capacity
    once it does not (they then leave one by one at the pace of the slowest stage); 0 with fewer than two."""
    if len(finished) < 2:
        return 0.0
    span = max(finished) - min(finished)
    return (len(finished) - 1) / span if span > 0 else 0.0


def keeps_up(step: Step, points: list[tuple[float, float]]) -> bool:
    """Every arrival diagnosed at the pace offered (within 10%), and no queue building: the last third's latencies
    not above the first third's."""
    if step.diagnosed < step.sent or len(points) < 3:
        return step.diagnosed == step.sent and step.sent > 0
    if step.throughput_per_s < KEEPS_UP_PACE * step.offered_per_s:
        return False
    ordered = [latency for _, latency in sorted(points)]
    third = max(1, len(ordered) // 3)
    return statistics.median(ordered[-third:]) <= KEEPS_UP_LATENCY_GROWTH * statistics.median(ordered[:third])


async def run_step(
    line: "Line", name: str, pool: list[pb.StudyUpload], rate: float, duration_s: float, drain_s: float
) -> Step:
    """Publish at `rate` studies/s for `duration_s` (open loop), then wait up to `drain_s` for every diagnosis."""
    settings, diagnoses, services = line.settings, line.diagnoses, line.services
    assert diagnoses is not None
    step = Step(name, rate, duration_s, dict(line.replicas))
    n = max(1, round(rate * duration_s))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        max_request_size=settings.max_message_bytes,
        linger_ms=0,
    )
    await producer.start()
    raw = load_keyring(settings.secrets_dir / RAW_KEYRING)
    pseudonym_key = load_pseudonym_key(settings.secrets_dir)
    ids: list[str] = []
    peak: dict[str, float] = {s: 0.0 for s in STAGES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        before = await scrape(http, services)
        cpu_before = cpu_seconds(line.pids())
        sampling = True

        async def sample_lag() -> None:
            while sampling:
                for stage, figures in (await scrape(http, services)).items():
                    peak[stage] = max(peak[stage], figures["lag"])
                await asyncio.sleep(2.0)

        sampler = asyncio.create_task(sample_lag())
        t0 = time.time() + 0.5
        acks = []
        upload_bytes, stored_before = 0, stored_bytes(settings.blob_dir)
        step.broker_rss_start_mb = rss_mb(line.broker_pid)
        try:
            for i in range(n):
                due = t0 + i / rate
                await asyncio.sleep(max(0.0, due - time.time()))
                step.publish_late_s_max = max(step.publish_late_s_max, time.time() - due)
                upload = arrival(pool[i % len(pool)], f"{name}-{i}", due)
                # Downstream of deid the study is known by its pseudonym, which the run's key makes here too.
                ids.append(study_pseudonym(pseudonym_key, upload.hospital_id, upload.study_id))
                key, value, headers = sealed_upload(upload, raw)
                upload_bytes += len(key) + len(value)
                acks.append(await producer.send(STUDIES_UPLOADED, value, key=key, headers=headers))
            await asyncio.gather(*acks)
        finally:
            await producer.stop()
        await diagnoses.wait_for(ids, drain_s)
        sampling = False
        await sampler
        after = await scrape(http, services)
        cpu_after = cpu_seconds(line.pids())
    step.cpu_s = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    step.frames = sum(diagnoses.frames.get(i, 0) for i in ids if i in diagnoses.seen)
    step.broker_bytes = upload_bytes + int(sum(after[s]["bytes"] - before[s]["bytes"] for s in STAGES))
    step.store_bytes = stored_bytes(settings.blob_dir) - stored_before
    step.broker_rss_mb = rss_mb(line.broker_pid)
    done = [diagnoses.seen[i] for i in ids if i in diagnoses.seen]
    step.sent, step.diagnosed = len(ids), len(done)
    step.incomplete = sum(1 for _, _, completeness in done if completeness != pb.COMPLETENESS_COMPLETE)
    step.points = sorted((uploaded - t0, diagnosed - uploaded) for uploaded, diagnosed, _ in done)
    step.latency_s = percentiles([latency for _, latency in step.points])
    step.throughput_per_s = completion_rate([diagnosed for _, diagnosed, _ in done])
    step.kept_up = keeps_up(step, step.points)
    step.stage_busy_s = {s: after[s]["busy_s"] - before[s]["busy_s"] for s in STAGES}
    step.stage_peak_lag = peak
    late = f", publisher up to {step.publish_late_s_max:.2f} s late" if step.publish_late_s_max > 0.5 else ""
    if step.frames:
        late += (
            f"; per frame: broker {step.broker_bytes / step.frames / 1000:.1f} kB, stores "
            f"{step.store_bytes / step.frames / 1000:.1f} kB; the broker's memory {step.broker_rss_start_mb:.0f} -> "
            f"{step.broker_rss_mb:.0f} MB"
        )
    lat = step.latency_s
    say(
        f"  {name:<14} offered {rate:.3f}/s for {duration_s:.0f} s: {step.diagnosed}/{step.sent} diagnosed, "
        f"{step.throughput_per_s:.3f}/s; latency p50 {lat.get('p50', float('nan')):.1f} s, "
        f"p95 {lat.get('p95', float('nan')):.1f} s, p99 {lat.get('p99', float('nan')):.1f} s; "
        f"{'keeps up' if step.kept_up else 'FALLS BEHIND'}; peak lag "
        + ", ".join(f"{s} {int(v)}" for s, v in peak.items() if v)
        + late
    )
    return step


def per_frame(step: Step, decode_s: float) -> dict[str, float]:
    """The step's cost per frame: CPU (and as a multiple of one raw decode), broker and store bytes (and as a
    multiple of one frame's pixels)."""
    if not step.frames:
        return {}
    cpu = sum(step.cpu_s.values()) / step.frames
    broker, store = step.broker_bytes / step.frames, step.store_bytes / step.frames
    return {
        "cpu_ms": 1000 * cpu,
        "cpu_over_decode": cpu / decode_s if decode_s else 0.0,
        "broker_bytes": broker,
        "store_bytes": store,
        "bytes_over_pixels": (broker + store) / FRAME_PIXEL_BYTES,
    }


CORE_BUSY = 0.7  # the share of a core the plan lets a replica use (headroom for bursts, GC, the OS)
PLAN_FRAMES_PER_S = 500.0  # a PROVAR-sized archive (about 3.5 M frames) in under 2 hours


def scaling_plan(step: Step, frames_per_s: float, cores: int | None = None) -> dict[str, Any]:
    """Replicas per process group for `frames_per_s` from the step's measured CPU per frame (each replica at most
    CORE_BUSY of a core; the broker and the model server as the cores they need), or, given `cores`, the frames/s those
    cores carry. A replica's CPU request is its share (small ones share a core). Partitions: at least the most replicas
    any stage has, rounded up to a power of two (a consumer group uses no more replicas than partitions)."""
    if not step.frames:
        return {}
    per_frame = {name: seconds / step.frames for name, seconds in step.cpu_s.items() if seconds > 0}
    if cores is not None:
        frames_per_s = cores * CORE_BUSY / sum(per_frame.values())
    replicas = {name: max(1, int(np.ceil(frames_per_s * cpu / CORE_BUSY))) for name, cpu in per_frame.items()}
    partitions = 1 << int(np.ceil(np.log2(max(replicas.get(s, 1) for s in STAGES))))
    return {
        "frames_per_s": frames_per_s,
        "cpu_ms_per_frame": {name: 1000 * cpu for name, cpu in sorted(per_frame.items(), key=lambda kv: -kv[1])},
        "replicas": replicas,
        "cores": frames_per_s * sum(per_frame.values()) / CORE_BUSY,  # the CPU the replicas ask for in all
        "partitions": max(partitions, 4),
    }


def plan_line(plan: dict[str, Any]) -> str:
    busy = sorted(plan["replicas"].items(), key=lambda kv: -kv[1])
    return (
        f"{plan['frames_per_s']:.0f} frames/s: {plan['cores']:.1f} cores; replicas "
        + ", ".join(f"{name} {n}" for name, n in busy)
        + f"; {plan['partitions']} partitions a topic"
    )


def cpu_profile(step: Step) -> str:
    """Where the CPU went during a step: seconds per diagnosed study by process group, largest first."""
    if not step.cpu_s or not step.diagnosed:
        return "no CPU figures (not the embedded stack)"
    used = sorted(step.cpu_s.items(), key=lambda kv: -kv[1])
    whole = sum(step.cpu_s.values())
    parts = [f"{name} {seconds / step.diagnosed:.2f} ({100 * seconds / whole:.0f}%)" for name, seconds in used]
    return f"{whole / step.diagnosed:.1f} CPU s per study: " + ", ".join(parts)


def bottleneck(step: Step) -> str:
    """Where the queue piles up: the stage with the largest peak consumer lag (records waiting for it); ties (no
    lag anywhere) go to the stage that spent the most seconds working."""
    return max(STAGES, key=lambda s: (step.stage_peak_lag.get(s, 0.0), step.stage_busy_s.get(s, 0.0)))


# -- single study, burst, the in-process reference ---------------------------------------------------------------


async def single_study_latency(line: "Line", pool: list[pb.StudyUpload], repeats: int) -> list[float]:
    """One study at a time into an idle line: the latency a study has with nothing else to wait for."""
    latencies = []
    for i in range(repeats):
        step = await run_step(line, f"alone-{i}", [pool[i % len(pool)]], 1.0, 1.0, 600.0)
        latencies += [latency for _, latency in step.points]
    return latencies


async def burst(line: "Line", pool: list[pb.StudyUpload], n: int) -> float:
    """n studies at once: n over the time to the last diagnosis, a first estimate of the line's capacity (their
    diagnoses leave together at the end, so the pace between the first and the last would overstate it)."""
    step = await run_step(line, "burst", pool, 1000.0, n / 1000.0, 900.0)
    last = max((arrival + latency for arrival, latency in step.points), default=0.0)
    return step.diagnosed / last if last > 0 else 0.0


def _reference_worker(args: tuple[list[str], str]) -> int:
    from rhd.diagnose.ops import diagnose, load_study_model
    from rhd.inprocess import analyse_study
    from rhd.valve.local import LocalValveModel
    from rhd.view.local import LocalViewModel

    study_dirs, models_dir = args
    view, valve = LocalViewModel(Path(models_dir)), LocalValveModel(Path(models_dir))
    model = load_study_model(Path(models_dir))
    started = time.perf_counter()
    for study_dir in study_dirs:
        analysis = analyse_study(Path(study_dir), view, valve)
        diagnose(model, analysis.names, analysis.values)
    return int(1e6 * (time.perf_counter() - started))


def reference_loop_seconds(study_dirs: list[Path], models_dir: Path, processes: int) -> tuple[float, float]:
    """The same stage functions called in a loop, no Kafka, no PNG hops, one process per core over its share of
    the studies: (the slowest loop's seconds, the wall seconds including each process loading the models)."""
    shares = [[str(d) for d in study_dirs[i::processes]] for i in range(processes)]
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        loops = list(pool.map(_reference_worker, [(share, str(models_dir)) for share in shares]))
    return max(loops) / 1e6, time.perf_counter() - started


# -- the PNG ----------------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in results["steps"] if not s["name"].startswith("alone")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for s in steps:
        if s["points"]:
            xs, ys = zip(*s["points"], strict=True)
            left.plot(xs, ys, "o-", ms=3, lw=0.8, label=f"{s['name']} ({s['offered_per_s']:.3f}/s)")
    if results.get("single_study_latency_s"):
        left.axhline(results["single_study_latency_s"]["p50"], color="grey", ls="--", lw=1, label="one study alone")
    left.set(xlabel="arrival time in the step (s)", ylabel="upload to diagnosis (s)", title="Latency over time")
    left.legend(fontsize=7)
    offered = sorted((s for s in steps if s["name"].startswith(("rate", "half"))), key=lambda s: s["offered_per_s"])
    right.plot(
        [s["offered_per_s"] for s in offered], [s["throughput_per_s"] for s in offered], "o-", label="1 replica each"
    )
    for marker, s in zip("s^vD", (s for s in steps if s["name"].startswith("replicas")), strict=False):
        stage = s["name"].removeprefix("replicas-2x")
        right.plot([s["offered_per_s"]], [s["throughput_per_s"]], marker, ms=9, label=f"2 x {stage}")
    top = max([s["offered_per_s"] for s in steps] + [0.01])
    right.plot([0, top], [0, top], color="grey", ls=":", lw=1, label="throughput = offered")
    if results.get("in_process_per_s"):
        right.axhline(results["in_process_per_s"], color="green", ls="--", lw=1, label="in-process reference")
    right.set(xlabel="offered studies/s", ylabel="diagnosed studies/s", title="Throughput vs offered rate")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- runs ------------------------------------------------------------------------------------------------------


class Line:
    """The line under load: the embedded stack started here (with replicas), or one already on a broker."""

    def __init__(self, args: argparse.Namespace, workdir: Path, replicas: dict[str, int]) -> None:
        self.args, self.workdir, self.replicas = args, workdir, replicas
        self.stack: EmbeddedStack | None = None
        self.settings = Settings()
        self.diagnoses: Diagnoses | None = None

    async def __aenter__(self) -> "Line":
        broker = self.args.broker
        if broker == "auto":
            broker = "kafka" if kafka_available() else "tansu"
        base = Settings().model_copy(
            update={
                "blob_dir": self.workdir / "blobs",
                "study_deadline_s": 600.0,
                "secrets_dir": self.workdir / "secrets",
                "broker": broker,
                "kafka_retention_ms": 30 * 60_000,  # a long search keeps half an hour of records, not all of them
            }
        )
        say(f"broker: {broker}" + (" (records kept 30 minutes)" if broker == "kafka" else " (every record in memory)"))
        if self.args.bootstrap:
            self.settings = base.model_copy(update={"bootstrap_servers": self.args.bootstrap})
        else:
            self.stack = EmbeddedStack(self.workdir / "stack", base, self.replicas)
        try:
            if self.stack:
                self.settings = await self.stack.start()
            self.diagnoses = Diagnoses(self.settings)
            await self.diagnoses.start()
        except BaseException:
            # `async with` calls no __aexit__ when __aenter__ raises: a stage that did not start left the broker and
            # every other service running.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        # The stack stops whatever the reader does: with the broker gone (Tansu out of memory), stopping the reader
        # raised, and the stages and the model server were left running.
        try:
            if self.diagnoses:
                await self.diagnoses.stop()
        finally:
            if self.stack:
                self.stack.stop()

    @property
    def services(self) -> list[ServiceProcess]:
        return self.stack.services if self.stack else []

    @property
    def broker_pid(self) -> int | None:
        process = self.stack.broker.process if self.stack else None
        return process.pid if process is not None else None

    def pids(self) -> dict[str, list[int]]:
        """The processes of the embedded stack by name (a stage's replicas together), the broker included."""
        groups: dict[str, list[int]] = {}
        for service in self.services:
            if service.process is not None:
                groups.setdefault(service.name, []).append(service.process.pid)
        if self.stack and self.stack.broker.process is not None:
            groups["broker"] = [self.stack.broker.process.pid]
        return groups


async def search(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    blobs = BlobStore(workdir / "blobs")
    pool = study_pool(workdir, args.pool, args.seed, blobs, Settings().max_message_bytes)
    say(
        f"pool: {len(pool)} generated studies ({SYNTH.videos_per_study} videos of {SYNTH.duration_s[0]:g}-"
        f"{SYNTH.duration_s[1]:g} s), published again and again under fresh ids"
    )
    dirs = sorted(p for p in (workdir / "pool").iterdir() if p.is_dir() and p.name != "truth")
    decode_s, counts = raw_decode_s_per_frame(dirs)
    results["raw_decode_ms_per_frame"] = 1000 * decode_s
    results["frames_per_pool_study"] = statistics.fmean(counts.values())
    say(f"one raw OpenCV decode: {1000 * decode_s:.3f} CPU ms a frame ({sum(counts.values())} frames of the pool)")
    steps: list[Step] = []
    async with Line(args, workdir, {}) as line:
        alone = await single_study_latency(line, pool, args.alone)
        results["single_study_latency_s"] = percentiles(alone)
        say(f"one study alone: latency {statistics.median(alone):.1f} s (median of {len(alone)})")
        estimate = await burst(line, pool, args.burst)
        rss_start = rss_mb(line.broker_pid)  # the broker's memory before the steps whose studies it is divided by
        results["burst_per_s"] = estimate
        say(f"burst of {args.burst} studies at once: {estimate:.3f} studies/s")
        factors = list(args.factors)
        while factors:
            factor = factors.pop(0)
            rate = round(estimate * factor, 4)
            duration = max(args.duration, args.min_arrivals / rate)
            steps.append(await run_step(line, f"rate-{factor:g}x", pool, rate, duration, args.drain))
            if not steps[-1].kept_up:
                if any(s.kept_up for s in steps) or factor < 0.2:
                    break
                factors.insert(0, round(factor * 0.7, 3))  # even the first rate was too much: go below it
        kept = [s for s in steps if s.kept_up]
        saturation = max((s.offered_per_s for s in kept), default=0.0)
        capacity = max(s.throughput_per_s for s in steps)
        overloaded = next((s for s in steps if not s.kept_up), steps[-1])
        neck = bottleneck(overloaded)
        results.update(
            saturation_per_s=saturation, capacity_per_s=capacity, bottleneck=neck, overloaded_step=overloaded.name
        )
        say(
            f"saturation: {saturation:.3f} studies/s kept up; capacity {capacity:.3f} studies/s; bottleneck {neck} "
            f"(peak lag {int(overloaded.stage_peak_lag[neck])} records at {overloaded.offered_per_s:.3f}/s)"
        )
        say(f"  CPU at {overloaded.offered_per_s:.3f}/s: {cpu_profile(overloaded)}")
        cost = results["per_frame"] = per_frame(overloaded, decode_s)
        if cost:
            say(
                f"  per frame: {cost['cpu_ms']:.1f} CPU ms = {cost['cpu_over_decode']:.1f}x a raw decode; broker "
                f"{cost['broker_bytes'] / 1000:.1f} kB + stores {cost['store_bytes'] / 1000:.1f} kB = "
                f"{cost['bytes_over_pixels']:.2f}x one frame's pixels"
            )
        node, cluster = scaling_plan(overloaded, 0.0, cores=16), scaling_plan(overloaded, PLAN_FRAMES_PER_S)
        results["plan"] = {"node_16_cores": node, "cluster": cluster}
        if node:
            say(f"  plan, one 16-core node: {plan_line(node)}")
            say(f"  plan, a cluster at {PLAN_FRAMES_PER_S:.0f} frames/s: {plan_line(cluster)}")
        half_rate = (saturation or capacity) / 2
        duration = max(args.duration, args.min_arrivals / half_rate)
        half = await run_step(line, "half-saturation", pool, half_rate, duration, args.drain)
        steps.append(half)
        studies = sum(s.sent for s in steps)
        grown = rss_mb(line.broker_pid) - rss_start
        results["broker_memory"] = {"start_mb": rss_start, "end_mb": rss_start + grown, "studies": studies}
        say(
            f"  the broker's memory: {rss_start:.0f} MB after the first studies, {rss_start + grown:.0f} MB after "
            f"{studies} more ({grown / max(studies, 1):.2f} MB a study)"
        )
    # Capacity with 1 and 2 replicas of each of the two busiest stages (CPU at the overloaded rate), in turn.
    busiest = sorted(STAGES, key=lambda s: -overloaded.cpu_s.get(s, 0.0))[:2]
    results["busiest"], results["two_replicas"] = busiest, {}
    if neck not in busiest:
        busiest.append(neck)
    for stage in busiest:
        async with Line(args, workdir, {stage: 2}) as line:
            again = await run_step(
                line, f"replicas-2x{stage}", pool, overloaded.offered_per_s, overloaded.duration_s, args.drain
            )
        steps.append(again)
        results["two_replicas"][stage] = {"throughput_per_s": again.throughput_per_s, "bottleneck": bottleneck(again)}
        if stage == neck:
            results["bottleneck_with_2_replicas"] = bottleneck(again)
        say(
            f"  with 2 x {stage}: {again.throughput_per_s:.3f} studies/s "
            f"(1 replica: {overloaded.throughput_per_s:.3f}); bottleneck {bottleneck(again)}; CPU {cpu_profile(again)}"
        )
    results["steps"] = [asdict(s) for s in steps]


def reference(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    dirs = sorted(p for p in (workdir / "pool").iterdir() if p.is_dir() and p.name != "truth")
    processes = os.cpu_count() or 1
    loop_s, wall_s = reference_loop_seconds(dirs * args.reference_repeats, ROOT / "models", processes)
    n = len(dirs) * args.reference_repeats
    results["in_process_per_s"] = n / loop_s
    frames = results.get("frames_per_pool_study", 0.0) * n
    decode_ms = results.get("raw_decode_ms_per_frame", 0.0)
    if frames and decode_ms:
        cpu_ms = 1000 * processes * loop_s / frames
        results["in_process_per_frame"] = {"cpu_ms": cpu_ms, "cpu_over_decode": cpu_ms / decode_ms}
        say(f"in-process: {cpu_ms:.1f} CPU ms a frame = {cpu_ms / decode_ms:.1f}x a raw decode")
    results["in_process"] = {"studies": n, "processes": processes, "loop_s": loop_s, "wall_s_with_model_load": wall_s}
    say(
        f"in-process reference: {n} studies in {loop_s:.1f} s over {processes} processes = "
        f"{n / loop_s:.3f} studies/s, about {processes * loop_s / n:.1f} CPU s per study"
    )


def goals(results: dict[str, Any]) -> list[str]:
    lines = []
    streaming = results.get("capacity_per_s")
    ref = results.get("in_process_per_s")
    if streaming and ref:
        ratio = streaming / ref
        results["streaming_over_in_process"] = ratio
        lines.append(f"streaming/in-process ratio: {ratio:.2f}")
        lines.append(f"  goal >= 0.80: {'met' if ratio >= 0.8 else 'missed'} ({streaming:.3f} vs {ref:.3f} studies/s)")
    cost = results.get("per_frame")
    if cost:
        multiple, over = cost["cpu_over_decode"], cost["bytes_over_pixels"]
        lines.append(
            f"whole-line CPU per frame: {multiple:.1f}x a raw decode "
            f"(goal <= 18x: {'met' if multiple <= 18 else 'missed'})"
        )
        lines.append(
            f"broker + store bytes per frame: {over:.2f}x one frame's pixels "
            f"(goal <= 1.2x: {'met' if over <= 1.2 else 'missed'})"
        )
    half = next((s for s in results.get("steps", []) if s["name"] == "half-saturation"), None)
    alone = results.get("single_study_latency_s", {}).get("p50")
    if half and alone and half["latency_s"]:
        p95 = half["latency_s"]["p95"]
        lines.append(
            f"p95 study latency at half saturation {p95:.1f} s vs one study alone {alone:.1f} s: "
            f"{p95 / alone:.2f}x (goal <= 2x: {'met' if p95 <= 2 * alone else 'missed'})"
        )
    return lines


def parse_replicas(values: list[str]) -> dict[str, int]:
    replicas = {}
    for value in values:
        stage, _, count = value.partition("=")
        if stage not in STAGES or not count.isdigit():
            raise SystemExit(f"--replicas {value}: want stage=N with stage one of {', '.join(STAGES)}")
        replicas[stage] = int(count)
    return replicas


async def fixed_rates(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    # A running line reads uploads' videos from its own claim-check store: RHD_BLOB_DIR, as the services do.
    blobs = BlobStore(Settings().blob_dir if args.bootstrap else workdir / "blobs")
    pool = study_pool(workdir, args.pool, args.seed, blobs, Settings().max_message_bytes)
    replicas = parse_replicas(args.replicas)
    steps = []
    async with Line(args, workdir, replicas) as line:
        for rate in args.rates:
            duration = max(args.duration, args.min_arrivals / rate)
            steps.append(await run_step(line, f"rate-{rate:g}", pool, rate, duration, args.drain))
    results["steps"] = [asdict(s) for s in steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", action="store_true", help="find the saturation rate and the bottleneck")
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[],
        help="offered studies/s, one step each (without --search)",
    )
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of arrivals per step (at least)")
    parser.add_argument("--min-arrivals", type=int, default=6, help="a step lasts long enough for this many")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds to wait for a step's last diagnoses")
    parser.add_argument(
        "--factors",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.7, 0.9, 1.1, 1.3],
        help="--search: offered rates as multiples of the burst estimate",
    )
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--alone", type=int, default=3, help="single studies for the baseline latency")
    parser.add_argument("--pool", type=int, default=6)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--reference-repeats", type=int, default=2, help="in-process passes over the pool")
    parser.add_argument("--replicas", action="append", default=[], metavar="STAGE=N")
    parser.add_argument("--bootstrap", help="load the line already running on this broker")
    parser.add_argument(
        "--broker",
        choices=("auto", "kafka", "tansu"),
        default="auto",
        help="the embedded stack's broker: auto (Apache Kafka where `make kafka` has run, else Tansu, which keeps "
        "every record in memory: about 2.7 MB a study with the frame store, 239 MB with the pixels in the records)",
    )
    parser.add_argument("--out", default="var/loadtest", help="JSON and PNG go here")
    args = parser.parse_args(argv)
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    if args.search and args.bootstrap:
        raise SystemExit("--search starts the embedded stack itself (replicas included): leave out --bootstrap")
    if not args.search and not args.rates:
        raise SystemExit("give --rates or --search")
    out = Path(args.out)
    workdir = out / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {
        "cores": os.cpu_count(),
        "synth": asdict(SYNTH),
        "args": vars(args),
        "started": now().ToJsonString(),
    }
    if args.search:
        asyncio.run(search(args, workdir, results))
        reference(args, workdir, results)
    else:
        asyncio.run(fixed_rates(args, workdir, results))
    for line in goals(results):
        say(line)
    (out / "load.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, out / "load.png")
    say(f"wrote {out / 'load.json'} and {out / 'load.png'}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
