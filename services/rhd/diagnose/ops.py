"""Study classification as the WHF 2012 guideline reads a study: one calibrated estimate per criterion (pathological
MR, pathological AR, mitral stenosis, >= 2 mitral and >= 2 aortic morphological features), each the product of its
parts' (pathological MR: jet >= 2 cm, seen in >= 2 views, >= 3 m/s, pan-systolic), each part a scikit-learn Pipeline
(z-score scaler fitted at training, then logistic regression over that part's own measurements); the criteria are
combined by the guideline's rules into P(normal), P(borderline), P(definite), and the label follows from decision
thresholds chosen on cross-validation. The evidence is each criterion's estimate with the measurements it rests on."""

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline

from rhd.labels import CLASSES, CRITERIA, CRITERION_NEEDS, CRITERION_PARTS, PARTS, whf_class
from rhd.modelstore import ModelIntegrityError, read_manifest, version_dir

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
# What each part of a criterion is estimated from (study-v5 names), as a reader measures it; a valve's "read" count
# gives the studies whose valve no B-mode video showed their own intercept (their measurement is 0, not small).
PART_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    "mr_length": ("systolic_jet_length_mm_max",),
    "mr_views": ("views_with_systolic_jet", "second_view_systolic_jet_mm"),
    "mr_velocity": ("mr_peak_velocity_m_s",),
    "mr_duration": ("mr_systolic_cover", "systolic_jet_cover_max"),
    "ar_length": ("diastolic_jet_length_mm_max",),
    "ar_views": ("views_with_diastolic_jet",),
    "ar_velocity": ("ar_peak_velocity_m_s",),
    "ar_duration": ("ar_diastolic_cover", "diastolic_jet_cover_max"),
    "ms_gradient": ("ms_mean_gradient_mmhg",),
    "amvl_thickening": ("amvl_thickness_mm", "mitral_valve_read"),
    "chordal_thickening": ("chord_thickness_mm", "mitral_valve_read"),
    "mitral_restricted": ("mitral_opening", "mitral_valve_read"),
    "mitral_tip_motion": ("mitral_coaptation_mm", "mitral_valve_read"),
    "aortic_thickening": ("aortic_thickness_mm", "aortic_valve_read"),
    "aortic_coaptation_defect": ("aortic_gap_mm", "aortic_valve_read"),
    "aortic_restricted": ("aortic_opening", "aortic_valve_read"),
    "aortic_prolapse": ("aortic_closure_bow_mm", "aortic_valve_read"),
}
# What a reader looks at for each criterion: shown with the criterion's estimate as its evidence.
CRITERION_MEASUREMENTS: dict[str, tuple[str, ...]] = {
    name: tuple(dict.fromkeys(m for part in CRITERION_PARTS[name] for m in PART_MEASUREMENTS[part]))
    for name in CRITERIA
}


def part_columns(
    part: str, feature_names: Sequence[str], measurements: Mapping[str, Sequence[str]] = PART_MEASUREMENTS
) -> list[int]:
    """The columns of the study's feature vector a part is estimated from."""
    return [list(feature_names).index(n) for n in measurements[part]]


def at_least(p: np.ndarray, k: int) -> np.ndarray:
    """P(at least k of independent events), row by row, from their probabilities [n, m]."""
    counts = np.zeros((len(p), p.shape[1] + 1))
    counts[:, 0] = 1.0
    for j in range(p.shape[1]):  # the distribution of how many are met, one event at a time
        counts[:, 1:] = counts[:, 1:] * (1 - p[:, [j]]) + counts[:, :-1] * p[:, [j]]
        counts[:, 0] *= 1 - p[:, j]
    return counts[:, k:].sum(axis=1)


@dataclass(frozen=True)
class StudyModel:
    parts: dict[str, Pipeline]  # per part of a criterion (rhd.labels.PARTS): P(met) from its measurements
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


def part_probabilities(
    parts: Mapping[str, Pipeline],
    x: np.ndarray,
    feature_names: Sequence[str],
    measurements: Mapping[str, Sequence[str]] = PART_MEASUREMENTS,
) -> np.ndarray:
    """[n studies, len(PARTS)]: each part's P(met) (0 where training never saw it met)."""
    columns = []
    for name in PARTS:
        pipeline = parts[name]
        fitted = list(pipeline.classes_)
        p = pipeline.predict_proba(x[:, part_columns(name, feature_names, measurements)])
        columns.append(p[:, fitted.index(True)] if True in fitted else np.zeros(len(x)))
    return np.stack(columns, axis=1)


def criterion_probabilities(
    parts: Mapping[str, Pipeline],
    x: np.ndarray,
    feature_names: Sequence[str],
    measurements: Mapping[str, Sequence[str]] = PART_MEASUREMENTS,
) -> np.ndarray:
    """[n studies, len(CRITERIA)]: each criterion's P(met) from its parts' (taken as independent): P(all of them),
    or P(at least two) of a valve's four morphological features."""
    p_parts = part_probabilities(parts, x, feature_names, measurements)
    return np.stack(
        [
            at_least(p_parts[:, [PARTS.index(part) for part in CRITERION_PARTS[c]]], CRITERION_NEEDS[c])
            for c in CRITERIA
        ],
        axis=1,
    )


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
    age, band = clinical.get("age_years"), clinical.get("age_band")
    if age is None and not band:
        return Referral("age unknown: the WHF 2012 criteria are for ages up to 20", scored=False)
    if age is not None and float(age) > MAX_AGE_YEARS:
        return Referral(f"age {float(age):.0f} years: the WHF 2012 criteria are for ages up to 20", scored=False)
    if age is None and band:
        # De-identified studies carry an age band ("15-20", "21+"): scored only when all of it is 20 or under.
        low, _, high = band.rstrip("+").partition("-")
        if band.endswith("+") or not high.isdigit() or float(high) > MAX_AGE_YEARS:
            return Referral(f"age band {band} years: the WHF 2012 criteria are for ages up to 20", scored=False)
    f = dict(zip(names, values, strict=True))
    if f.get("colour_videos_read", 0.0) == 0:
        return Referral(
            "no colour Doppler video in a standard view could be read: regurgitation cannot be judged", True
        )
    if f.get("phase_known_fraction", 0.0) == 0:
        return Referral("no ECG on the colour Doppler videos: jets cannot be placed in systole or diastole", True)
    if not (f.get("mitral_trace_read", 0.0) or f.get("aortic_trace_read", 0.0)):
        return Referral("no spectral Doppler trace: peak velocities and the mitral gradient are unmeasured", True)
    if f.get("mitral_valve_read", 0.0) == 0:
        return Referral("no B-mode video shows the mitral valve in profile: its morphology is unmeasured", True)
    return None


def parameters_hash(parts: Mapping[str, Pipeline], thresholds: Mapping[str, float]) -> str:
    """sha256 of the fitted parameters (each part's scaler and estimator) and the thresholds: recorded in the
    manifest at training (the skops file is a zip with timestamps) and checked when the model loads."""
    digest = hashlib.sha256()
    for name in PARTS:
        scaler, classifier = parts[name][0], parts[name][-1]
        arrays = [scaler.mean_, scaler.scale_]
        arrays += (
            [classifier.coef_, classifier.intercept_] if hasattr(classifier, "coef_") else [classifier.class_prior_]
        )
        for array in arrays:
            digest.update(np.ascontiguousarray(array, np.float64).tobytes())
    digest.update(json.dumps(dict(thresholds), sort_keys=True).encode())
    return digest.hexdigest()


def load_study_model(models_dir: Path, version: int = 0) -> StudyModel:
    path = version_dir(models_dir, MODEL_NAME, version)
    found = set(sio.get_untrusted_types(file=path / MODEL_FILE))
    if found - TRUSTED_TYPES:
        raise ValueError(
            f"refusing {path / MODEL_FILE}: it contains types outside the allow-list: {sorted(found - TRUSTED_TYPES)}"
        )
    parts = sio.load(path / MODEL_FILE, trusted=sorted(found))
    if not isinstance(parts, dict) or set(parts) != set(PARTS):
        raise ValueError(f"{path / MODEL_FILE} is not a per-criterion study model (parts {list(PARTS)})")
    manifest = read_manifest(path)
    thresholds = {k: float(v) for k, v in manifest.get("thresholds", {}).items()}
    found_hash = parameters_hash(parts, thresholds)
    if found_hash != manifest.get("parameters_sha256"):
        raise ModelIntegrityError(
            f"refusing {path}: its parameters hash to {found_hash[:12]}, the manifest recorded "
            f"{str(manifest.get('parameters_sha256'))[:12]}"
        )
    return StudyModel(
        parts, f"{MODEL_NAME}/{path.name}", tuple(manifest["feature_names"]), tuple(manifest["classes"]), thresholds
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
    p_criteria = dict(
        zip(CRITERIA, map(float, criterion_probabilities(model.parts, x, model.feature_names)[0]), strict=True)
    )
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
