"""Chaos on the real embedded broker (figures for the record, not a test): every stage a separate process, killed
with SIGKILL mid-stream and started again; prints, per fault, the studies published, diagnosed once, diagnosed twice
and lost, and the seconds until the killed service was ready again. Exits 1 if a study was lost or diagnosed twice.

    .venv/bin/python loadtest/chaos.py [--studies-per-fault 2] [--pairs] [--model-server-down 120] [--out DIR]

Faults: each stage in turn; with --pairs, two stages at once (split with assemble, view with diagnose, deid with
features); with --model-server-down S, the model server killed for S seconds (frames wait for it, up to
RHD_MODEL_RETRY_FOR_S) then started again; with --assemble-replicas N (>= 2), one of N assemble replicas killed and
started again (two rebalances during load), and the same with the broker paused (SIGSTOP) for 10 s while that
replica starts and reads its output back (each try of the read has 5 s); with --backlog, `features` paused
(SIGSTOP: its group takes its partitions away) past the study deadline, so a backlog outlives its studies, then let
go; with --oversized, records too large for a message sent to the raw topic and to a frame topic among the studies
(their dead letters would be too large too: the originals go to the blob store); with --broker kafka, the line on
Apache Kafka instead of Tansu, and --broker-kill there: the broker SIGKILLed mid-stream and started again on its
data directory.
"""

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import MODEL_SERVER_JOB, EmbeddedStack, ServiceProcess, wait_serving
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import schema_headers
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DECODED, STAGES, STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import follow

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("split", "assemble"), ("view", "diagnose"), ("deid", "features"))


async def ready_again(service: ServiceProcess, timeout_s: float = 120.0) -> float:
    """Seconds until the restarted service answers /readyz 200 (the model server: its gRPC health SERVING)."""
    started = time.monotonic()
    if service.name == MODEL_SERVER_JOB:
        port = int(service.argv[service.argv.index("--port") + 1])
        return await wait_serving(port, service, timeout_s)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() - started < timeout_s:
            try:
                async with http.get(f"http://127.0.0.1:{service.http_port}/readyz") as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{service.name} not ready {timeout_s:.0f} s after its restart")


BROKER_PAUSE_S = 10.0
BACKLOG_STAGE = "features"
OVERSIZED_BYTES = 1_500_000  # over RHD_MAX_MESSAGE_BYTES (1 MB), under what a consumer fetches (16 MiB)


async def oversized(live: Settings) -> None:
    """A foreign producer's records too large for a message: an upload-sized one to the raw topic, and one written
    as a frame. Each stage must dead-letter it (the original moved to the blob store) and go on."""
    rogue = AIOKafkaProducer(bootstrap_servers=live.bootstrap_servers, max_request_size=4 * OVERSIZED_BYTES)
    await rogue.start()
    try:
        await rogue.send_and_wait(STUDIES_UPLOADED, b"\x00" * OVERSIZED_BYTES, key=b"chaos-oversized-upload")
        frame = b"\x12" + b"\x00" * OVERSIZED_BYTES
        await rogue.send_and_wait(
            FRAMES_DECODED, frame, key=b"chaos-oversized-frame", headers=schema_headers(pb.Frame())
        )
    finally:
        await rogue.stop()


async def fault(
    stack: EmbeddedStack, live: Settings, victims: list[str], studies: list[Path], kill_after_s: float, down_s: float
) -> float:
    """Publish the studies, SIGKILL the victims once their frames flow, start them again; the slowest recovery.
    A victim named `assemble#1` is that replica only; `+broker-pause` pauses the broker while the victims start;
    `+broker-kill` kills the broker itself and starts it again; `+backlog` pauses the backlog stage for down_s;
    `+oversized` sends records too large for a message."""
    blobs, seal = BlobStore(live.blob_dir), raw_keyring(live).seal
    await publish_uploads(live, [upload_from_dir(d, blobs, live.max_message_bytes, seal=seal) for d in studies])
    if "+oversized" in victims:
        await oversized(live)
    await asyncio.sleep(kill_after_s)
    if "+broker-kill" in victims:
        started = time.monotonic()
        stack.broker.process.kill()  # type: ignore[union-attr]
        stack.broker.process.wait()  # type: ignore[union-attr]
        await asyncio.sleep(down_s)
        await stack.broker.start(live.partitions)  # the same port and data directory
        return time.monotonic() - started - down_s
    if "+backlog" in victims:
        paused = [s for s in stack.services if s.name == BACKLOG_STAGE]
        for service in paused:
            service.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        await asyncio.sleep(down_s)
        for service in paused:
            service.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        return max([await ready_again(s) for s in paused], default=0.0)
    services = []
    for victim in victims:
        if victim.startswith("+"):
            continue
        name, _, replica = victim.partition("#")
        matching = [s for s in stack.services if s.name == name]
        services += [matching[int(replica)]] if replica else matching
    for service in services:
        service.stop(signal.SIGKILL)  # no goodbye: no commit, no graceful drain
    await asyncio.sleep(down_s)
    pause = "+broker-pause" in victims and stack.broker.process is not None
    if pause:
        stack.broker.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    for service in services:
        service.start()
    if pause:
        await asyncio.sleep(BROKER_PAUSE_S)
        stack.broker.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    return max([await ready_again(s) for s in services], default=0.0)


async def run(args: argparse.Namespace, workdir: Path) -> dict:
    faults: list[tuple[str, list[str], float]] = [(stage, [stage], 0.5) for stage in STAGES]
    if args.pairs:
        faults += [(" + ".join(pair), list(pair), 0.5) for pair in PAIRS]
    if args.model_server_down:
        faults.append((f"model server down {args.model_server_down:g} s", [MODEL_SERVER_JOB], args.model_server_down))
    if args.assemble_replicas >= 2:
        faults.append((f"1 of {args.assemble_replicas} assemble replicas", ["assemble#1"], 2.0))
        faults.append(("assemble replica, broker paused", ["assemble#1", "+broker-pause"], 2.0))
    if args.oversized:
        faults.append(("dead letters too large", ["+oversized"], 0.0))
    if args.broker_kill:
        if args.broker != "kafka":
            raise SystemExit("--broker-kill needs --broker kafka: Tansu keeps its records in memory only")
        faults.append(("broker SIGKILLed", ["+broker-kill"], 5.0))
    if args.backlog:
        faults.append((f"{BACKLOG_STAGE} paused past the deadline", ["+backlog"], args.deadline + 20.0))
    config = SynthConfig(videos_per_study=4, duration_s=(1.0, 1.0))
    studies = synth_studies(args.seed, args.studies_per_fault * len(faults), workdir / "studies", config)
    settings = Settings(
        broker=args.broker,
        blob_dir=workdir / "blobs",
        models_dir=ROOT / "models",
        study_deadline_s=args.deadline,
        recovery_read_timeout_s=5.0,
    )
    replicas = {"assemble": args.assemble_replicas} if args.assemble_replicas >= 2 else {}
    stack = EmbeddedStack(workdir / "stack", settings, replicas)
    rows = []
    try:
        live = await stack.start()
        for i, (name, victims, down_s) in enumerate(faults):
            batch = studies[i * args.studies_per_fault : (i + 1) * args.studies_per_fault]
            recovery = await fault(stack, live, victims, batch, args.kill_after, down_s)
            rows.append({"fault": name, "studies": [d.name for d in batch], "recovery_s": round(recovery, 1)})
            print(f"{name}: killed, ready again in {recovery:.1f} s", flush=True)
        names = [d.name for d in studies]
        progress = await follow(live, lambda p: all(n in p.diagnoses for n in names), args.timeout, settle_s=15.0)
    finally:
        stack.stop()
    counts = Counter({name: len(progress.diagnoses.get(name, [])) for name in (d.name for d in studies)})
    for row in rows:
        row["diagnosed_once"] = sum(counts[s] == 1 for s in row["studies"])
        row["diagnosed_twice"] = sum(counts[s] > 1 for s in row["studies"])
        row["lost"] = sum(counts[s] == 0 for s in row["studies"])
        row["complete"] = sum(
            1 for s in row["studies"] for d in progress.diagnoses.get(s, [])[:1] if d.completeness == 1
        )
    moved = [d for d in progress.dead_letters if d.WhichOneof("original") == "original_blob_uri"]
    for row in rows:
        if row["fault"] == "dead letters too large":
            row["dead_letters_moved_to_blobs"] = sorted({f"{d.stage}:{d.source_topic}" for d in moved})
    return {
        "broker": args.broker,
        "faults": rows,
        "deadline_s": args.deadline,
        "studies_per_fault": args.studies_per_fault,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies-per-fault", type=int, default=2)
    parser.add_argument("--pairs", action="store_true", help="also two stages at once")
    parser.add_argument("--model-server-down", type=float, default=0.0, help="seconds the model server stays down")
    parser.add_argument("--assemble-replicas", type=int, default=1, help=">= 2: also kill one replica, then pause")
    parser.add_argument("--backlog", action="store_true", help=f"also pause {BACKLOG_STAGE} past the deadline")
    parser.add_argument("--oversized", action="store_true", help="also send records too large for a message")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu", help="the broker of the stack")
    parser.add_argument("--broker-kill", action="store_true", help="(kafka) also SIGKILL the broker and restart it")
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds after publishing that the kill comes")
    parser.add_argument("--deadline", type=float, default=300.0, help="RHD_STUDY_DEADLINE_S of the stack")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1818)
    parser.add_argument("--out", default="loadtest/results")
    args = parser.parse_args()
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    result = asyncio.run(run(args, Path(tempfile.mkdtemp(prefix="rhd-chaos-"))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"chaos-{args.broker}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'fault':<28} {'studies':>7} {'once':>5} {'twice':>6} {'lost':>5} {'COMPLETE':>9} {'ready again':>12}")
    for row in result["faults"]:
        print(
            f"{row['fault']:<28} {len(row['studies']):>7} {row['diagnosed_once']:>5} {row['diagnosed_twice']:>6} "
            f"{row['lost']:>5} {row['complete']:>9} {row['recovery_s']:>10.1f} s"
        )
    for row in result["faults"]:
        if "dead_letters_moved_to_blobs" in row:
            print(f"dead letters whose original went to the blob store: {row['dead_letters_moved_to_blobs']}")
    bad = sum(r["lost"] + r["diagnosed_twice"] for r in result["faults"])
    print(f"\n{'PASS' if not bad else 'FAIL'}: {bad} studies lost or diagnosed twice")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
