"""Throughput of the view model: bare Keras in-process, then served through the TensorFlow Serving gRPC API by the
embedded model server, one frame per request and micro-batched. Prints figures; asserts nothing.

    .venv/bin/python loadtest/bench_view.py [--frames N] [--batches 1,64,512] [--only-bare] [--json PATH]

Rows, all over the same generated frames (uint8 240 x 320 x 3, as split decodes them), in one run:
  bare Keras, batch B   the model's .keras file, predict_on_batch in-process, B frames a call (on a GPU when Keras
                        has one: the same code runs on the TensorFlow, JAX or PyTorch backend, KERAS_BACKEND)
  served, batch 1       `rhd model-server` (no server batching); one frame a Predict, one request at a time
  served, micro-batched the view service's client (`ModelClient`): --in-flight frames asked for at once, the client
                        packs up to RHD_MODEL_MAX_BATCH of them into each Predict
  served, server batch  one frame a Predict, --in-flight requests at once; the server merges them
                        (compose/tfserving/batching_parameters.txt, as TensorFlow Serving's --enable_batching)
Then the ratio of micro-batched served throughput to bare Keras at the same batch size.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCHING_FILE = ROOT / "compose" / "tfserving" / "batching_parameters.txt"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def generated_frames(n: int, workdir: Path) -> np.ndarray:
    from rhd.imaging.video import decode_video
    from rhd.synth.generator import SynthConfig, load_truth, synth_studies

    frames: list[np.ndarray] = []
    seed = 5
    while len(frames) < n:
        for study in synth_studies(seed, 1, workdir / str(seed), SynthConfig(videos_per_study=6, duration_s=(1, 1))):
            for video in load_truth(study)["videos"]:
                if video["mode"] == "cw":
                    continue  # spectral traces never reach the view model
                frames += decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
        seed += 1
    return np.stack(frames[:n])


def bare_keras(model_path: Path, frames: np.ndarray, batch: int, min_s: float = 3.0) -> dict[str, Any]:
    """Frames/s of model(x) in-process, after one warm-up call; at least min_s seconds and every frame once."""
    import keras
    import rhd.view.model  # noqa: F401 - registers the custom layers the .keras file names

    model = keras.saving.load_model(model_path)
    x = frames[:batch] if len(frames) >= batch else np.resize(frames, (batch, *frames.shape[1:]))
    model.predict_on_batch(x)  # warm-up: tracing, allocation
    done, started, offset = 0, time.perf_counter(), 0
    while done < len(frames) or time.perf_counter() - started < min_s:
        chunk = np.take(frames, range(offset, offset + batch), axis=0, mode="wrap")
        model.predict_on_batch(chunk)
        done, offset = done + batch, offset + batch
    seconds = time.perf_counter() - started
    return {"batch": batch, "frames": done, "seconds": seconds, "frames_per_s": done / seconds}


async def served_one_at_a_time(target: str, frames: np.ndarray) -> dict[str, Any]:
    from rhd.runtime.model_client import ModelClient

    client = ModelClient(target, "view", max_batch=1, max_wait_ms=0)
    try:
        await client.predict(frames[0])  # warm-up
        latencies = []
        started = time.perf_counter()
        for frame in frames:
            t0 = time.perf_counter()
            await client.predict(frame)
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return {
        "frames": len(frames),
        "seconds": seconds,
        "frames_per_s": len(frames) / seconds,
        "latency_ms_p50": 1000 * statistics.median(latencies),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
    }


async def served_concurrently(
    target: str, frames: np.ndarray, max_batch: int, max_wait_ms: float, in_flight: int
) -> dict[str, Any]:
    """Every frame asked for by its own caller, at most in_flight at once, as the view service's messages do."""
    from rhd.runtime.model_client import ModelClient

    client = ModelClient(target, "view", max_batch=max_batch, max_wait_ms=max_wait_ms)
    limit = asyncio.Semaphore(in_flight)

    async def one(frame: np.ndarray) -> None:
        async with limit:
            await client.predict(frame)

    try:
        await asyncio.gather(*(one(f) for f in frames[:max_batch]))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one(f) for f in frames))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return {
        "frames": len(frames),
        "seconds": seconds,
        "frames_per_s": len(frames) / seconds,
        "client_max_batch": max_batch,
        "in_flight": in_flight,
    }


async def with_model_server(models_dir: Path, logs: Path, extra: list[str], work):
    from rhd.local.broker import free_port
    from rhd.local.stack import ServiceProcess, wait_serving

    port = free_port()
    env = {**os.environ, "RHD_MODELS_DIR": str(models_dir), "PYTHONUNBUFFERED": "1"}
    server = ServiceProcess(
        "model-server",
        [sys.executable, "-m", "rhd.cli", "model-server", "--port", str(port), *extra],
        env,
        logs / f"model-server-{len(extra)}.log",
    )
    server.start()
    try:
        await wait_serving(port, server, 180.0)
        return await work(f"127.0.0.1:{port}")
    finally:
        server.stop()


def device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow, {len(gpus)} GPU(s)" if gpus else f"tensorflow, CPU ({os.cpu_count()} cores)"
    return f"{backend}, default device"


async def served_rows(
    models_dir: Path, frames: np.ndarray, logs: Path, max_batch: int, in_flight: int
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    rows["batch 1"] = await with_model_server(models_dir, logs, [], lambda target: served_one_at_a_time(target, frames))
    rows["micro-batched"] = await with_model_server(
        models_dir, logs, [], lambda target: served_concurrently(target, frames, max_batch, 5.0, in_flight)
    )
    rows["server batching"] = await with_model_server(
        models_dir,
        logs,
        ["--enable-batching", "--batching-parameters-file", str(BATCHING_FILE)],
        lambda target: served_concurrently(target, frames, 1, 0.0, in_flight),
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    from rhd.modelstore import version_dir
    from rhd.runtime.settings import Settings
    from rhd.training.view import KERAS_FILE

    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--batches", default="1,64,512", help="bare Keras batch sizes")
    parser.add_argument(
        "--max-batch", type=int, default=settings.model_max_batch, help="the client's micro-batch (RHD_MODEL_MAX_BATCH)"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="frames asked for at once by the served rows")
    parser.add_argument("--only-bare", action="store_true", help="bare Keras only (e.g. on a GPU machine)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    models_dir = (settings.models_dir if "RHD_MODELS_DIR" in os.environ else ROOT / "models").resolve()
    version = version_dir(models_dir, "view")
    workdir = Path(tempfile.mkdtemp(prefix="rhd-bench-view-"))
    try:
        say(f"generating {args.frames} frames")
        frames = generated_frames(args.frames, workdir)
        results: dict[str, Any] = {
            "model": str(version.relative_to(models_dir)),
            "device": device(),
            "cores": os.cpu_count(),
            "frames": len(frames),
            "bare": {},
            "served": {},
        }
        # Served first: once TensorFlow has run in this process its idle threads still take CPU from the server.
        if not args.only_bare:
            say("served: batch 1, micro-batched, server batching")
            results["served"] = asyncio.run(served_rows(models_dir, frames, workdir, args.max_batch, args.in_flight))
        for batch in sorted({int(b) for b in args.batches.split(",")} | {args.max_batch}):
            say(f"bare Keras, batch {batch}")
            results["bare"][batch] = bare_keras(version / KERAS_FILE, frames, batch)
        print(report(results, args.max_batch))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, Any], max_batch: int) -> str:
    lines = [
        f"view model {results['model']} on {results['device']}, {results['frames']} generated frames 240x320x3 uint8"
    ]
    for batch, row in results["bare"].items():
        lines.append(f"  bare Keras in-process, batch {batch:<4}          {row['frames_per_s']:8.0f} frames/s")
    served = results["served"]
    if served:
        one = served["batch 1"]
        lines.append(
            f"  served (gRPC), batch 1, one at a time     {one['frames_per_s']:8.0f} frames/s   "
            f"latency p50 {one['latency_ms_p50']:.1f} ms, p95 {one['latency_ms_p95']:.1f} ms"
        )
        in_flight = served["micro-batched"]["in_flight"]
        lines.append(
            f"  served, client micro-batch {max_batch:<4}            "
            f"{served['micro-batched']['frames_per_s']:8.0f} frames/s   {in_flight} frames in flight"
        )
        lines.append(
            f"  served, batch 1 requests, server batching  "
            f"{served['server batching']['frames_per_s']:8.0f} frames/s   {in_flight} requests in flight"
        )
        bare = results["bare"][max_batch]["frames_per_s"]
        ratio = served["micro-batched"]["frames_per_s"] / bare
        lines.append(f"served/bare ratio (micro-batch {max_batch} vs bare batch {max_batch}): {ratio:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
