"""`rhd train valve`: the valve segmentation network (rhd.valve.model) trained on the B-mode frames of generated
studies, decoded as split decodes them, against the generator's leaflet, chord and cusp masks; exported as a
SavedModel in TensorFlow Serving's layout with its manifest (per-label overlap on held-out studies)."""

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from rhd.imaging.burned_in import clean_frames
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.imaging.video import decode_video
from rhd.modelstore import saved_model_sha256
from rhd.synth.generator import SynthConfig, generate, study_labels, video_mode
from rhd.synth.render import VALVE_LABELS
from rhd.training.provenance import environment, export_saved_model, write_version
from rhd.training.view import weights_hash
from rhd.valve.model import FRAME_SHAPE, INPUT_SHAPE, LABELS, POOL, SECTOR_CROP, preprocessor, segmenter, served_model
from rhd.valve.ops import INPUT_NAME, PROBABILITIES, half_resolution

MODEL_NAME = "valve"
SIGNATURE = "serving_default"
KERAS_FILE = "valve.keras"
EVERY = 2
# B-mode videos only (the protocol's four and as many more), over wider acquisition knobs than the screening
# default: gain, contrast and probe placement vary more between machines and operators than within one programme.
TRAINING_CONFIG = SynthConfig(
    videos_per_study=16,
    duration_s=(1.0, 1.0),
    colour_share=0.0,
    off_axis_rate=0.1,
    poor_quality_rate=0.1,
    gain=(0.6, 1.4),
    contrast=(0.7, 1.4),
    jitter_px=12.0,
    jitter_deg=8.0,
)
EPOCHS, BATCH_SIZE, LEARNING_RATE = 8, 16, 3e-3
DICE_WEIGHT = 1.0


@dataclass(frozen=True)
class MaskSet:
    x: np.ndarray  # float32 [n, *INPUT_SHAPE]: frames through the model's own preprocessing layers
    labels: np.ndarray  # uint8 [n, 108, 136]: LABELS index per half-resolution pixel
    sha256: str


def _roundtrip(frames: list[np.ndarray], fps: float) -> list[np.ndarray]:
    """The frames as a hospital's MP4 carries them: encoded with the generator's codec and decoded as split does."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for frame in frames:
            writer.write(frame)
        writer.release()
        return decode_video(path.read_bytes()).frames


def generated_masks(seed: int, n_studies: int, held_out: int = 0) -> tuple[MaskSet, MaskSet]:
    """Every EVERY-th B-mode frame of n_studies generated studies with its labels, and of `held_out` more."""
    if LABELS != VALVE_LABELS:
        raise RuntimeError(f"the model's labels {LABELS} are not the generator's {VALVE_LABELS}")
    config = TRAINING_CONFIG
    labels = study_labels(seed, n_studies + held_out, config, "balanced")
    preprocess = preprocessor()
    sets: list[tuple[list, list]] = [([], []), ([], [])]
    digest = hashlib.sha256()
    for i, study in enumerate(generate(seed, labels, config)):
        xs, ys = sets[0] if i < n_studies else sets[1]
        for video in study.videos:
            if video_mode(video.scene) != "bmode":
                continue
            # As the line sees them: through the hospital's codec, then burned-in text cleaned out by deid.
            frames = _roundtrip(video.frames, config.fps)
            cleaned = clean_frames(frames)
            fan = sector_mask(video_sector(cleaned), cleaned[0].shape)  # the video's sector, as split finds it
            decoded = [image_only(frame, fan) for frame in cleaned[::EVERY]]
            masks = np.stack([half_resolution(t.valve_mask) for t in video.truths[::EVERY]])
            batch = np.stack(decoded)
            digest.update(batch.tobytes())
            digest.update(masks.tobytes())
            xs.append(keras.ops.convert_to_numpy(preprocess(batch)))
            ys.append(masks)

    def stacked(xs: list, ys: list) -> MaskSet:
        if not xs:
            return MaskSet(np.zeros((0, *INPUT_SHAPE), np.float32), np.zeros((0, *INPUT_SHAPE[:2]), np.uint8), "")
        return MaskSet(np.concatenate(xs), np.concatenate(ys), digest.hexdigest())

    return stacked(*sets[0]), stacked(*sets[1])


def dice_cross_entropy(y_true, y_pred):
    """Cross-entropy plus one minus the mean soft Dice of the three structures: thin structures are a fraction of a
    percent of the pixels, and Dice weighs their outline as much as the background's."""
    labels = ops.cast(ops.squeeze(y_true, -1) if len(y_true.shape) == 4 else y_true, "int32")
    onehot = ops.one_hot(labels, len(LABELS))
    ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
    axes = (0, 1, 2)
    overlap = ops.sum(onehot * y_pred, axis=axes)
    total = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * overlap + 1.0) / (total + 1.0)
    return ops.mean(ce) + DICE_WEIGHT * (1.0 - ops.mean(dice[1:]))


def build_model(seed: int) -> keras.Model:
    model = segmenter(seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=dice_cross_entropy)
    return model


def fit(seed: int, n_studies: int, epochs: int = EPOCHS, held_out: int = 0) -> tuple[keras.Model, MaskSet, MaskSet]:
    """Train on generated frames; the same seed gives the same weights on CPU. Returns the served model."""
    tf.config.experimental.enable_op_determinism()
    train, held = generated_masks(seed, n_studies, held_out)
    unet = build_model(seed)
    unet.fit(train.x, train.labels, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    # Served without its training configuration (the Dice loss is training code, not part of the model).
    plain = segmenter(seed)
    plain.set_weights(unet.get_weights())
    return served_model(preprocessor(), plain), train, held


def export(model: keras.Model, out: Path) -> None:
    """SavedModel with signature serving_default: frames uint8 [None, 240, 320, 3] -> label probabilities
    float32 [None, 108, 136, 4]; and the same model as a .keras file beside it."""
    export_saved_model(model, out, lambda p: {PROBABILITIES: p}, FRAME_SHAPE, INPUT_NAME, KERAS_FILE)


def evaluate(model: keras.Model, held: MaskSet) -> dict:
    """Per-label intersection over union and pixel recall on held-out frames (half resolution)."""
    unet = model.get_layer("valve_unet")
    predicted = np.argmax(unet.predict(held.x, batch_size=64, verbose=0), axis=-1)
    out: dict = {"held_out_frames": len(held.labels)}
    for k, name in enumerate(LABELS):
        truth, guess = held.labels == k, predicted == k
        union = int((truth | guess).sum())
        out[name] = {
            "iou": round(float((truth & guess).sum() / union), 4) if union else None,
            "recall": round(float((truth & guess).sum() / max(int(truth.sum()), 1)), 4),
            "precision": round(float((truth & guess).sum() / max(int(guess.sum()), 1)), 4),
        }
    return out


def train_valve_model(
    models_dir: Path, seed: int = 11, version: int = 1, n_studies: int = 20, held_out: int = 4, epochs: int = EPOCHS
) -> Path:
    """Train, evaluate on held-out studies, export to <models_dir>/valve/<version>/ with its manifest.json."""
    if held_out < 1:
        raise ValueError(f"held_out must be at least 1 study to measure the model, got {held_out}")
    started = time.monotonic()
    model, train, held = fit(seed, n_studies, epochs, held_out)
    manifest = {
        "model": MODEL_NAME,
        "version": version,
        "signature": SIGNATURE,
        "inputs": {INPUT_NAME: f"uint8 [batch, {', '.join(map(str, FRAME_SHAPE))}] BGR"},
        "outputs": {PROBABILITIES: f"float32 [batch, {INPUT_SHAPE[0]}, {INPUT_SHAPE[1]}, {len(LABELS)}]"},
        "labels": list(LABELS),
        "crop": {"top": SECTOR_CROP[0][0], "left": SECTOR_CROP[1][0], "downscale": POOL},
        "data": {
            "generator": "rhd.synth",
            "seed": seed,
            "studies": n_studies,
            "held_out_studies": held_out,
            "config": dataclasses.asdict(TRAINING_CONFIG),
            "every_nth_frame": EVERY,
            "frames": len(train.labels),
            "sha256": train.sha256,
        },
        "training": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": f"adam {LEARNING_RATE:g}",
            "loss": f"cross-entropy + {DICE_WEIGHT:g} x (1 - mean soft Dice of the structures)",
            "seconds": round(time.monotonic() - started, 1),
        },
        "preprocessing": "in the graph: BGR to grey, crop to the sector, 2 x 2 area downscale, / 255 "
        f"-> {list(INPUT_SHAPE)}",
        "weights_sha256": weights_hash(model),
        **environment(("tensorflow", "keras", "numpy", "opencv-python-headless")),
        "metrics": evaluate(model, held),
    }

    def fill(folder: Path) -> None:
        export(model, folder)
        manifest["saved_model_sha256"] = saved_model_sha256(folder)  # checked by the model server at load
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    out = write_version(models_dir, MODEL_NAME, version, fill)
    return out
