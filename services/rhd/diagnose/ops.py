"""Study classification: one scikit-learn Pipeline (z-score scaler fitted at training, then the
classifier) turns a study's feature vector into Normal / Borderline / Definite with probabilities."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline

from rhd.modelstore import read_manifest, version_dir

MODEL_NAME = "study"
MODEL_FILE = "model.skops"
# Types a study model file may contain; anything else is refused rather than unpickled.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.linear_model._logistic.LogisticRegression",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "builtins.str",
    }
)


@dataclass(frozen=True)
class StudyModel:
    pipeline: Pipeline
    version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    # Decision thresholds chosen at training for recall of the graver classes ({} = most probable class).
    thresholds: dict[str, float] = field(default_factory=dict)


# The order thresholds are tried in: the gravest class first.
GRAVITY = ("definite", "borderline")


def decide(probabilities: dict[str, float], thresholds: dict[str, float]) -> str:
    """Definite when P(definite) reaches its threshold, else Borderline when P(borderline) reaches its own, else
    the most probable of the classes left; without thresholds, the most probable class."""
    for label in GRAVITY:
        if label in thresholds and probabilities.get(label, 0.0) >= thresholds[label]:
            return label
    rest = {c: p for c, p in probabilities.items() if c not in thresholds}
    return max(rest or probabilities, key=(rest or probabilities).__getitem__)


@dataclass(frozen=True)
class Result:
    label: str
    probabilities: dict[str, float]
    evidence: list[tuple[str, float, float]]  # (feature, value, signed contribution to the label's score)


def load_study_model(models_dir: Path, version: int = 0) -> StudyModel:
    path = version_dir(models_dir, MODEL_NAME, version)
    found = set(sio.get_untrusted_types(file=path / MODEL_FILE))
    if found - TRUSTED_TYPES:
        raise ValueError(
            f"refusing {path / MODEL_FILE}: it contains types outside the allow-list: {sorted(found - TRUSTED_TYPES)}"
        )
    pipeline = sio.load(path / MODEL_FILE, trusted=sorted(found))
    manifest = read_manifest(path)
    return StudyModel(
        pipeline,
        f"{MODEL_NAME}/{path.name}",
        tuple(manifest["feature_names"]),
        tuple(manifest["classes"]),
        {k: float(v) for k, v in manifest.get("thresholds", {}).items()},
    )


def diagnose(model: StudyModel, names: Sequence[str], values: Sequence[float], top: int = 5) -> Result:
    if tuple(names) != model.feature_names:
        raise ValueError(
            f"feature names differ from the model's ({len(names)} given, "
            f"{len(model.feature_names)} expected): retrain or upgrade assemble"
        )
    x = np.asarray(values, np.float64).reshape(1, -1)
    if not np.isfinite(x).all():
        raise ValueError("feature vector holds NaN or infinity")
    fitted_classes = [str(c) for c in model.pipeline.classes_]
    probabilities = dict(zip(fitted_classes, map(float, model.pipeline.predict_proba(x)[0]), strict=True))
    label = decide(probabilities, model.thresholds)
    scaler, classifier = model.pipeline[0], model.pipeline[-1]
    z = scaler.transform(x)[0]
    contribution = classifier.coef_[fitted_classes.index(label)] * z
    order = np.argsort(-np.abs(contribution))[:top]
    evidence = [(model.feature_names[i], float(x[0, i]), float(contribution[i])) for i in order]
    return Result(label, probabilities, evidence)
