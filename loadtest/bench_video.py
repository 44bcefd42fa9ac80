"""Cost of the video network per 16-frame clip: bare Keras in-process, then served through the TensorFlow Serving gRPC
API by the embedded model server, one clip per Predict and micro-batched. Prints figures; asserts nothing.

    .venv/bin/python loadtest/bench_video.py [--clips N] [--batches 1,8] [--json PATH]

The clips are generated studies' colour Doppler and B-mode videos as the line would read them (uint8
16 x 240 x 320 x 3). Rows: bare Keras at batch B (clips/s, wall ms and CPU ms a clip; on a GPU when TensorFlow has
one), served batch 1, served micro-batched (the model client packs up to 8 clips a Predict).
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_view import device, say, with_model_server


def generated_clips(n: int) -> np.ndarray:
    from rhd.synth.generator import make_study
    from rhd.training.study import TRAINING_CONFIG
    from rhd.training.video import video_clip, video_truth

    clips: list[np.ndarray] = []
    rng = np.random.default_rng(2026)
    while len(clips) < n:
        study = make_study(f"B-{len(clips)}", "definite", rng, TRAINING_CONFIG)
        clips += [video_clip(v, TRAINING_CONFIG.fps) for v in study.videos if video_truth(v) is not None]
    return np.stack(clips[:n])


def bare_keras(model_path: Path, clips: np.ndarray, batch: int, min_s: float = 3.0) -> dict[str, Any]:
    import keras

    model = keras.saving.load_model(model_path)
    model.predict_on_batch(clips[:batch])  # warm-up
    done, offset = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while done < len(clips) or time.perf_counter() - wall < min_s:
        model.predict_on_batch(np.take(clips, range(offset, offset + batch), axis=0, mode="wrap"))
        done, offset = done + batch, offset + batch
    seconds, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "batch": batch,
        "clips": done,
        "clips_per_s": done / seconds,
        "ms_per_clip": 1000 * seconds / done,
        "cpu_ms_per_clip": 1000 * cpu_s / done,
    }


async def served(target: str, clips: np.ndarray, max_batch: int) -> dict[str, Any]:
    from rhd.runtime.model_client import ModelClient

    client = ModelClient(target, "video", input_name="clips", max_batch=max_batch, max_wait_ms=5.0)
    try:
        await asyncio.gather(*(client.predict(c) for c in clips[:max_batch]))  # warm-up
        started = time.perf_counter()
        if max_batch == 1:
            for clip in clips:
                await client.predict(clip)
        else:
            await asyncio.gather(*(client.predict(c) for c in clips))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return {
        "clips": len(clips),
        "clips_per_s": len(clips) / seconds,
        "ms_per_clip": 1000 * seconds / len(clips),
        "client_max_batch": max_batch,
    }


def main(argv: list[str] | None = None) -> int:
    from rhd.modelstore import version_dir
    from rhd.runtime.settings import get_settings
    from rhd.training.video import KERAS_FILE, MODEL_NAME

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    models_dir = Path(get_settings().models_dir)
    model = version_dir(models_dir, MODEL_NAME) / KERAS_FILE
    say(f"generating {args.clips} clips ...")
    clips = generated_clips(args.clips)
    results: dict[str, Any] = {"device": device(), "model": str(model.parent.relative_to(models_dir)), "rows": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        results["rows"][f"bare Keras, batch {batch}"] = bare_keras(model, clips, batch)
    with tempfile.TemporaryDirectory() as logs:
        for max_batch in (1, 8):
            name = "served, batch 1" if max_batch == 1 else "served, micro-batched (8)"
            results["rows"][name] = asyncio.run(
                with_model_server(models_dir, Path(logs), [], lambda t, b=max_batch: served(t, clips, b))
            )
    print(f"video model {results['model']} on {results['device']}, {args.clips} clips of 16 x 240 x 320 x 3")
    print(f"{'row':<28} {'clips/s':>8} {'ms/clip':>8} {'CPU ms/clip':>12}")
    for name, row in results["rows"].items():
        cpu = f"{row['cpu_ms_per_clip']:.1f}" if "cpu_ms_per_clip" in row else ""
        print(f"{name:<28} {row['clips_per_s']:>8.1f} {row['ms_per_clip']:>8.1f} {cpu:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
