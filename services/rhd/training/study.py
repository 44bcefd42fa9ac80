"""`rhd train study`: generated labelled studies -> in-process features -> one sklearn Pipeline
(z-score scaler, class-weighted logistic regression), cross-validated, saved with skops + manifest."""

import hashlib
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from rhd.assemble.ops import STUDY_FEATURE_NAMES
from rhd.diagnose.ops import MODEL_FILE, MODEL_NAME
from rhd.inprocess import StudyAnalysis, analyse_study
from rhd.labels import CLASSES
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.training.provenance import environment
from rhd.view.local import LocalViewModel

# The protocol's first 8 videos (5 in colour Doppler), 1 s each: every view a reader needs, at a cost that
# keeps `make test` within minutes.
TRAINING_CONFIG = SynthConfig(videos_per_study=8, duration_s=(1.0, 1.0))

_view_model: LocalViewModel | None = None


def _init_worker(models_dir: str) -> None:
    global _view_model
    _view_model = LocalViewModel(Path(models_dir))


def _analyse(study_dir: str) -> StudyAnalysis:
    assert _view_model is not None
    return analyse_study(Path(study_dir), _view_model)


def parameters_hash(pipeline: Pipeline) -> str:
    scaler, classifier = pipeline[0], pipeline[-1]
    digest = hashlib.sha256()
    for array in (scaler.mean_, scaler.scale_, classifier.coef_, classifier.intercept_):
        digest.update(np.ascontiguousarray(array, np.float64).tobytes())
    return digest.hexdigest()


def build_features(models_dir: Path, seed: int, n_studies: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = synth_studies(seed, n_studies, Path(tmp), TRAINING_CONFIG, balanced=True)
        labels = [load_truth(d)["label"] for d in dirs]
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(models_dir),)) as pool:
            analyses = list(pool.map(_analyse, [str(d) for d in dirs]))
    return np.array([a.values for a in analyses], np.float64), np.array(labels)


def train_study_model(models_dir: Path, seed: int = 11, n_studies: int = 90, version: int = 1,
                      workers: int = 2) -> Path:
    x, y = build_features(models_dir, seed, n_studies, workers)
    pipeline = Pipeline([
        ("zscore", StandardScaler()),
        ("classifier", LogisticRegression(class_weight="balanced", max_iter=5000, C=1.0)),
    ])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    predicted = cross_val_predict(pipeline, x, y, cv=folds)
    pipeline.fit(x, y)
    out = Path(models_dir) / MODEL_NAME / str(version)
    out.mkdir(parents=True, exist_ok=True)
    sio.dump(pipeline, out / MODEL_FILE)
    recalls = recall_score(y, predicted, labels=list(CLASSES), average=None, zero_division=0)
    manifest = {
        "model": MODEL_NAME, "version": version, "feature_names": list(STUDY_FEATURE_NAMES),
        "classes": [str(c) for c in pipeline.classes_],
        "data": {"generator": "rhd.synth", "seed": seed, "studies": n_studies, "balanced": True,
                 "sha256": hashlib.sha256(x.tobytes() + "|".join(y).encode()).hexdigest()},
        **environment(("scikit-learn", "numpy", "tensorflow", "skops", "opencv-python-headless", "scikit-image")),
        # The skops file is a zip with timestamps; the fitted parameters are what must repeat.
        "parameters_sha256": parameters_hash(pipeline),
        "metrics": {
            "cv": "5-fold stratified",
            "recall": {c: float(r) for c, r in zip(CLASSES, recalls, strict=True)},
            "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
            "confusion_matrix": {"labels": list(CLASSES),
                                 "rows_truth": confusion_matrix(y, predicted, labels=list(CLASSES)).tolist()},
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
