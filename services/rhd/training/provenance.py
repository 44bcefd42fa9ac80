"""What every trained model records about how it was made, and the figures it is shipped with."""

import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

import rhd


def code_version() -> str:
    """rhd's version and the git commit of the source tree; the bare version outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return rhd.__version__
    return f"{rhd.__version__}+{commit}"


def environment(packages: Sequence[str]) -> dict[str, Any]:
    """The manifest's code_version, packages and python entries."""
    return {
        "code_version": code_version(),
        "packages": {p: package_version(p) for p in packages},
        "python": platform.python_version(),
    }


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> Path:
    """A confusion matrix (rows truth, columns predicted) as a PNG: counts, shaded by row share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.6), dpi=110)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            f"{count}\n{shares[row, col]:.0%}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if shares[row, col] > 0.6 else "black",
        )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    # No creation time in the PNG: the same matrix gives the same bytes.
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def export_saved_model(
    model: Any, out: Path, outputs: Any, input_shape: tuple, input_name: str, keras_file: str
) -> None:
    """A Keras model as a SavedModel in TensorFlow Serving's layout, signature serving_default: uint8 frames
    [None, *input_shape] named input_name -> outputs(model's answer) (a dict of named tensors); and the same model as
    a .keras file beside it (TF Serving ignores it; Keras in-process loads it on any backend)."""
    import keras
    import tensorflow as tf

    def serve(frames: tf.Tensor) -> dict:
        return outputs(model(frames, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec((None, *input_shape), tf.uint8, input_name)]
    )
    archive.write_out(str(out), verbose=False)
    model.save(out / keras_file)


def write_version(models_dir: Path, name: str, version: int, fill: Any) -> Path:
    """models_dir/name/version/, filled by fill(folder) beside it and then renamed into place: a model server never
    sees a half-written version (non-numeric names are not versions), and a rerun leaves no stale files behind."""
    import shutil

    out = Path(models_dir) / name / str(version)
    staging = out.with_name(f".{version}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
