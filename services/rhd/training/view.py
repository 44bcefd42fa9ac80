"""`rhd train view`: the view CNN (rhd.view.model) trained on generated videos decoded as split decodes them,
exported as a SavedModel in TensorFlow Serving's layout, preprocessing inside the graph, with its manifest and
confusion matrix."""

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rhd.imaging.burned_in import clean_frames
from rhd.imaging.sector import image_only, sector_mask, video_sector
from rhd.imaging.video import decode_video
from rhd.labels import VIEW_CLASSES
from rhd.modelstore import saved_model_sha256
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.training.provenance import environment, export_saved_model, plot_confusion, write_version
from rhd.view.model import FRAME_SHAPE, INPUT_SHAPE, classifier, preprocessor, served_model
from rhd.view.ops import INPUT_NAME, PROBABILITIES, VIEW_INDEX

MODEL_NAME = "view"
SIGNATURE = "serving_default"
KERAS_FILE = "view.keras"  # the same model for Keras in-process (any backend); TF Serving ignores it
CONFUSION_FILE = "confusion.png"
EVERY = 3  # neighbouring frames of a video are near copies: every third one is enough
# Shorter studies than the screening default, with more colour Doppler (all the view stage sees) and more
# off-axis and poor-quality videos, so the rare "other" class has enough examples. The protocol's first 12 videos
# hold every view with its colour box over each valve it shows (the two spectral traces among them are skipped).
TRAINING_CONFIG = SynthConfig(
    videos_per_study=12, duration_s=(1.0, 1.0), colour_share=0.75, off_axis_rate=0.1, poor_quality_rate=0.1
)
EPOCHS, BATCH_SIZE, LEARNING_RATE = 14, 64, 2e-3


@dataclass(frozen=True)
class FrameSet:
    x: np.ndarray  # float32 [n, *INPUT_SHAPE]: frames through the model's own preprocessing layers
    views: np.ndarray  # int64 [n]: index into VIEW_CLASSES
    doppler: np.ndarray  # bool [n]
    sha256: str  # of the decoded frames and their view indices, in order


def _frames(studies: list[Path]) -> FrameSet:
    preprocess = preprocessor()
    xs, views, doppler = [], [], []
    digest = hashlib.sha256()
    for study in studies:
        for video in load_truth(study)["videos"]:
            if video["mode"] == "cw":
                continue  # a spectral trace shows no view of the heart; the view stage never sees one
            # As the line sees them: burned-in text cleaned out by deid (the layout read from the whole video).
            frames = decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames
            cleaned = clean_frames(frames)
            fan = sector_mask(video_sector(cleaned), cleaned[0].shape)  # the video's sector, as split finds it
            decoded = [image_only(frame, fan) for frame in cleaned[::EVERY]]
            batch = np.stack(decoded)
            labels = np.full(len(decoded), VIEW_CLASSES.index(video["view_class"]), np.int64)
            digest.update(batch.tobytes())
            digest.update(labels.tobytes())
            # Kept preprocessed only: the raw frames of a training set would take hundreds of MB.
            xs.append(keras.ops.convert_to_numpy(preprocess(batch)))
            views.append(labels)
            doppler.append(np.full(len(decoded), bool(video["doppler"])))
    if not xs:
        return FrameSet(
            np.zeros((0, *INPUT_SHAPE), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), digest.hexdigest()
        )
    return FrameSet(np.concatenate(xs), np.concatenate(views), np.concatenate(doppler), digest.hexdigest())


def generated_frames(seed: int, n_studies: int, held_out: int = 0) -> tuple[FrameSet, FrameSet]:
    """Frames of n_studies generated studies, and of `held_out` more from the same seed (disjoint studies)."""
    config = TRAINING_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        studies = synth_studies(seed, n_studies + held_out, Path(tmp), config, balanced=True)
        return _frames(studies[:n_studies]), _frames(studies[n_studies:])


def build_model(seed: int) -> keras.Model:
    """The classifier (preprocessed frames -> probabilities), compiled for training."""
    model = classifier(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def weights_hash(model: keras.Model) -> str:
    """sha256 over the model's weight arrays in order, shapes and dtypes included."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(f"{weight.dtype}{weight.shape}".encode())
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def fit(seed: int, n_studies: int, epochs: int = EPOCHS, held_out: int = 0) -> tuple[keras.Model, FrameSet, FrameSet]:
    """Train on generated frames; the same seed gives the same weights on CPU. Returns the served model
    (uint8 frames -> probabilities): preprocessing layers, then the trained classifier."""
    tf.config.experimental.enable_op_determinism()
    train, held = generated_frames(seed, n_studies, held_out)
    cnn = build_model(seed)
    cnn.fit(train.x, train.views, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    return served_model(preprocessor(), cnn), train, held


def export(model: keras.Model, out: Path) -> None:
    """SavedModel with signature serving_default: frames uint8 [None, 240, 320, 3] -> probabilities, view_index;
    and the same model as a .keras file beside it."""

    def outputs(probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        return {PROBABILITIES: probabilities, VIEW_INDEX: tf.argmax(probabilities, axis=1)}

    export_saved_model(model, out, outputs, FRAME_SHAPE, INPUT_NAME, KERAS_FILE)


def evaluate(model: keras.Model, held: FrameSet) -> dict:
    """Accuracy, per-view recall and the confusion matrix of the served model on held-out preprocessed frames."""
    cnn = model.get_layer("view_cnn")
    predicted = np.argmax(cnn.predict(held.x, batch_size=256, verbose=0), axis=1)
    confusion = np.zeros((len(VIEW_CLASSES), len(VIEW_CLASSES)), np.int64)
    np.add.at(confusion, (held.views, predicted), 1)
    recall = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    return {
        "held_out_frames": len(held.views),
        "accuracy": float((predicted == held.views).mean()),
        # What the view stage is asked about: it only sees colour Doppler frames.
        "doppler_accuracy": float((predicted == held.views)[held.doppler].mean()),
        "recall": {view: float(r) for view, r in zip(VIEW_CLASSES, recall, strict=True)},
        "confusion_matrix": {"labels": list(VIEW_CLASSES), "rows_truth": confusion.tolist()},
    }


def train_view_model(
    models_dir: Path, seed: int = 7, version: int = 1, n_studies: int = 40, held_out: int = 10, epochs: int = EPOCHS
) -> Path:
    """Train, evaluate on held-out studies, export to <models_dir>/view/<version>/ with its manifest.json."""
    if held_out < 1:
        raise ValueError(f"held_out must be at least 1 study to measure the model, got {held_out}")
    started = time.monotonic()
    model, train, held = fit(seed, n_studies, epochs, held_out)
    metrics = evaluate(model, held)
    manifest = {
        "model": MODEL_NAME,
        "version": version,
        "signature": SIGNATURE,
        "inputs": {INPUT_NAME: f"uint8 [batch, {', '.join(map(str, FRAME_SHAPE))}] BGR"},
        "outputs": {PROBABILITIES: f"float32 [batch, {len(VIEW_CLASSES)}]", VIEW_INDEX: "int64 [batch]"},
        "classes": list(VIEW_CLASSES),
        "data": {
            "generator": "rhd.synth",
            "seed": seed,
            "studies": n_studies,
            "held_out_studies": held_out,
            "config": dataclasses.asdict(TRAINING_CONFIG),
            "every_nth_frame": EVERY,
            "frames": len(train.views),
            "sha256": train.sha256,
        },
        "training": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": f"adam {LEARNING_RATE:g}",
            "seconds": round(time.monotonic() - started, 1),
        },
        "preprocessing": "in the graph: BGR to grey, crop to the sector, 4 x 4 area downscale, / 255 "
        f"-> {list(INPUT_SHAPE)}",
        "weights_sha256": weights_hash(model),
        **environment(("tensorflow", "keras", "numpy", "opencv-python-headless")),
        "metrics": metrics,
        "confusion_png": CONFUSION_FILE,
    }

    def fill(folder: Path) -> None:
        export(model, folder)
        manifest["saved_model_sha256"] = saved_model_sha256(folder)  # checked by the model server at load
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        plot_confusion(
            np.array(metrics["confusion_matrix"]["rows_truth"]),
            VIEW_CLASSES,
            f"view model {version}: accuracy {metrics['accuracy']:.3f} on {metrics['held_out_frames']} held-out frames",
            folder / CONFUSION_FILE,
        )

    out = write_version(models_dir, MODEL_NAME, version, fill)
    return out
