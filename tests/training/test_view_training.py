"""View model training is reproducible by seed, and the exported SavedModel serves what was trained.

Slow-ish (about half a minute): each case trains on two generated studies for one epoch.
"""

import json

import keras
import numpy as np
import pytest
import rhd
import tensorflow as tf
from rhd.labels import VIEW_CLASSES
from rhd.training.view import CONFUSION_FILE, KERAS_FILE, fit, train_view_model, weights_hash

pytestmark = pytest.mark.timeout(180)


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights():
    first, train, _ = fit(seed=3, n_studies=2, epochs=1)
    second, again, _ = fit(seed=3, n_studies=2, epochs=1)
    other, _, _ = fit(seed=4, n_studies=2, epochs=1)
    assert train.sha256 == again.sha256
    assert weights_hash(first) == weights_hash(second) != weights_hash(other)


def test_the_exported_model_has_the_served_signature_and_answers_as_the_trained_one(tmp_path):
    out = train_view_model(tmp_path, seed=5, version=3, n_studies=2, held_out=1, epochs=1)
    assert out == tmp_path / "view" / "3"
    assert sorted(p.name for p in (tmp_path / "view").iterdir()) == ["3"]  # no staging folder left behind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "view" and manifest["version"] == 3
    assert manifest["data"]["seed"] == 5 and len(manifest["data"]["sha256"]) == 64
    assert set(manifest["packages"]) >= {"tensorflow", "keras", "numpy"}
    assert manifest["code_version"].startswith(f"{rhd.__version__}+")
    metrics = manifest["metrics"]
    assert set(metrics["recall"]) == set(VIEW_CLASSES)
    assert np.array(metrics["confusion_matrix"]["rows_truth"]).sum() == metrics["held_out_frames"] > 0

    trained, _, _ = fit(seed=5, n_studies=2, epochs=1, held_out=1)
    assert manifest["weights_sha256"] == weights_hash(trained)

    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    (_, inputs), outputs = signature.structured_input_signature, signature.structured_outputs
    assert list(inputs) == ["frames"]
    assert inputs["frames"].dtype == tf.uint8 and inputs["frames"].shape.as_list() == [None, 240, 320, 3]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, len(VIEW_CLASSES)]
    assert outputs["view_index"].dtype == tf.int64

    frames = np.random.default_rng(0).integers(0, 256, (3, 240, 320, 3), dtype=np.uint8)
    served = signature(frames=tf.constant(frames))
    expected = trained.predict(frames, verbose=0)  # the trained model takes frames as decoded: no outside step
    assert served["probabilities"].numpy() == pytest.approx(expected, abs=1e-5)
    assert served["view_index"].numpy().tolist() == np.argmax(expected, axis=1).tolist()
    # The .keras file beside it is the same model, for Keras in-process on any backend.
    reloaded = keras.saving.load_model(out / KERAS_FILE)
    assert reloaded.predict(frames, verbose=0) == pytest.approx(expected, abs=1e-5)
    # The confusion matrix is drawn next to the manifest.
    assert manifest["confusion_png"] == CONFUSION_FILE
    assert (out / CONFUSION_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_preprocessing_layers_crop_to_the_sector_and_ignore_what_lies_outside():
    from rhd.synth.render import sector_mask
    from rhd.view.model import INPUT_SHAPE, preprocessor

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (1, 240, 320, 3), dtype=np.uint8)
    outside = frame.copy()
    outside[0][~sector_mask(240, 320)] = rng.integers(0, 256, (int((~sector_mask(240, 320)).sum()), 3))
    pre = preprocessor()
    x, y = keras.ops.convert_to_numpy(pre(frame)), keras.ops.convert_to_numpy(pre(outside))
    assert x.shape == (1, *INPUT_SHAPE) and 0.0 <= x.min() and x.max() <= 1.0
    # Changing every pixel outside the fan moves only the cells on its slanted edges, and only a little:
    # the top corners (text) and the strips beside the fan are cropped away entirely.
    assert np.abs(x - y).mean() < 0.05
    assert np.abs(x - y)[0, 20:50, 25:45].max() == 0.0  # the middle of the fan
    grey = np.full((1, 240, 320, 3), (10, 200, 50), np.uint8)  # BGR
    assert keras.ops.convert_to_numpy(pre(grey)) == pytest.approx((0.114 * 10 + 0.587 * 200 + 0.299 * 50) / 255)
