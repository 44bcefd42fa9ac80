"""Throughput of each stage service through the real broker: one `rhd serve <stage>` process at a time, in
isolation, on its own embedded broker (Tansu). Prints figures; asserts nothing.

For each of split, inspect, segment, view and features: a fresh broker with every topic; the stage's input
built in-process with the very stage functions the services call and produced to its input topic; then ONE
process of the service (view: and the embedded model server, started and healthy beforehand); its outputs are
consumed until every expected one is there; then SIGTERM once. Which stage limits the line, and how many
replicas each stage needs per split process, follow from the rates.

    .venv/bin/python loadtest/bench_services.py [--workers N] [--frames N] [--uploads N] [--stages a,b]
                                                [--json PATH] [--keep]

Timeline of one stage, from the process start:
  ready     /readyz answers 200: imports done, producer started, consumer group joined (aiokafka's start
            waits for the assignment); view: model server reachable too
  1st in    the first input message picked up: the first handled message seen on /metrics
            (rhd_stage_seconds), less its own duration
  work s    from the first input picked up to the last expected output (record CreateTime): the service's
            steady throughput, without start-up; frames/s is over this window
  total s   from the process start to the last expected output; /s over it includes start-up and join

RHD_* variables of the environment reach the services (e.g. RHD_FETCH_MAX_RECORDS), except those the bench sets:
bootstrap servers, model server, blob and models directories, workers and the HTTP port.
"""

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rhd.deid.ops import deidentify_upload
from rhd.deid.policy import load_policy
from rhd.inspect.service import Inspect
from rhd.labels import VIEW_CLASSES
from rhd.local.broker import EmbeddedBroker, free_port
from rhd.local.publish import upload_from_dir
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import ServiceProcess, stage_seconds, wait_serving
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import Output, schema_headers
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position
from rhd.runtime.topics import (
    FRAMES_DECODED,
    FRAMES_DONE,
    FRAMES_DOPPLER,
    FRAMES_SEGMENTED,
    FRAMES_VIEWED,
    MESSAGE_OF,
    STUDIES_DEIDENTIFIED,
    dlq,
)
from rhd.segment.service import Segment
from rhd.split.service import Split
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
BENCH_STAGES: tuple[str, ...] = ("split", "inspect", "segment", "view", "features")
# stage -> (input topic, the topic it forwards frames to, or None when its only output is frames.done.v1)
TOPICS: dict[str, tuple[str, str | None]] = {
    "split": (STUDIES_DEIDENTIFIED, FRAMES_DECODED),
    "inspect": (FRAMES_DECODED, FRAMES_DOPPLER),
    "segment": (FRAMES_DOPPLER, FRAMES_SEGMENTED),
    "view": (FRAMES_SEGMENTED, FRAMES_VIEWED),
    "features": (FRAMES_VIEWED, None),
}
# Short and quick to generate; ~144 frames a study, most of them colour Doppler.
SYNTH = SynthConfig(videos_per_study=6, duration_s=(1.0, 1.0))
# The view the features input carries: features copies it into its result and does not otherwise read it.
NOWHERE = Position(-1, -1, 0.0)  # the stage functions called directly, not on a record read from Kafka
FIXED_VIEW = pb.ViewPrediction(
    label="a4c",
    probabilities={c: (0.8 if c == "a4c" else 0.05) for c in VIEW_CLASSES},
    model_name="view",
    model_version=1,
)
POLL_S = 0.05
MAX_FETCH_BYTES = 16 * 1024 * 1024

Record = tuple[str, bytes, bytes]  # topic, key, value


def headers_of(topic: str) -> list[tuple[str, bytes]]:
    """The schema header a stage wants on what it reads (the runner writes it on everything it produces)."""
    return schema_headers(MESSAGE_OF[topic]())


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- inputs, built in-process with the stage functions the services call -------------------------------------------


@dataclass
class Inputs:
    records: dict[str, list[Record]] = field(default_factory=dict)  # stage -> its input records
    split_frames: int = 0  # frames split emits for the uploads it is given
    doppler_share: float = 1.0  # share of split's frames that inspect forwards (estimated over every frame built)
    studies: int = 0
    seconds: float = 0.0


POLICY = load_policy()
PROFILE = POLICY.profile("analysis")
BENCH_KEY = bytes(32)  # the bench's own pseudonyms: nothing here leaves the machine
DEID_BUDGET = 900_000


def _read(blobs: BlobStore):
    return lambda ref: ref.inline_data if ref.HasField("inline_data") else blobs.get(ref.blob_uri)


def _records(outputs: list[Output]) -> list[Record]:
    return [(o.topic, o.key.encode(), o.message.SerializeToString()) for o in outputs]


def build_inputs(
    settings: Settings, workdir: Path, stages: list[str], n_frames: int, n_uploads: int, seed: int
) -> Inputs:
    started = time.perf_counter()
    deepest = max(BENCH_STAGES.index(s) for s in stages)
    need_doppler = deepest >= BENCH_STAGES.index("segment")
    blobs = BlobStore(settings.blob_dir)
    split, inspect, segment = Split(), Inspect(), Segment()
    asyncio.run(split.start(settings))  # what the service does at start: open the blob store
    uploads: list[pb.StudyUpload] = []
    frames: list[Output] = []
    doppler: list[Output] = []
    inspected = 0
    batch = max(n_uploads if "split" in stages else 1, math.ceil(n_frames / 100) if deepest else 1)
    inputs = Inputs()
    while True:
        study_dirs = synth_studies(seed, batch, workdir / "studies" / str(seed), SYNTH)
        for study_dir in study_dirs:
            # split reads what deid lets through: the upload de-identified (clean lossless videos, pseudonyms).
            raw = upload_from_dir(study_dir, blobs, settings.max_message_bytes)
            upload = deidentify_upload(raw, _read(blobs), blobs.put, POLICY, PROFILE, BENCH_KEY, DEID_BUDGET).upload
            outputs = split.handle(upload, NOWHERE)
            study_frames = [o for o in outputs if o.topic == FRAMES_DECODED]
            if len(uploads) < n_uploads:
                inputs.split_frames += len(study_frames)
            uploads.append(upload)
            frames += study_frames
            if need_doppler:  # every frame, so that the share is measured over a whole study
                for frame in study_frames:
                    doppler += [o for o in inspect.handle(frame.message, NOWHERE) if o.topic == FRAMES_DOPPLER]
                inspected += len(study_frames)
        enough = len(uploads) >= (n_uploads if "split" in stages else 0)
        enough &= deepest == 0 or len(frames) >= n_frames
        enough &= not need_doppler or len(doppler) >= n_frames
        if enough:
            break
        seed, batch = seed + 1, 2
    inputs.studies = len(uploads)
    inputs.doppler_share = len(doppler) / inspected if inspected else 1.0
    if "split" in stages:
        inputs.records["split"] = [
            (STUDIES_DEIDENTIFIED, u.study_id.encode(), u.SerializeToString()) for u in uploads[:n_uploads]
        ]
    if "inspect" in stages:
        inputs.records["inspect"] = _records(frames[:n_frames])
    doppler = doppler[:n_frames]
    if "segment" in stages:
        inputs.records["segment"] = _records(doppler)
    if deepest >= BENCH_STAGES.index("view"):
        segmented = [o for d in doppler for o in segment.handle(d.message, NOWHERE)]
        if "view" in stages:
            inputs.records["view"] = _records(segmented)
        if "features" in stages:
            inputs.records["features"] = _records(
                [Output(FRAMES_VIEWED, s.key, pb.ViewedFrame(segmented=s.message, view=FIXED_VIEW)) for s in segmented]
            )
    inputs.seconds = time.perf_counter() - started
    return inputs


# -- one stage through the broker ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """The outputs of one stage run, as they come off the broker."""

    stage: str
    expected: dict[str, int]
    counts: Counter[str] = field(default_factory=Counter)
    stamps: list[float] = field(default_factory=list)  # CreateTime (s) of every counted output

    def add(self, record: ConsumerRecord) -> None:
        if record.topic.endswith(".dlq"):
            self.counts["dead_letters"] += 1
            return
        if record.topic == FRAMES_DONE:
            done = pb.FrameDone.FromString(record.value or b"")
            if done.HasField("manifest"):
                kind = "manifests"
            else:
                kind = pb.FrameStatus.Name(done.result.status).removeprefix("FRAME_STATUS_").lower()
        else:
            kind = "forwarded"
        self.counts[kind] += 1
        self.stamps.append(record.timestamp / 1000)

    @property
    def frames(self) -> int:
        """Frames the stage is done with: forwarded, or ended on frames.done.v1 (split: frames emitted)."""
        if self.stage == "split":
            return self.counts["forwarded"]
        return self.counts["forwarded"] + sum(self.counts[k] for k in ("analysed", "skipped", "failed"))

    def done(self) -> bool:
        if self.stage == "split":
            return self.frames >= self.expected["frames"] and self.counts["manifests"] >= self.expected["manifests"]
        return self.frames >= self.expected["frames"]


@dataclass
class Timeline:
    started: float = 0.0  # wall clock
    ready: float | None = None
    first_work: float | None = None


async def watch_service(port: int, stage: str, timeline: Timeline) -> None:
    """Poll /readyz until ready, and /metrics until the first message is handled; both ignore refusals."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while timeline.ready is None or timeline.first_work is None:
            now = time.time()
            try:
                if timeline.ready is None:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            timeline.ready = now
                if timeline.first_work is None:
                    count, seconds = await stage_seconds(http, port, stage)
                    if count:
                        # The first handled message started its own duration earlier.
                        timeline.first_work = now - seconds / count
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(POLL_S)


async def produce(bootstrap: str, settings: Settings, records: list[Record]) -> float:
    started = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=settings.max_message_bytes,
        linger_ms=5,
    )
    await producer.start()
    try:
        pending = [
            await producer.send(topic, value, key=key, headers=headers_of(topic)) for topic, key, value in records
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def output_consumer(bootstrap: str, topics: list[str], partitions: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=MAX_FETCH_BYTES,
        fetch_max_bytes=4 * MAX_FETCH_BYTES,
    )
    await consumer.start()
    consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
    await consumer.seek_to_beginning()
    return consumer


class Bench:
    def __init__(self, settings: Settings, workdir: Path, models_dir: Path, timeout_s: float) -> None:
        self.settings, self.workdir, self.models_dir, self.timeout_s = settings, workdir, models_dir, timeout_s
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def env(self, bootstrap: str, model_port: int, **extra: str) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "RHD_BOOTSTRAP_SERVERS": bootstrap,
                "RHD_MODEL_SERVER": f"127.0.0.1:{model_port}",
                "RHD_BLOB_DIR": str(s.blob_dir.resolve()),
                "RHD_MODELS_DIR": str(self.models_dir.resolve()),
                "RHD_PARTITIONS": str(s.partitions),
                "RHD_WORKERS": str(s.workers),
                "RHD_MAX_MESSAGE_BYTES": str(s.max_message_bytes),
                "RHD_LOG_LEVEL": s.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    async def run_stage(self, stage: str, records: list[Record], expected: dict[str, int]) -> dict[str, Any]:
        input_topic, forward_topic = TOPICS[stage]
        out_topics = [t for t in (forward_topic, FRAMES_DONE, dlq(input_topic)) if t]
        broker = EmbeddedBroker(log_file=self.logs / f"broker-{stage}.log")
        model_port = free_port()
        rhd = [sys.executable, "-m", "rhd.cli"]
        processes: list[ServiceProcess] = []
        consumer: AIOKafkaConsumer | None = None
        watcher: asyncio.Task[None] | None = None
        result: dict[str, Any] = {"stage": stage, "inputs": len(records), "expected": expected}
        try:
            await broker.start(self.settings.partitions)
            bootstrap = broker.bootstrap_servers
            server = None
            if stage == "view":  # loads TensorFlow and the model while the input is produced
                server = ServiceProcess(
                    "model-server",
                    [*rhd, "model-server", "--port", str(model_port)],
                    self.env(bootstrap, model_port),
                    self.logs / "model-server.log",
                )
                server.start()
                processes.append(server)
            consumer = await output_consumer(bootstrap, out_topics, self.settings.partitions)
            result["produce_s"] = await produce(bootstrap, self.settings, records)
            result["input_mb"] = sum(len(v) for _, _, v in records) / 1e6
            if server is not None:
                result["model_server_s"] = await wait_serving(model_port, server, 180.0)
            port = free_port()
            service = ServiceProcess(
                stage,
                [*rhd, "serve", stage],
                self.env(bootstrap, model_port, RHD_HTTP_PORT=str(port)),
                self.logs / f"{stage}.log",
                http_port=port,
            )
            timeline = Timeline(started=time.time())
            service.start()
            processes.append(service)
            watcher = asyncio.create_task(watch_service(port, stage, timeline))
            tally = Tally(stage, expected)
            deadline = time.monotonic() + self.timeout_s
            while not tally.done():
                if not service.alive():
                    raise RuntimeError(
                        f"{stage} exited with code {service.process.returncode}"  # type: ignore
                        f"\n{log_tail(service.log_path)}"
                    )
                if time.monotonic() > deadline:
                    break
                for partition_records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in partition_records:
                        tally.add(record)
            # the metrics poll may trail the outputs by one poll
            for _ in range(20):
                if timeline.first_work is not None and timeline.ready is not None:
                    break
                await asyncio.sleep(POLL_S)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                handled, busy = await stage_seconds(http, port, stage)
            result.update(self.figures(stage, tally, timeline, handled, busy))
            return result
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            return result
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if consumer is not None:
                await consumer.stop()
            for process in reversed(processes):
                process.send_once()  # SIGTERM once: the services shut down gracefully
            codes = {p.name: p.stop() for p in reversed(processes)}
            result["exit_codes"] = codes
            broker.stop()

    def figures(self, stage: str, tally: Tally, t: Timeline, handled: float, busy: float) -> dict[str, Any]:
        last = max(tally.stamps) if tally.stamps else None
        first_out = min(tally.stamps) if tally.stamps else None
        out: dict[str, Any] = {
            "complete": tally.done(),
            "outputs": dict(tally.counts),
            "frames": tally.frames,
            "ready_s": _since(t.ready, t.started),
            "first_in_s": _since(t.first_work, t.started),
            "first_out_s": _since(first_out, t.started),
            "total_s": _since(last, t.started),
            "handled": handled,
            "handle_ms": 1000 * busy / handled if handled else None,
        }
        work = last - t.first_work if last is not None and t.first_work is not None else None
        out["work_s"] = work
        out["frames_per_s"] = tally.frames / work if work else None
        out["frames_per_s_from_start"] = tally.frames / out["total_s"] if out["total_s"] else None
        if stage == "split":
            uploads = tally.counts["manifests"]
            out["uploads_per_s"] = uploads / work if work else None
        return out


def _since(stamp: float | None, origin: float) -> float | None:
    return None if stamp is None else stamp - origin


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the report --------------------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def describe_outputs(r: dict[str, Any]) -> str:
    o = r.get("outputs", {})
    if r["stage"] == "split":
        text = f"{o.get('forwarded', 0)} frames + {o.get('manifests', 0)} manifests"
    else:
        parts = [f"{o['forwarded']} {TOPICS[r['stage']][1].split('.')[1]}"] if o.get("forwarded") else []  # type: ignore
        parts += [f"{o[k]} {k}" for k in ("analysed", "skipped", "failed") if o.get(k)]
        text = " + ".join(parts) or "0"
    if o.get("dead_letters"):
        text += f" ({o['dead_letters']} dead letters)"
    return text


def report(results: list[dict[str, Any]], settings: Settings, inputs: Inputs) -> str:
    cores = os.cpu_count()
    lines = [
        f"service throughput through the embedded broker (1 process each, RHD_WORKERS={settings.workers}, "
        f"{cores} cores, {settings.partitions} partitions)",
        f"  {'stage':<9}{'input':>14}    {'outputs':<34}{'ready':>6}{'1st in':>7}{'work s':>8}{'frames/s':>10}"
        f"{'total s':>9}{'incl. start':>12}{'handle ms':>10}",
    ]
    for r in results:
        unit = "uploads" if r["stage"] == "split" else "frames"
        head = f"  {r['stage']:<9}{r['inputs']:>6} {unit:<7} -> "
        if "frames" not in r:
            lines.append(head + f"FAILED: {r.get('error', '?')}")
            continue
        line = (
            f"{head}{describe_outputs(r):<34}{_f(r['ready_s'], '6.1f')}{_f(r['first_in_s'], '7.1f')}"
            f"{_f(r['work_s'], '8.2f')}{_f(r['frames_per_s'], '10.0f')}{_f(r['total_s'], '9.1f')}"
            f"{_f(r['frames_per_s_from_start'], '12.0f')}{_f(r['handle_ms'], '10.1f')}"
        )
        if r["stage"] == "split":
            line += f"   ({_f(r['uploads_per_s'], '.2f')} uploads/s, {_f(r['frames_per_s'], '.0f')} frames/s)"
        if not r["complete"]:
            line += f"   INCOMPLETE: expected {r['expected']}"
        if r.get("error"):
            line += f"   ERROR: {r['error']}"
        lines.append(line)
    lines.append(
        "  ready: start to /readyz (imports, group join); 1st in: start to the first input picked up; "
        "work s: first input to last output, frames/s over it; incl. start: over total s"
    )
    lines += capacity(results, inputs)
    return "\n".join(lines)


def capacity(results: list[dict[str, Any]], inputs: Inputs) -> list[str]:
    """Each stage's rate in frames of split output per second, and replicas to keep up with one split process."""
    rates = {r["stage"]: r["frames_per_s"] for r in results if r.get("frames_per_s")}
    if not rates:
        return []
    share = {s: 1.0 if s in ("split", "inspect") else inputs.doppler_share for s in BENCH_STAGES}
    line_rate = {s: rate / share[s] for s, rate in rates.items()}
    lines = [
        f"capacity of one process, in split frames/s (segment, view and features see the "
        f"{100 * inputs.doppler_share:.0f}% colour Doppler share of them):"
    ]
    split_rate = rates.get("split")
    for stage, rate in line_rate.items():
        text = f"  {stage:<9}{rate:8.0f} frames/s"
        if split_rate and stage != "split":
            text += f"   {math.ceil(split_rate / rate - 1e-9)} replica(s) per split process"
        lines.append(text)
    slowest = min(line_rate, key=line_rate.__getitem__)
    lines.append(
        f"limits the line: {slowest} ({line_rate[slowest]:.0f} split frames/s per process; replicas need "
        "cores: each process uses up to RHD_WORKERS of them)"
    )
    return lines


# -- main ---------------------------------------------------------------------------------------------------------


async def run_benches(bench: Bench, inputs: Inputs, stages: list[str]) -> list[dict[str, Any]]:
    results = []
    for stage in stages:
        records = inputs.records[stage]
        if stage == "split":
            expected = {"frames": inputs.split_frames, "manifests": len(records)}
        else:
            expected = {"frames": len(records)}
        say(f"[{stage}] {len(records)} input records, expecting {expected}")
        result = await bench.run_stage(stage, records, expected)
        if result.get("error"):
            say(f"[{stage}] {result['error']}")
        else:
            say(
                f"[{stage}] {describe_outputs(result)} in {_f(result['work_s'], '.2f')} s of work, "
                f"{_f(result['total_s'], '.1f')} s from start"
            )
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    base = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=base.workers, help="RHD_WORKERS of each service")
    parser.add_argument("--frames", type=int, default=400, help="input frames of inspect, segment, view, features")
    parser.add_argument("--uploads", type=int, default=6, help="input uploads of split (6 videos of 1 s each)")
    parser.add_argument("--stages", default=",".join(BENCH_STAGES), help="comma-separated subset, in line order")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a stage may take from its start")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (service logs) and say where")
    args = parser.parse_args(argv)
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(BENCH_STAGES)
    if unknown or not stages:
        parser.error(f"--stages: choose among {','.join(BENCH_STAGES)}")
    stages = [s for s in BENCH_STAGES if s in stages]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="rhd-bench-services-"))
    models_dir = base.models_dir if "RHD_MODELS_DIR" in os.environ else ROOT / "models"
    settings = base.model_copy(
        update={"workers": args.workers, "blob_dir": workdir / "blobs", "models_dir": models_dir}
    )
    try:
        say(f"building inputs in-process ({args.uploads} uploads, {args.frames} frames) under {workdir}")
        inputs = build_inputs(settings, workdir, stages, args.frames, args.uploads, args.seed)
        say(f"  {inputs.studies} studies, {100 * inputs.doppler_share:.0f}% colour Doppler, {inputs.seconds:.1f} s")
        bench = Bench(settings, workdir, models_dir, args.timeout)
        results = asyncio.run(run_benches(bench, inputs, stages))
        total = time.perf_counter() - started
        print(report(results, settings, inputs))
        print(f"total run {total:.0f} s (inputs built in {inputs.seconds:.0f} s)")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "workers": settings.workers,
                        "cores": os.cpu_count(),
                        "partitions": settings.partitions,
                        "fetch_max_records": settings.fetch_max_records,
                        "frames": args.frames,
                        "uploads": args.uploads,
                        "doppler_share": inputs.doppler_share,
                        "total_s": total,
                        "stages": results,
                    },
                    indent=2,
                )
            )
        return 0 if all(r.get("complete") and not r.get("error") for r in results) else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if args.keep:
            say(f"kept {workdir} (logs in {workdir / 'logs'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
