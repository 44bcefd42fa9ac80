"""Valve model training is reproducible by seed, and the exported SavedModel serves what was trained, with the
contract the valve stage reads (rhd.valve.ops)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from rhd.training.valve import KERAS_FILE, fit, train_valve_model
from rhd.training.view import weights_hash
from rhd.valve import ops

pytestmark = pytest.mark.timeout(300)


def test_the_same_seed_gives_the_same_weights_and_the_export_serves_them(tmp_path):
    first, train, _ = fit(seed=3, n_studies=1, epochs=1)
    second, again, _ = fit(seed=3, n_studies=1, epochs=1)
    assert train.sha256 == again.sha256 and len(train.labels) > 0
    assert set(np.unique(train.labels)) >= {0, ops.MITRAL}  # every B-mode frame shows the mitral valve
    assert weights_hash(first) == weights_hash(second)

    out = train_valve_model(tmp_path, seed=3, version=2, n_studies=1, held_out=1, epochs=1)
    assert sorted(p.name for p in (tmp_path / "valve").iterdir()) == ["2"]  # no staging folder left behind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "valve" and manifest["labels"] == list(ops.LABELS)
    assert manifest["metrics"]["held_out_frames"] > 0 and "iou" in manifest["metrics"]["mitral_leaflet"]
    assert manifest["weights_sha256"] == weights_hash(first)

    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    (_, inputs), outputs = signature.structured_input_signature, signature.structured_outputs
    assert list(inputs) == [ops.INPUT_NAME] and inputs[ops.INPUT_NAME].dtype == tf.uint8
    assert outputs[ops.PROBABILITIES].shape.as_list() == [None, *ops.CROP_SHAPE, len(ops.LABELS)]
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    served = signature(frames=tf.constant(frames))[ops.PROBABILITIES].numpy()
    assert served == pytest.approx(first.predict(frames, verbose=0), abs=1e-5)
    assert keras.saving.load_model(out / KERAS_FILE, compile=False).predict(frames, verbose=0) == pytest.approx(
        served, abs=1e-5
    )
    # What the stage does with one row of the answer.
    assert len(ops.valve_features(frames[0], served[0], 0.6)) == len(ops.FEATURE_NAMES)
