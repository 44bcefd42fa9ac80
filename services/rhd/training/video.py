"""`rhd train video`: the video network (rhd.video.model, C3D-style) trained on 16-frame clips of the colour Doppler
and B-mode videos of generated studies, against what the generator's truth marks in each video (a pathological MR
or AR jet; a morphological change of a valve); exported as a SavedModel in TensorFlow Serving's layout with its
manifest (per-video figures on held-out studies, measured before the model is used anywhere).

Training runs on one process or on several workers with tf.distribute's MultiWorkerMirroredStrategy: synchronous
data parallelism, the gradients summed across the workers at every step. Keras 3's `fit` does not run under that
strategy (Keras 3.15 fails converting the strategy's PerReplica values), so the step is a custom training loop:
`strategy.run` of a GradientTape step, the Keras optimizer applying the all-reduced gradients.

The data are sharded by study (study j in shard j mod SHARDS): worker k of N generates and reads only the shards
s with s mod N == k, so workers read disjoint shards and nothing is copied between them. Each step every shard gives
BATCH_SIZE / SHARDS clips (its own seeded order each epoch), so a step's global batch is the same set of clips
whatever N is (N must divide SHARDS): N workers end with the weights one worker reaches, up to the order in which
floating-point sums are taken.

Workers: `--workers N` on one machine starts N processes with TF_CONFIG on loopback ports; on a cluster each pod runs
`rhd train video` with TF_CONFIG, or with RHD_TRAIN_WORKER_HOSTS (host:port of every worker, in order) and the
indexed Job's JOB_COMPLETION_INDEX (k8s/training/video-job.yaml). Worker 0 (the chief) writes the model. Mixed
precision (`--precision mixed`) where GPUs are.
"""

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rhd.imaging.burned_in import clean_frames
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.synth.criteria import AMVL_THICK_MM, AR_MIN_JET_MM, MR_MIN_JET_MM
from rhd.synth.generator import Video, study_labels, video_mode
from rhd.training.provenance import environment, export_saved_model, write_version
from rhd.training.study import HELD_OUT_SEED_OFFSET, generated_study
from rhd.training.study import TRAINING_CONFIG as STUDY_CONFIG
from rhd.training.view import weights_hash
from rhd.video.model import CLIP_SHAPE, INPUT_NAME, INPUT_SHAPE, OUTPUTS, PROBABILITIES
from rhd.video.ops import clip_of

log = logging.getLogger(__name__)

MODEL_NAME = "video"
SIGNATURE = "serving_default"
KERAS_FILE = "video.keras"
# The screening protocol the study model is trained on (5 colour Doppler, 2 spectral, 4 B-mode videos of 1 s): the
# video network reads the videos the line gets. Spectral Doppler traces are not clips: they are left out.
TRAINING_CONFIG = STUDY_CONFIG
SHARDS = 8
EPOCHS, BATCH_SIZE, LEARNING_RATE = 12, 16, 2e-3
MORPHOLOGY_FLAGS = (
    "mitral_restricted",
    "mitral_tip_excess",
    "chordal_thickening",
    "aortic_thick",
    "aortic_restricted",
    "aortic_coaptation_defect",
    "aortic_prolapse",
)


def video_truth(video: Video) -> tuple[np.ndarray, np.ndarray] | None:
    """(targets, mask) over OUTPUTS for one generated video: a colour Doppler video is asked whether a pathological
    jet shows (MR >= 2 cm or AR >= 1 cm in some frame, the WHF 2012 lengths), a B-mode video whether a valve is
    drawn changed (anterior mitral leaflet >= 3 mm, or any other morphological feature); None for a spectral trace."""
    mode = video_mode(video.scene)
    target, mask = np.zeros(len(OUTPUTS), np.float32), np.zeros(len(OUTPUTS), np.float32)
    if mode == "colour":
        mr = max((t.mr_length_mm for t in video.truths), default=0.0)
        ar = max((t.ar_length_mm for t in video.truths), default=0.0)
        k = OUTPUTS.index("jet")
        target[k], mask[k] = float(mr >= MR_MIN_JET_MM or ar >= AR_MIN_JET_MM), 1.0
    elif mode == "bmode":
        scene = video.scene
        changed = scene.leaflet_mm >= AMVL_THICK_MM or any(getattr(scene, f) for f in MORPHOLOGY_FLAGS)
        k = OUTPUTS.index("morphology")
        target[k], mask[k] = float(changed), 1.0
    else:
        return None
    return target, mask


def video_clip(video: Video, fps: float) -> np.ndarray:
    """uint8 [16, 240, 320, 3]: the clip of a generated video as the line sees its frames (through the hospital's
    codec, burned-in text cleaned as deid does, everything outside the sector black)."""
    from rhd.training.valve import _roundtrip

    cleaned = clean_frames(_roundtrip(video.frames, fps))
    fan = sector_mask(video_sector(cleaned), cleaned[0].shape)
    return clip_of([image_only(frame, fan) for frame in cleaned])


@dataclass
class Shard:
    x: np.ndarray  # float32 [n, *INPUT_SHAPE]: clips through the model's own preprocessing
    y: np.ndarray  # float32 [n, len(OUTPUTS)]
    mask: np.ndarray  # float32 [n, len(OUTPUTS)]: which output each clip's truth speaks for
    modes: list[str]  # per clip: colour or bmode
    studies: list[int]  # per clip: its study's index in the set


def build_shards(seed: int, labels: Sequence[str], shards: int, own: Sequence[int]) -> dict[int, Shard]:
    """The clips of the studies in the shards `own` (study j in shard j mod `shards`), preprocessed."""
    from rhd.video.model import preprocessor

    preprocess = preprocessor()
    found: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, str, int]]] = {s: [] for s in own}
    for j, label in enumerate(labels):
        if j % shards not in found:
            continue
        for video in generated_study(seed, j, len(labels), label).videos:
            truth = video_truth(video)
            if truth is not None:
                x = np.asarray(preprocess(video_clip(video, TRAINING_CONFIG.fps)[None]))[0]
                found[j % shards].append((x, *truth, video_mode(video.scene), j))

    def shard(clips: list) -> Shard:
        if not clips:
            return Shard(np.zeros((0, *INPUT_SHAPE), np.float32), np.zeros((0, 2)), np.zeros((0, 2)), [], [])
        x, y, mask, modes, studies = zip(*clips, strict=True)
        return Shard(np.stack(x), np.stack(y), np.stack(mask), list(modes), list(studies))

    return {s: shard(clips) for s, clips in found.items()}


def digest(shards: dict[int, Shard]) -> str:
    h = hashlib.sha256()
    for s in sorted(shards):
        h.update(shards[s].x.tobytes() + shards[s].y.tobytes() + shards[s].mask.tobytes())
    return h.hexdigest()


# -- the workers ----------------------------------------------------------------------------------------------------


def cluster_from_env() -> dict[str, Any] | None:
    """TF_CONFIG as given, or made from RHD_TRAIN_WORKER_HOSTS and an indexed Job's JOB_COMPLETION_INDEX; None for
    one process."""
    if os.environ.get("TF_CONFIG"):
        return dict(json.loads(os.environ["TF_CONFIG"]))
    from rhd.runtime.settings import Settings

    hosts = [h.strip() for h in Settings().train_worker_hosts.split(",") if h.strip()]
    if not hosts:
        return None
    index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    os.environ["TF_CONFIG"] = json.dumps(config)
    return config


def _order(seed: int, shard: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, shard, epoch]).permutation(n)


def train_distributed(
    seed: int,
    labels: Sequence[str],
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    precision: str = "fp32",
) -> tuple[Any, dict[str, Any], Any]:
    """This process's part of the training: (the trained network, what it did, a barrier every worker must reach
    before it exits). One worker without TF_CONFIG."""
    import keras
    import tensorflow as tf

    config = cluster_from_env()
    workers = len(config["cluster"]["worker"]) if config else 1
    index = int(config["task"]["index"]) if config else 0
    if SHARDS % workers or batch_size % SHARDS:
        raise ValueError(f"{workers} workers and a batch of {batch_size}: both must divide into {SHARDS} shards")
    tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow op
    # Mixed precision: float16 on GPUs, with loss scaling; bfloat16 on CPUs (float16 has no 3D pooling kernel there,
    # and bfloat16's range needs no scaling).
    scaled_loss = precision == "mixed" and bool(tf.config.list_physical_devices("GPU"))
    if precision == "mixed":
        keras.mixed_precision.set_global_policy("mixed_float16" if scaled_loss else "mixed_bfloat16")
    own = [s for s in range(SHARDS) if s % workers == index]
    started = time.monotonic()
    shards = build_shards(seed, labels, SHARDS, own)
    data_s = time.monotonic() - started
    replicas = strategy.num_replicas_in_sync
    local = max(replicas // workers, 1)
    per_shard = batch_size // SHARDS

    # Every worker learns every shard's size (summed across workers), so all take the same number of steps.
    sizes = np.zeros(SHARDS, np.float32)
    for s in own:
        sizes[s] = len(shards[s].x)
    summed = strategy.reduce(
        tf.distribute.ReduceOp.SUM,
        strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(sizes if ctx.replica_id_in_sync_group % local == 0 else np.zeros_like(sizes))
        ),
        axis=None,
    )
    all_sizes = np.asarray(summed).astype(int)
    steps = int(all_sizes.min()) // per_shard
    if steps < 1:
        raise ValueError(f"too few clips for a step: shard sizes {all_sizes.tolist()}, {per_shard} per shard per step")

    from rhd.video.model import c3d

    with strategy.scope():
        network = c3d(seed)
        optimizer = keras.optimizers.Adam(LEARNING_RATE)
        if scaled_loss:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(network.trainable_variables)

    @tf.function
    def step(x: Any, y: Any, mask: Any) -> Any:
        def replica(x: Any, y: Any, mask: Any) -> Any:
            with tf.GradientTape() as tape:
                p = tf.clip_by_value(tf.cast(network(x, training=True), tf.float32), 1e-7, 1 - 1e-7)
                bce = -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
                loss = tf.reduce_sum(bce * mask) / batch_size  # the global batch's mean: summed over the workers
                scaled = optimizer.scale_loss(loss) if scaled_loss else loss
            grads = tape.gradient(scaled, network.trainable_variables)
            optimizer.apply_gradients(zip(grads, network.trainable_variables, strict=True))
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(x, y, mask)), axis=None)

    losses = []
    train_started = time.monotonic()
    for epoch in range(epochs):
        orders = {s: _order(seed, s, epoch, len(shards[s].x)) for s in own}
        total = 0.0
        for b in range(steps):
            picks = [(s, orders[s][b * per_shard : (b + 1) * per_shard]) for s in own]
            mine = [np.concatenate([getattr(shards[s], f)[i] for s, i in picks]) for f in ("x", "y", "mask")]

            x, y, mask = (
                strategy.experimental_distribute_values_from_function(
                    lambda ctx, part=part: tf.constant(
                        np.array_split(part, local)[ctx.replica_id_in_sync_group % local]
                    )
                )
                for part in mine
            )
            total += float(step(x, y, mask))
        losses.append(round(total / steps, 5))
        log.info("worker %d epoch %d: loss %.4f", index, epoch + 1, total / steps)

    def barrier() -> None:
        """Every worker waits here for the others (the chief after writing the model): a worker that exits first
        would be taken by the others' coordination service for a crashed task."""
        strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.experimental_distribute_values_from_function(lambda ctx: 1.0), None
        )

    report = {
        "worker": index,
        "workers": workers,
        "replicas": replicas,
        "shards_read": own,
        "studies_read": sorted({j for s in own for j in shards[s].studies}),
        "clips_read": int(sum(len(shards[s].x) for s in own)),
        "steps_per_epoch": steps,
        "epoch_loss": losses,
        "weights_sha256": weights_hash(network),
        "data_seconds": round(data_s, 1),
        "train_seconds": round(time.monotonic() - train_started, 1),
        "steps_per_second": round(steps * epochs / max(time.monotonic() - train_started, 1e-9), 3),
        "precision": keras.mixed_precision.global_policy().name,
        "data_sha256": digest(shards),
    }
    return network, report, barrier


# -- per-video figures ----------------------------------------------------------------------------------------------


def per_video_metrics(p: np.ndarray, y: np.ndarray, mask: np.ndarray, seed: int, rounds: int = 500) -> dict:
    """Per output, on the videos that ask it: ROC AUC with a bootstrap 95% interval (videos resampled), and
    sensitivity and specificity at P >= 0.5."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for k, name in enumerate(OUTPUTS):
        asked = mask[:, k] > 0
        truth, score = y[asked, k] > 0.5, p[asked, k]
        figures: dict[str, Any] = {"videos": int(asked.sum()), "with_finding": int(truth.sum())}
        if truth.any():
            figures["sensitivity"] = round(float((score[truth] >= 0.5).mean()), 4)
        if (~truth).any():
            figures["specificity"] = round(float((score[~truth] < 0.5).mean()), 4)
        if truth.any() and (~truth).any():
            figures["roc_auc"] = round(float(roc_auc_score(truth, score)), 4)
            samples = []
            for _ in range(rounds):
                i = rng.integers(0, len(truth), len(truth))
                if truth[i].any() and (~truth[i]).any():
                    samples.append(roc_auc_score(truth[i], score[i]))
            figures["roc_auc_ci95"] = [round(float(np.percentile(samples, q)), 4) for q in (2.5, 97.5)]
        out[name] = figures
    return out


def export(model: Any, out: Path) -> None:
    """SavedModel with signature serving_default: clips uint8 [None, 16, 240, 320, 3] -> finding probabilities
    float32 [None, 2] (jet, morphology); and the same model as a .keras file beside it."""
    export_saved_model(model, out, lambda p: {PROBABILITIES: p}, CLIP_SHAPE, INPUT_NAME, KERAS_FILE)


def train_video_model(
    models_dir: Path,
    seed: int = 21,
    version: int = 1,
    n_studies: int = 40,
    held_out: int = 8,
    epochs: int = EPOCHS,
    precision: str = "fp32",
    worker_report: Path | None = None,
) -> Path | None:
    """This worker's training; the chief (or the only process) evaluates on held-out studies of another seed and
    writes <models_dir>/video/<version>/ with its manifest.json. Returns that folder (None on other workers)."""

    started = time.monotonic()
    labels = study_labels(seed, n_studies, TRAINING_CONFIG, "balanced")
    network, report, barrier = train_distributed(seed, labels, epochs, BATCH_SIZE, precision)
    if worker_report is not None:
        worker_report.mkdir(parents=True, exist_ok=True)
        (worker_report / f"worker-{report['worker']}.json").write_text(json.dumps(report, indent=2) + "\n")
        np.savez(worker_report / f"worker-{report['worker']}.npz", *network.get_weights())
    if report["worker"] != 0:
        barrier()  # until the chief has written the model
        return None
    try:
        return _evaluate_and_export(models_dir, network, report, seed, version, n_studies, held_out, epochs, started)
    finally:
        barrier()


def _evaluate_and_export(
    models_dir: Path,
    network: Any,
    report: dict[str, Any],
    seed: int,
    version: int,
    n_studies: int,
    held_out: int,
    epochs: int,
    started: float,
) -> Path:
    import keras

    keras.mixed_precision.set_global_policy("float32")  # served in float32 whatever it was trained in
    from rhd.video.model import c3d, preprocessor, served_model

    plain = c3d(seed)
    plain.set_weights(network.get_weights())
    model = served_model(preprocessor(), plain)
    held_seed = seed + HELD_OUT_SEED_OFFSET
    held_labels = study_labels(held_seed, held_out, TRAINING_CONFIG, "balanced")
    held = build_shards(held_seed, held_labels, 1, [0])[0]
    p = plain.predict(held.x, batch_size=8, verbose=0) if len(held.x) else np.zeros((0, len(OUTPUTS)))
    manifest = {
        "model": MODEL_NAME,
        "version": version,
        "signature": SIGNATURE,
        "inputs": {INPUT_NAME: f"uint8 [batch, {', '.join(map(str, CLIP_SHAPE))}] BGR: 16 frames spread over a video"},
        "outputs": {PROBABILITIES: f"float32 [batch, {len(OUTPUTS)}]: P({'), P('.join(OUTPUTS)})"},
        "outputs_order": list(OUTPUTS),
        "asked_of": {"jet": "colour Doppler videos", "morphology": "B-mode videos"},
        "data": {
            "generator": "rhd.synth",
            "seed": seed,
            "studies": n_studies,
            "held_out": {"seed": held_seed, "studies": held_out, "videos": len(held.x)},
            "config": dataclasses.asdict(TRAINING_CONFIG),
            "shards": SHARDS,
            "sha256": report["data_sha256"],
        },
        "training": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": f"adam {LEARNING_RATE:g}",
            "loss": "binary cross-entropy on the output each video is asked",
            "strategy": "tf.distribute.MultiWorkerMirroredStrategy, custom training loop",
            **{k: report[k] for k in ("workers", "replicas", "precision", "epoch_loss", "steps_per_second")},
            "seconds": round(time.monotonic() - started, 1),
        },
        "preprocessing": f"in the graph: crop to the sector, / 255, area resize of each frame -> {list(INPUT_SHAPE)}",
        "weights_sha256": report["weights_sha256"],
        **environment(("tensorflow", "keras", "numpy", "opencv-python-headless")),
        "metrics": {"held_out_videos": per_video_metrics(p, held.y, held.mask, held_seed)},
    }

    def fill(folder: Path) -> None:
        from rhd.modelstore import saved_model_sha256

        export(model, folder)
        manifest["saved_model_sha256"] = saved_model_sha256(folder)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (folder / "report.md").write_text(report_markdown(manifest))

    return write_version(models_dir, MODEL_NAME, version, fill)


def launch_local_workers(argv: Sequence[str], workers: int) -> int:
    """Start `workers` processes of `rhd train video` on this machine, each with TF_CONFIG on a loopback port; the
    first exit code that is not 0, else 0."""
    from rhd.runtime.http import free_port

    hosts = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    procs = []
    for index in range(workers):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config)}  # the machine's devices, shared
        procs.append(subprocess.Popen([sys.executable, "-m", "rhd.cli", *argv], env=env))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


# -- the ablation: does the video network help the study decision? ---------------------------------------------------

_video_model: Any = None


def _init_video_worker(models_dir: str, version: int) -> None:
    global _video_model
    from rhd.modelstore import LocalModel

    _video_model = LocalModel(Path(models_dir), MODEL_NAME, version, batch=8)


def _study_video_row(task: tuple[int, int, int, str]) -> list[float]:
    from rhd.video.ops import study_video_features

    seed, index, total, label = task
    study = generated_study(seed, index, total, label)
    clips, modes = [], []
    for video in study.videos:
        if video_truth(video) is not None:
            clips.append(video_clip(video, TRAINING_CONFIG.fps))
            modes.append(video_mode(video.scene))
    p = _video_model.outputs(np.stack(clips))[PROBABILITIES] if clips else np.zeros((0, len(OUTPUTS)))
    return study_video_features(list(zip(modes, p, strict=True)))


def video_features(models_dir: Path, version: int, seed: int, labels: Sequence[str], workers: int) -> np.ndarray:
    """[n, len(STUDY_VIDEO_FEATURES)]: the video network's answers pooled per study, for the generated studies
    `labels` (the very studies the study model's training generates from the same seed)."""
    tasks = [(seed, i, len(labels), label) for i, label in enumerate(labels)]
    from rhd.training.study import SPAWN

    with ProcessPoolExecutor(
        workers, mp_context=SPAWN, initializer=_init_video_worker, initargs=(str(models_dir), version)
    ) as pool:
        return np.array(list(pool.map(_study_video_row, tasks)), np.float64).reshape(len(labels), -1)


# Which parts of a criterion may read the video network's pooled answers, beside their own measurements.
VIDEO_MEASUREMENTS = {
    **{part: ("video_jet_p_max",) for part in ("mr_length", "ar_length")},
    **{
        part: ("video_morphology_p_max",)
        for part in (
            "amvl_thickening",
            "chordal_thickening",
            "mitral_restricted",
            "mitral_tip_motion",
            "aortic_thickening",
            "aortic_coaptation_defect",
            "aortic_restricted",
            "aortic_prolapse",
        )
    },
}


def video_ablation(
    models_dir: Path,
    video_version: int = 0,
    seed: int = 11,
    n_studies: int = 90,
    held_out_per_class: int = 10,
    workers: int = 2,
    cache: Path | None = None,
    rounds: int = 1000,
) -> dict[str, Any]:
    """The ablation on the study model's own sets (the same generated studies, seed and held-out seed as `rhd train
    study`): their features by the line's stage functions (cached with `cache`) and the video network's pooled
    answers."""
    from rhd.labels import CLASSES
    from rhd.modelstore import version_dir
    from rhd.training.study import build_features

    video_version = int(version_dir(models_dir, MODEL_NAME, video_version).name)
    train_labels = study_labels(seed, n_studies, TRAINING_CONFIG, "balanced")
    held_seed = seed + HELD_OUT_SEED_OFFSET
    counts = dict.fromkeys(CLASSES, held_out_per_class)
    held_labels = study_labels(held_seed, 0, TRAINING_CONFIG, counts=counts)
    train = build_features(models_dir, seed, train_labels, workers, "training studies", cache)
    held = build_features(models_dir, held_seed, held_labels, workers, "held-out studies", cache)
    v_train = video_features(models_dir, video_version, seed, train_labels, workers)
    v_held = video_features(models_dir, video_version, held_seed, held_labels, workers)
    result = compare_with_and_without(train, v_train, held, v_held, seed, held_seed, rounds)
    result["video_model_version"] = video_version
    result["training"] = {"seed": seed, "studies": n_studies}
    result["held_out"] = {"seed": held_seed, "per_class": held_out_per_class, "studies": len(held.y)}
    return result


def compare_with_and_without(
    train: Any, v_train: np.ndarray, held: Any, v_held: np.ndarray, seed: int, held_seed: int, rounds: int = 1000
) -> dict[str, Any]:
    """The study decision fitted twice on the same training studies (StudySet), with and without the video
    network's pooled answers among its parts' measurements, and measured on the same held-out studies (bootstrap 95%
    intervals; the difference in balanced accuracy by a paired bootstrap, studies resampled within each class). The
    video network helps only if that difference's interval lies above 0."""
    from rhd.assemble.ops import STUDY_FEATURE_NAMES
    from rhd.diagnose.ops import PART_MEASUREMENTS
    from rhd.labels import CLASSES
    from rhd.training.report import evaluate
    from rhd.training.study import REFERRED, decisions, fit_with_thresholds, study_probabilities
    from rhd.video.ops import STUDY_VIDEO_FEATURES

    classes = list(CLASSES)
    with_names = [*STUDY_FEATURE_NAMES, *STUDY_VIDEO_FEATURES]
    with_measurements = {part: (*m, *VIDEO_MEASUREMENTS.get(part, ())) for part, m in PART_MEASUREMENTS.items()}
    arms = {
        "without": (train.x, held.x, list(STUDY_FEATURE_NAMES), PART_MEASUREMENTS),
        "with": (np.hstack([train.x, v_train]), np.hstack([held.x, v_held]), with_names, with_measurements),
    }
    referred = np.array([bool(r) for r in held.referrals])
    predicted, results = {}, {}
    for arm, (x_train, x_held, names, measurements) in arms.items():
        parts, thresholds, _, _ = fit_with_thresholds(x_train, train.y, train.met, seed, names, measurements)
        _, proba = study_probabilities(parts, x_held, names, measurements)
        predicted[arm] = np.where(referred, REFERRED, decisions(proba, classes, thresholds))
        results[arm] = evaluate(held.y, proba, predicted[arm], classes, seed=held_seed, rounds=rounds)
        results[arm]["thresholds"] = thresholds

    def balanced(y: np.ndarray, guess: np.ndarray) -> float:
        return float(np.mean([(guess[y == c] == c).mean() for c in classes if (y == c).any()]))

    rng = np.random.default_rng(held_seed)
    members = [np.flatnonzero(held.y == c) for c in classes]
    differences = []
    for _ in range(rounds):
        i = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members if len(m)])
        differences.append(balanced(held.y[i], predicted["with"][i]) - balanced(held.y[i], predicted["without"][i]))
    difference = balanced(held.y, predicted["with"]) - balanced(held.y, predicted["without"])
    ci = [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))]
    return {
        "video_features": list(STUDY_VIDEO_FEATURES),
        "parts_reading_them": {part: list(extra) for part, extra in VIDEO_MEASUREMENTS.items()},
        "without": results["without"],
        "with": results["with"],
        "balanced_accuracy_difference": {"value": difference, "ci95": ci, "bootstrap_rounds": rounds},
        "helps": ci[0] > 0,
    }


def ablation_markdown(result: dict[str, Any]) -> str:
    """The ablation as the report of record's section."""
    from rhd.labels import CLASSES

    def figure(arm: str, key: str) -> str:
        f = result[arm]["figures"][key]
        return f"{f['value']:.3f} ({f['ci95'][0]:.3f}-{f['ci95'][1]:.3f})"

    rows = ["balanced_accuracy", "macro_f1", *(f"recall.{c}" for c in CLASSES)]
    d = result["balanced_accuracy_difference"]
    lines = [
        f"## Ablation: the study decision with and without video model version {result['video_model_version']}",
        "",
        f"The same {result['training']['studies']} training studies (seed {result['training']['seed']}) and the same "
        f"{result['held_out']['studies']} held-out studies (seed {result['held_out']['seed']}, "
        f"{result['held_out']['per_class']} per class); with it, the parts of a criterion also read "
        f"{', '.join(result['video_features'])} (the largest P(jet) of a study's colour Doppler videos, the largest "
        "P(morphological change) of its B-mode videos). Bootstrap 95% intervals.",
        "",
        "| figure | without | with |",
        "|---|---|---|",
        *(f"| {key} | {figure('without', key)} | {figure('with', key)} |" for key in rows),
        "",
        f"Balanced accuracy, with minus without: {d['value']:+.3f} (paired bootstrap 95% interval "
        f"{d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, {d['bootstrap_rounds']} rounds).",
        "",
        "**Decision: "
        + (
            "it helps: the video network's answers enter the study decision.**"
            if result["helps"]
            else "it does not help (the interval does not lie above 0): the study decision does not use the video "
            "network, and the streaming line does not call it.**"
        ),
        "",
    ]
    return "\n".join(lines)


def report_markdown(manifest: dict[str, Any]) -> str:
    """The video model's report of record: what it was trained on, how, and its per-video figures."""
    data, training = manifest["data"], manifest["training"]
    lines = [
        f"# Video model, version {manifest['version']}",
        "",
        f"A C3D-style 3D CNN over 16-frame clips (rhd.video.model), trained on {data['studies']} generated studies "
        f"(seed {data['seed']}; {training['epochs']} epochs, batch {training['batch_size']}, "
        f"{training['workers']} worker(s), {training['precision']}); measured on the videos of "
        f"{data['held_out']['studies']} held-out studies (seed {data['held_out']['seed']}). A colour Doppler video is "
        "asked whether a pathological jet shows (MR >= 2 cm, AR >= 1 cm), a B-mode video whether a valve is changed.",
        "",
        "| output | videos | with the finding | ROC AUC (95% CI) | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in manifest["metrics"]["held_out_videos"].items():
        ci = f.get("roc_auc_ci95")
        auc = f"{f['roc_auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if "roc_auc" in f else "-"
        lines.append(
            f"| {name} | {f['videos']} | {f['with_finding']} | {auc} | {f.get('sensitivity', '-')} | "
            f"{f.get('specificity', '-')} |"
        )
    lines += ["", f"Weights sha256 `{manifest['weights_sha256']}`.", ""]
    return "\n".join(lines)


def write_ablation(folder: Path, result: dict[str, Any], report_dir: Path | None = None) -> None:
    """The ablation beside the model (ablation.json, the manifest's summary, the report's section), and the report
    also under report_dir."""
    (folder / "ablation.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    d = result["balanced_accuracy_difference"]
    manifest["ablation"] = {
        "balanced_accuracy_difference": d["value"],
        "ci95": d["ci95"],
        "helps": result["helps"],
        "used_by_the_study_decision": result["helps"],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report = report_markdown(manifest) + "\n" + ablation_markdown(result)
    for where in filter(None, (folder, report_dir)):
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / "report.md").write_text(report)
