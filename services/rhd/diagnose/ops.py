"""Study classification as the WHF 2012 guideline reads a study: one calibrated estimate per criterion (pathological
MR, pathological AR, mitral stenosis, >= 2 mitral and >= 2 aortic morphological features), each a scikit-learn
Pipeline (z-score scaler fitted at training, then logistic regression over the study's measurements), combined by
the guideline's rules into P(normal), P(borderline), P(definite); the label follows from decision thresholds chosen
on cross-validation. The evidence is each criterion's estimate with the measurements it rests on."""

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline

from rhd.labels import CLASSES, CRITERIA, whf_class
from rhd.modelstore import read_manifest, version_dir

MODEL_NAME = "study"
MODEL_FILE = "model.skops"
# Types a study model file may contain; anything else is refused rather than unpickled.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.dummy.DummyClassifier",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.bool_",
        "builtins.str",
        "builtins.dict",
    }
)
# What a reader looks at for each criterion (study-v4 names): shown with the criterion's estimate as its evidence.
CRITERION_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    "pathological_mr": (
        "systolic_jet_length_mm_max",
        "views_with_systolic_jet",
        "mr_peak_velocity_m_s",
        "mr_systolic_cover",
    ),
    "pathological_ar": (
        "diastolic_jet_length_mm_max",
        "views_with_diastolic_jet",
        "ar_peak_velocity_m_s",
        "ar_diastolic_cover",
    ),
    "mitral_stenosis": ("ms_mean_gradient_mmhg",),
    # Morphology is not measured yet (no valve stage): estimated from what goes with it in the measurements.
    "mitral_features": (),
    "aortic_features": (),
}


@dataclass(frozen=True)
class StudyModel:
    criteria: dict[str, Pipeline]  # per criterion: P(met) from the study's features
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


def class_probabilities(criteria: Mapping[str, float]) -> dict[str, float]:
    """P(class) from each criterion's probability of being met, taken as independent: the WHF rules applied to every
    combination of criteria met and not, weighted by its probability."""
    out = dict.fromkeys(CLASSES, 0.0)
    for combination in itertools.product((False, True), repeat=len(CRITERIA)):
        met = dict(zip(CRITERIA, combination, strict=True))
        weight = float(np.prod([criteria[c] if m else 1.0 - criteria[c] for c, m in met.items()]))
        out[whf_class(met)] += weight
    return out


def criterion_probabilities(criteria: Mapping[str, Pipeline], x: np.ndarray) -> np.ndarray:
    """[n studies, len(CRITERIA)]: each criterion's P(met) (0 where training never saw it met)."""
    columns = []
    for name in CRITERIA:
        pipeline = criteria[name]
        fitted = list(pipeline.classes_)
        p = pipeline.predict_proba(x)
        columns.append(p[:, fitted.index(True)] if True in fitted else np.zeros(len(x)))
    return np.stack(columns, axis=1)


@dataclass(frozen=True)
class Criterion:
    name: str
    probability: float
    measurements: dict[str, float]
    frames: dict[str, tuple[str, int]] = field(default_factory=dict)  # measurement -> (video, frame) read on


@dataclass(frozen=True)
class Result:
    label: str
    probabilities: dict[str, float]
    criteria: list[Criterion]
    evidence: list[tuple[str, float, float]]  # (measurement, value, P(criterion met)) of the likely criteria


MAX_AGE_YEARS = 20.0  # the WHF 2012 criteria are for individuals aged 20 or younger


@dataclass(frozen=True)
class Referral:
    """Why a study goes to a cardiologist instead of being labelled; `scored`: whether its probabilities are still
    worth showing (the evidence is short) or not (the criteria do not apply to the patient)."""

    reason: str
    scored: bool


def referral(clinical: Mapping[str, str], names: Sequence[str], values: Sequence[float]) -> Referral | None:
    """Why the study goes to a cardiologist instead of being labelled, or None: the criteria do not apply (age over
    20, or not known), or the evidence they need is missing."""
    age = clinical.get("age_years")
    if age is None:
        return Referral("age unknown: the WHF 2012 criteria are for ages up to 20", scored=False)
    if float(age) > MAX_AGE_YEARS:
        return Referral(f"age {float(age):.0f} years: the WHF 2012 criteria are for ages up to 20", scored=False)
    f = dict(zip(names, values, strict=True))
    if f.get("colour_videos_read", 0.0) == 0:
        return Referral(
            "no colour Doppler video in a standard view could be read: regurgitation cannot be judged", True
        )
    if f.get("phase_known_fraction", 0.0) == 0:
        return Referral("no ECG on the colour Doppler videos: jets cannot be placed in systole or diastole", True)
    if not (f.get("mitral_trace_read", 0.0) or f.get("aortic_trace_read", 0.0)):
        return Referral("no spectral Doppler trace: peak velocities and the mitral gradient are unmeasured", True)
    return None


def load_study_model(models_dir: Path, version: int = 0) -> StudyModel:
    path = version_dir(models_dir, MODEL_NAME, version)
    found = set(sio.get_untrusted_types(file=path / MODEL_FILE))
    if found - TRUSTED_TYPES:
        raise ValueError(
            f"refusing {path / MODEL_FILE}: it contains types outside the allow-list: {sorted(found - TRUSTED_TYPES)}"
        )
    criteria = sio.load(path / MODEL_FILE, trusted=sorted(found))
    if not isinstance(criteria, dict) or set(criteria) != set(CRITERIA):
        raise ValueError(f"{path / MODEL_FILE} is not a per-criterion study model (criteria {list(CRITERIA)})")
    manifest = read_manifest(path)
    return StudyModel(
        criteria,
        f"{MODEL_NAME}/{path.name}",
        tuple(manifest["feature_names"]),
        tuple(manifest["classes"]),
        {k: float(v) for k, v in manifest.get("thresholds", {}).items()},
    )


def diagnose(
    model: StudyModel,
    names: Sequence[str],
    values: Sequence[float],
    frames: Mapping[str, tuple[str, int]] | None = None,
) -> Result:
    """The study's class from its features; `frames` (feature -> (video, frame index) it was read on) travel with
    each criterion's measurements as its evidence."""
    if tuple(names) != model.feature_names:
        raise ValueError(
            f"feature names differ from the model's ({len(names)} given, "
            f"{len(model.feature_names)} expected): retrain or upgrade assemble"
        )
    x = np.asarray(values, np.float64).reshape(1, -1)
    if not np.isfinite(x).all():
        raise ValueError("feature vector holds NaN or infinity")
    p_criteria = dict(zip(CRITERIA, map(float, criterion_probabilities(model.criteria, x)[0]), strict=True))
    probabilities = class_probabilities(p_criteria)
    label = decide(probabilities, model.thresholds)
    named = dict(zip(names, map(float, values), strict=True))
    frames = frames or {}
    criteria = [
        Criterion(
            c,
            p_criteria[c],
            {m: named[m] for m in CRITERION_MEASUREMENTS[c]},
            {m: frames[m] for m in CRITERION_MEASUREMENTS[c] if m in frames},
        )
        for c in CRITERIA
    ]
    evidence = [
        (measurement, value, c.probability)
        for c in sorted(criteria, key=lambda c: -c.probability)
        if c.probability >= 0.5
        for measurement, value in c.measurements.items()
    ]
    return Result(label, probabilities, criteria, evidence)
