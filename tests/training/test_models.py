"""The shipped models: the view CNN meets its targets on studies it never saw, and the study model is loaded
safely and reads generated studies right."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from rhd.diagnose.ops import MODEL_FILE, diagnose, load_study_model
from rhd.imaging.burned_in import clean_frames
from rhd.imaging.video import decode_video
from rhd.inprocess import analyse_study
from rhd.labels import CRITERIA, VIEW_CLASSES
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.training.study import TRAINING_CONFIG
from rhd.valve.local import LocalValveModel
from rhd.view.local import LocalViewModel
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_view_model_meets_its_targets_on_screening_studies_it_never_saw(tmp_path):
    """Issue 6's targets (accuracy >= 0.98, PLAX recall >= 0.99) on every frame of 8 studies in the screening
    protocol's default settings (15 videos, every view, off-axis and poor-window ones), a seed training never used.
    The model trained on other settings (10 videos of 1 s, more colour, more "other")."""
    views = LocalViewModel(MODELS)
    confusion = np.zeros((len(VIEW_CLASSES), len(VIEW_CLASSES)), np.int64)
    for study in synth_studies(2027, 8, tmp_path, SynthConfig(duration_s=(1.0, 1.0)), balanced=True):
        for video in load_truth(study)["videos"]:
            if video["mode"] == "cw":
                continue  # spectral traces go to the spectral stage, never to the view model
            # As the line sees them: burned-in text cleaned out by deid.
            frames = np.stack(clean_frames(decode_video((study / f"{video['video_id']}.mp4").read_bytes()).frames))
            for label in views(frames):
                confusion[VIEW_CLASSES.index(video["view_class"]), VIEW_CLASSES.index(label)] += 1
    recall = dict(zip(VIEW_CLASSES, np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1), strict=True))
    assert confusion.sum(axis=1).min() > 0, confusion  # every class was asked about
    assert np.trace(confusion) / confusion.sum() >= 0.98, confusion
    assert recall["plax"] >= 0.99, confusion


def test_study_model_ranks_definite_studies_above_normal_ones(tmp_path):
    """Definite studies score a higher P(definite) than Normal studies without any jet. (Accuracy over the
    classes, near the thresholds included, is a training metric in the model's manifest, not a test.)"""
    model = load_study_model(MODELS)
    views, valves = LocalViewModel(MODELS), LocalValveModel(MODELS)
    config = SynthConfig.from_overrides(
        {
            "disease.near_threshold_share": 0.0,
            "disease.physiological_mr_rate": 0.0,
            "disease.physiological_ar_rate": 0.0,
        },
        TRAINING_CONFIG,
    )
    studies = synth_studies(77, 0, tmp_path, config, counts={"normal": 3, "definite": 3})
    p_definite = {"normal": [], "definite": []}
    for study in studies:
        analysis = analyse_study(study, views, valves)
        result = diagnose(model, analysis.names, analysis.values)
        assert sum(result.probabilities.values()) == pytest.approx(1.0)
        assert [c.name for c in result.criteria] == list(CRITERIA)
        likely = {m for c in result.criteria if c.probability >= 0.5 for m in c.measurements}
        assert {name for name, _, _ in result.evidence} == likely
        p_definite[load_truth(study)["label"]].append(result.probabilities["definite"])
    assert np.mean(p_definite["definite"]) > np.mean(p_definite["normal"]) + 0.2, p_definite


def test_study_model_refuses_wrong_features():
    model = load_study_model(MODELS)
    with pytest.raises(ValueError, match="feature names differ"):
        diagnose(model, ["x"], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        diagnose(model, model.feature_names, [float("nan")] * len(model.feature_names))


def test_a_model_file_with_unexpected_types_is_refused(tmp_path):
    shutil.copytree(MODELS / "study", tmp_path / "study")
    latest = sorted((tmp_path / "study").iterdir())[-1]
    sio.dump(Pipeline([("evil", FunctionTransformer(os.system))]), latest / MODEL_FILE)
    with pytest.raises(ValueError, match="outside the allow-list"):
        load_study_model(tmp_path)
