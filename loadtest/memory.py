"""Peak resident memory of every service (VmHWM) on the largest upload the input bounds let through, and a bomb
refused beside it (figures for the record, not a test). Target: every service <= 2 GiB.

    .venv/bin/python loadtest/memory.py [--videos 15 --seconds 3 --fps 60] [--out DIR]

The largest allowed upload: 15 videos of 3 s at 60 frames/s (2,700 frames at 240 x 320). The bomb: a video of more
frames than RHD_MAX_VIDEO_FRAMES, a small file. Both are published to the embedded stack; the script waits for both
answers, then reads /proc/<pid>/status of each service process.
"""

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rhd.local.publish import publish_uploads, raw_keyring, upload_from_dir
from rhd.local.signals import stop_on_sigterm
from rhd.local.stack import EmbeddedStack
from rhd.runtime.blobs import BlobStore
from rhd.runtime.settings import Settings
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.watch.figures import follow

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def peak_bytes(pid: int) -> int:
    """VmHWM (the process's peak resident set) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bomb(path: Path, frames: int) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 60.0, (320, 240))
    for _ in range(frames):
        writer.write(np.zeros((240, 320, 3), np.uint8))
    writer.release()
    return path.read_bytes()


async def run(args: argparse.Namespace, workdir: Path) -> dict:
    config = SynthConfig(videos_per_study=args.videos, duration_s=(args.seconds, args.seconds), fps=args.fps)
    (largest,) = synth_studies(args.seed, 1, workdir / "studies", config)
    (small,) = synth_studies(args.seed + 1, 1, workdir / "small", SynthConfig(videos_per_study=1, duration_s=(1, 1)))
    settings = Settings(blob_dir=workdir / "blobs", models_dir=ROOT / "models", study_deadline_s=args.deadline)
    stack = EmbeddedStack(workdir / "stack", settings)
    try:
        live = await stack.start()
        blobs, seal = BlobStore(live.blob_dir), raw_keyring(live).seal
        big = upload_from_dir(largest, blobs, live.max_message_bytes, seal=seal)
        boom = upload_from_dir(small, blobs, live.max_message_bytes, seal=seal)
        data = bomb(workdir / "bomb.mp4", live.max_video_frames * 3)
        boom.videos[0].ClearField("content")
        boom.videos[0].blob_uri = blobs.put(seal(data))
        boom.videos[0].sha256 = hashlib.sha256(data).hexdigest()
        started = time.monotonic()
        await publish_uploads(live, [big, boom])
        names = [largest.name, small.name]
        progress = await follow(live, lambda p: all(n in p.diagnoses for n in names), args.timeout, settle_s=5.0)
        took = time.monotonic() - started
        peaks = {f"{s.name}:{s.http_port}": peak_bytes(s.process.pid) for s in stack.services if s.process}
    finally:
        stack.stop()
    frames = progress.expected_frames.get(largest.name, 0)
    answers = {n: [(d.completeness, d.reason[:120]) for d in progress.diagnoses.get(n, [])] for n in names}
    return {
        "upload": {"videos": args.videos, "seconds": args.seconds, "fps": args.fps, "frames": frames},
        "bomb_frames": live.max_video_frames * 3,
        "bomb_bytes": len(data),
        "seconds": round(took, 1),
        "answers": answers,
        "peak_bytes": peaks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--fps", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=2727)
    parser.add_argument("--out", default="loadtest/results")
    args = parser.parse_args()
    stop_on_sigterm()  # a SIGTERM stops the services this started, as Ctrl-C does
    result = asyncio.run(run(args, Path(tempfile.mkdtemp(prefix="rhd-memory-"))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"largest allowed upload: {result['upload']['frames']} frames answered with the bomb "
        f"({result['bomb_bytes']} bytes, {result['bomb_frames']} frames) in {result['seconds']} s"
    )
    for name, answers in result["answers"].items():
        print(f"  {name}: {answers}")
    worst = max(result["peak_bytes"].values())
    for name, peak in sorted(result["peak_bytes"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} peak resident {peak / GIB:6.2f} GiB")
    print(f"{'PASS' if worst <= 2 * GIB else 'FAIL'}: largest peak {worst / GIB:.2f} GiB (target <= 2 GiB)")
    return 0 if worst <= 2 * GIB else 1


if __name__ == "__main__":
    sys.exit(main())
