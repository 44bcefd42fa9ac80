"""`rhd train view`: a small Keras CNN for the probe views, trained on decoded generated videos, exported
as a SavedModel (TensorFlow Serving layout) whose graph holds the preprocessing."""

import hashlib
import json
import platform
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np

from rhd.labels import VIEWS
from rhd.split.ops import decode_video
from rhd.synth.generator import SynthConfig, synth_studies
from rhd.training.study import code_version
from rhd.view.ops import INPUT_NAME, PROBABILITIES

MODEL_NAME = "view"
INPUT_SHAPE = (240, 320, 3)
RESIZED = (60, 80)


def labelled_frames(seed: int, n_studies: int, every: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Frames as the services see them (MP4 written, then decoded by split's function) and their views."""
    config = SynthConfig(doppler_share=0.5)
    frames, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for study in synth_studies(seed, n_studies, Path(tmp), config, balanced=True):
            truth = json.loads((study / "truth.json").read_text())
            for video in truth["videos"]:
                decoded = decode_video((study / f"{video['video_id']}.mp4").read_bytes())
                frames += decoded.frames[::every]
                labels += [VIEWS.index(video["view"])] * len(decoded.frames[::every])
    return np.stack(frames), np.array(labels, np.int64)


def preprocess(frames):  # noqa: ANN001, ANN201 - a TensorFlow graph function
    import tensorflow as tf

    x = tf.cast(frames, tf.float32) / 255.0
    grey = tf.tensordot(x, tf.constant([0.114, 0.587, 0.299]), axes=[[3], [0]])[..., None]  # BGR weights
    return tf.image.resize(grey, RESIZED, method="area")


def build_model(seed: int):  # noqa: ANN201
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*RESIZED, 1))
    x = inputs
    for filters in (16, 32, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(VIEWS), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="view_cnn")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def weights_hash(model) -> str:  # noqa: ANN001
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def fit(seed: int, n_studies: int, epochs: int):  # noqa: ANN201
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    frames, labels = labelled_frames(seed, n_studies)
    x = preprocess(frames).numpy()
    model = build_model(seed)
    model.fit(x, labels, epochs=epochs, batch_size=64, shuffle=True, verbose=0)
    return model, frames, labels


def export(model, out: Path) -> None:  # noqa: ANN001
    import keras
    import tensorflow as tf

    def serve(frames):  # noqa: ANN001, ANN202
        probabilities = model(preprocess(frames), training=False)
        return {PROBABILITIES: probabilities, "view_index": tf.argmax(probabilities, axis=1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.uint8, name=INPUT_NAME)])
    archive.write_out(str(out), verbose=False)


def train_view_model(models_dir: Path, seed: int = 7, version: int = 1, n_studies: int = 40,
                     epochs: int = 14) -> Path:
    from sklearn.metrics import confusion_matrix, recall_score

    model, frames, labels = fit(seed, n_studies, epochs)
    held_frames, held_labels = labelled_frames(seed + 1000, max(8, n_studies // 4))
    predicted = np.argmax(model.predict(preprocess(held_frames).numpy(), verbose=0), axis=1)
    out = Path(models_dir) / MODEL_NAME / str(version)
    export(model, out)
    recalls = recall_score(held_labels, predicted, labels=range(len(VIEWS)), average=None, zero_division=0)
    manifest = {
        "model": MODEL_NAME, "version": version, "signature": "serving_default",
        "inputs": {INPUT_NAME: "uint8 [batch, 240, 320, 3] BGR"},
        "outputs": {PROBABILITIES: f"float32 [batch, {len(VIEWS)}]", "view_index": "int64 [batch]"},
        "classes": list(VIEWS),
        "data": {"generator": "rhd.synth", "seed": seed, "studies": n_studies, "frames": len(frames),
                 "sha256": hashlib.sha256(frames.tobytes() + labels.tobytes()).hexdigest()},
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": "adam 2e-3"},
        "weights_sha256": weights_hash(model),
        "code_version": code_version(),
        "packages": {p: package_version(p) for p in ("tensorflow", "keras", "numpy", "opencv-python-headless")},
        "python": platform.python_version(),
        "metrics": {
            "held_out": {"seed": seed + 1000, "frames": len(held_frames)},
            "accuracy": float((predicted == held_labels).mean()),
            "recall": {v: float(r) for v, r in zip(VIEWS, recalls, strict=True)},
            "confusion_matrix": {"labels": list(VIEWS), "rows_truth":
                                 confusion_matrix(held_labels, predicted, labels=range(len(VIEWS))).tolist()},
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
