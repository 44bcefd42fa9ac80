"""Soak: a long run of small studies through the whole line (figures for the record, not a test). Every service's
resident memory is sampled from /proc throughout and plotted; after warm-up it must stay flat. Prints, and writes
to soak.json and soak.png: studies published, diagnosed once, diagnosed twice, lost, incomplete; each service's
memory at the end of warm-up and at the end, and its growth per 1,000 studies; the broker's memory per study.
Exits 1 if a study was lost or diagnosed twice.

    .venv/bin/python loadtest/soak.py [--studies 1000] [--rate 0.6] [--broker kafka] [--retention-min 10]
                                      [--out docs/loadtest]

On Apache Kafka (the default here; `make kafka`) records leave the broker after --retention-min minutes, so what
it keeps is bounded by time, not by how long it has run; on Tansu (--broker tansu) every record stays in memory
until it stops, and the broker's memory per study shows what that costs.

Arrivals are open loop at --rate studies/s, each a study of a small generated pool published again under fresh
study and video ids (loadtest/load.py's arrivals).
"""

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from load import Diagnoses, arrival, say, study_pool
from rhd.deid.ops import study_pseudonym
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import EmbeddedStack
from rhd.runtime.blobs import BlobStore
from rhd.runtime.kafka import producer
from rhd.runtime.records import now
from rhd.runtime.secrets import RAW_KEYRING, load_keyring, load_pseudonym_key, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.topics import STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig
from rhd.v1 import rhd_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
# Small studies: two videos of 1 s (about 48 frames), so a thousand pass in well under an hour on 2 cores.
SMALL = SynthConfig(videos_per_study=2, duration_s=(1.0, 1.0))
MIB = 1024 * 1024


def resident(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a process in MiB, from /proc; None once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return None
    kib = lambda key: int(fields[key].split()[0]) / 1024  # noqa: E731
    return kib("VmRSS"), kib("VmHWM")


def processes(stack: EmbeddedStack) -> dict[str, int]:
    named = {"broker": stack.broker.process.pid} if stack.broker.process else {}
    for service in stack.services:
        if service.process is not None:
            named[service.name] = service.process.pid
    return named


class Sampler:
    """Every service's resident memory every `every_s` seconds, beside the studies diagnosed so far."""

    def __init__(self, stack: EmbeddedStack, diagnoses: Diagnoses, every_s: float) -> None:
        self.stack, self.diagnoses, self.every_s = stack, diagnoses, every_s
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.peak: dict[str, float] = {}
        self.running = True

    def take(self) -> None:
        rss = {}
        for name, pid in processes(self.stack).items():
            got = resident(pid)
            if got is not None:
                rss[name] = round(got[0], 1)
                self.peak[name] = max(self.peak.get(name, 0.0), got[1])
        self.samples.append({"t_s": round(time.monotonic() - self.t0, 1), "diagnosed": len(self.diagnoses.seen), **rss})

    async def run(self) -> None:
        while self.running:
            self.take()
            await asyncio.sleep(self.every_s)


def growth(samples: list[dict[str, Any]], warm_up: int) -> dict[str, dict[str, float]]:
    """Per process, after warm-up (the first `warm_up` studies diagnosed): resident MiB then (median of the first
    tenth of the remaining samples) and at the end (median of the last tenth), and the least-squares slope of
    resident memory against studies diagnosed, as MiB per 1,000 studies."""
    after = [s for s in samples if s["diagnosed"] >= warm_up]
    names = sorted({k for s in after for k in s} - {"t_s", "diagnosed"})
    out = {}
    tenth = max(1, len(after) // 10)
    for name in names:
        points = [(s["diagnosed"], s[name]) for s in after if name in s]
        if len(points) < 3:
            continue
        x, y = np.array(points, dtype=float).T
        slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
        out[name] = {
            "after_warm_up_mib": float(np.median(y[:tenth])),
            "end_mib": float(np.median(y[-tenth:])),
            "mib_per_1000_studies": slope * 1000,
        }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    names = sorted({k for s in samples for k in s} - {"t_s", "diagnosed"})
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name in names:
        points = [(s["diagnosed"], s[name]) for s in samples if name in s]
        x, y = zip(*points, strict=True)
        ax.plot(x, y, label=name, linewidth=1.8 if name == "broker" else 1.0)
    ax.axvline(results["warm_up_studies"], color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("studies diagnosed")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(
        f"soak on {results['broker']}: {results['published']} studies, {results['diagnosed_once']} diagnosed once, "
        f"{results['lost']} lost, {results['duplicates']} twice"
    )
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = Settings(
        broker=args.broker,
        kafka_retention_ms=int(args.retention_min * 60_000),
        blob_dir=workdir / "blobs",
        models_dir=ROOT / "models",
        secrets_dir=workdir / "secrets",
        study_deadline_s=args.deadline,
    )
    pool = study_pool(workdir, args.pool, args.seed, BlobStore(base.blob_dir), base.max_message_bytes, SMALL)
    stack = EmbeddedStack(workdir / "stack", base)
    results: dict[str, Any] = {
        "broker": args.broker,
        "retention_min": args.retention_min if args.broker == "kafka" else None,
        "synth": asdict(SMALL),
        "args": {k: v for k, v in vars(args).items() if k != "out"},  # where it was written is no figure
        "started": now().ToJsonString(),
    }
    try:
        live = await stack.start()
        diagnoses = Diagnoses(live)
        await diagnoses.start()
        sampler = Sampler(stack, diagnoses, args.sample_s)
        sampling = asyncio.create_task(sampler.run())
        writer = producer(live, "rhd-soak")
        await writer.start()
        raw = load_keyring(live.secrets_dir / RAW_KEYRING)
        pseudonym_key = load_pseudonym_key(live.secrets_dir)
        ids: list[str] = []
        t0 = time.time() + 0.5
        try:
            for i in range(args.studies):
                due = t0 + i / args.rate
                await asyncio.sleep(max(0.0, due - time.time()))
                upload = arrival(pool[i % len(pool)], f"soak-{i}", due)
                ids.append(study_pseudonym(pseudonym_key, upload.hospital_id, upload.study_id))
                key, value, headers = sealed_upload(upload, raw)
                await writer.send(STUDIES_UPLOADED, value, key=key, headers=headers)
                if (i + 1) % 100 == 0:
                    say(f"  {i + 1} published, {len(diagnoses.seen)} diagnosed, {time.time() - t0:.0f} s")
        finally:
            await writer.stop()
        await diagnoses.wait_for(ids, args.drain)
        sampler.take()
        sampler.running = False
        await sampling
        await diagnoses.stop()
        seen = [diagnoses.seen[i] for i in ids if i in diagnoses.seen]
        results.update(
            published=len(ids),
            diagnosed_once=len(seen),
            duplicates=diagnoses.duplicates,
            lost=len(ids) - len(seen),
            incomplete=sum(1 for _, _, c in seen if c != pb.COMPLETENESS_COMPLETE),
            seconds=round(time.time() - t0, 1),
            alive_at_end={s.name: s.alive() for s in stack.services},
            broker_alive_at_end=stack.broker.process is not None and stack.broker.process.poll() is None,
            warm_up_studies=args.warm_up,
            peak_resident_mib={k: round(v, 1) for k, v in sampler.peak.items()},
            memory=growth(sampler.samples, args.warm_up),
            samples=sampler.samples,
        )
        if args.broker == "kafka":
            results["broker_disk_mib"] = round(
                sum(f.stat().st_size for f in (stack.workdir / "kafka").rglob("*") if f.is_file()) / MIB, 1
            )
    finally:
        stack.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.6, help="offered studies/s (open loop)")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--retention-min", type=float, default=10.0, help="Apache Kafka's log.retention.ms, minutes")
    parser.add_argument("--warm-up", type=int, default=100, help="studies diagnosed before memory must stay flat")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=300.0, help="RHD_STUDY_DEADLINE_S")
    parser.add_argument("--drain", type=float, default=600.0, help="seconds to wait for the last diagnoses")
    parser.add_argument("--pool", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5151)
    parser.add_argument("--out", default="var/loadtest")
    parser.add_argument("--name", default="soak", help="the JSON and PNG are <name>.json and <name>.png")
    args = parser.parse_args(argv)
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    out = Path(args.out)
    workdir = Path(args.out) / f"{args.name}-work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    say(
        f"soak: {args.studies} studies of {SMALL.videos_per_study} x {SMALL.duration_s[0]:g} s videos "
        f"at {args.rate}/s on {args.broker}"
    )
    results = asyncio.run(soak(args, workdir))
    say(
        f"published {results['published']}, diagnosed once {results['diagnosed_once']}, twice {results['duplicates']}, "
        f"lost {results['lost']}, incomplete {results['incomplete']}, in {results['seconds']:.0f} s"
    )
    for name, m in sorted(results["memory"].items()):
        say(
            f"  {name:<13} {m['after_warm_up_mib']:7.0f} MiB after warm-up, {m['end_mib']:7.0f} at the end, "
            f"{m['mib_per_1000_studies']:+8.1f} MiB per 1,000 studies; "
            f"peak {results['peak_resident_mib'].get(name, 0):.0f}"
        )
    broker = results["memory"].get("broker")
    if broker:
        say(
            f"  broker memory per study: {broker['mib_per_1000_studies']:.3f} MiB per 1,000 = "
            f"{broker['mib_per_1000_studies'] / 1000 * 1024:.1f} KiB per study"
        )
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, out / f"{args.name}.png")
    say(f"wrote {out / (args.name + '.json')} and {out / (args.name + '.png')}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results["lost"] == 0 and results["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
