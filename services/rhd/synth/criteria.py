"""World Heart Federation 2012 echocardiographic criteria for RHD (individuals aged <= 20 years) as pure
functions, and a sampler of the hidden valve parameters of one synthetic study per class.

Reményi B, et al. World Heart Federation criteria for echocardiographic diagnosis of rheumatic heart
disease - an evidence-based guideline. Nat Rev Cardiol 2012;9:297-309.

The rules and the sampler are described in docs/whf2012.md.
"""

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rhd.labels import whf_routes

MR_MIN_JET_MM = 20.0  # pathological MR: jet >= 2 cm in at least one view
AR_MIN_JET_MM = 10.0  # pathological AR: jet >= 1 cm in at least one view
MIN_VELOCITY_M_S = 3.0  # >= 3 m/s for one complete envelope (MR) / in early diastole (AR)
MIN_VIEWS = 2  # seen in two views
PAN_FRACTION = 0.9  # a jet lasting >= 90% of systole (MR) / diastole (AR) is pan-systolic / pan-diastolic
AMVL_THICK_MM = 3.0  # anterior mitral leaflet thickening >= 3 mm (age <= 20)
MS_MEAN_GRADIENT_MMHG = 4.0  # mitral stenosis mean gradient >= 4 mmHg

LABELS = ("normal", "borderline", "definite")

_MR_MAX_VIEWS = 4  # standard views that can show MR: PLAX, A4C, PSAX, A5C (the generator's MR_VIEWS)
_AR_MAX_VIEWS = 2  # views with the aortic valve in plane: PLAX, A5C (the generator's AR_VIEWS)
_NEAR = 0.15  # "near a threshold": within 15% of it
_MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class Regurgitation:
    """One regurgitant jet as measured across the standard views."""

    views_seen: int  # standard views in which the jet is seen; 0 = no jet
    jet_length_mm: float  # longest jet in any view (0 when none)
    peak_velocity_m_s: float  # 0 when none
    duration_fraction: float  # fraction of systole (MR) or diastole (AR) the jet lasts, 0..1

    def _meets_all(self, min_jet_mm: float) -> bool:
        return (
            self.views_seen >= MIN_VIEWS
            and self.jet_length_mm >= min_jet_mm
            and self.peak_velocity_m_s >= MIN_VELOCITY_M_S
            and self.duration_fraction >= PAN_FRACTION
        )

    def pathological_mr(self) -> bool:
        """All four: >= 2 views, jet >= 2 cm, >= 3 m/s, pan-systolic."""
        return self._meets_all(MR_MIN_JET_MM)

    def pathological_ar(self) -> bool:
        """All four: >= 2 views, jet >= 1 cm, >= 3 m/s, pan-diastolic."""
        return self._meets_all(AR_MIN_JET_MM)


NO_JET = Regurgitation(0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class MitralMorphology:
    """The four morphological features of the mitral valve in RHD."""

    amvl_thickness_mm: float
    chordal_thickening: bool = False
    restricted_motion: bool = False
    excessive_tip_motion: bool = False  # excessive leaflet tip motion during systole

    def count(self) -> int:
        """Features present, 0-4; AMVL thickness >= AMVL_THICK_MM counts as one."""
        return (
            int(self.amvl_thickness_mm >= AMVL_THICK_MM)
            + int(self.chordal_thickening)
            + int(self.restricted_motion)
            + int(self.excessive_tip_motion)
        )


@dataclass(frozen=True)
class AorticMorphology:
    """The four morphological features of the aortic valve in RHD."""

    irregular_thickening: bool = False  # irregular or focal thickening
    coaptation_defect: bool = False
    restricted_motion: bool = False
    prolapse: bool = False

    def count(self) -> int:
        """Features present, 0-4."""
        return (
            int(self.irregular_thickening)
            + int(self.coaptation_defect)
            + int(self.restricted_motion)
            + int(self.prolapse)
        )


def _plain(part: Any) -> dict:
    """A dataclass as a JSON-ready dict in field order: ints, bools, floats rounded to 2 decimals."""
    out: dict = {}
    for f in fields(part):
        value = getattr(part, f.name)
        out[f.name] = round(float(value), 2) if f.type is float else f.type(value)
    return out


def _typed(kind: type, d: dict) -> Any:
    return kind(**{f.name: f.type(d[f.name]) for f in fields(kind)})


@dataclass(frozen=True)
class Valves:
    """The hidden disease parameters of one study."""

    mr: Regurgitation
    ar: Regurgitation
    mitral: MitralMorphology
    aortic: AorticMorphology
    ms_mean_gradient_mmhg: float = 0.0

    def as_dict(self) -> dict:
        """JSON-ready nested dict, floats rounded to 2 decimals, keys in field order."""
        return {
            "mr": _plain(self.mr),
            "ar": _plain(self.ar),
            "mitral": _plain(self.mitral),
            "aortic": _plain(self.aortic),
            "ms_mean_gradient_mmhg": round(float(self.ms_mean_gradient_mmhg), 2),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Valves":
        """Inverse of as_dict."""
        return cls(
            _typed(Regurgitation, d["mr"]),
            _typed(Regurgitation, d["ar"]),
            _typed(MitralMorphology, d["mitral"]),
            _typed(AorticMorphology, d["aortic"]),
            float(d.get("ms_mean_gradient_mmhg", 0.0)),
        )


def parts_met(v: Valves) -> dict[str, bool]:
    """Which parts of the WHF 2012 criteria (rhd.labels.PARTS) the valves meet."""
    out = {}
    for jet, r, min_mm in (("mr", v.mr, MR_MIN_JET_MM), ("ar", v.ar, AR_MIN_JET_MM)):
        out[f"{jet}_length"] = r.jet_length_mm >= min_mm
        out[f"{jet}_views"] = r.views_seen >= MIN_VIEWS
        out[f"{jet}_velocity"] = r.peak_velocity_m_s >= MIN_VELOCITY_M_S
        out[f"{jet}_duration"] = r.duration_fraction >= PAN_FRACTION
    out["ms_gradient"] = v.ms_mean_gradient_mmhg >= MS_MEAN_GRADIENT_MMHG
    out["amvl_thickening"] = v.mitral.amvl_thickness_mm >= AMVL_THICK_MM
    out["chordal_thickening"] = v.mitral.chordal_thickening
    out["mitral_restricted"] = v.mitral.restricted_motion
    out["mitral_tip_motion"] = v.mitral.excessive_tip_motion
    out["aortic_thickening"] = v.aortic.irregular_thickening
    out["aortic_coaptation_defect"] = v.aortic.coaptation_defect
    out["aortic_restricted"] = v.aortic.restricted_motion
    out["aortic_prolapse"] = v.aortic.prolapse
    return out


def criteria_met(v: Valves) -> dict[str, bool]:
    """Which of the WHF 2012 criteria (rhd.labels.CRITERIA) the valves meet."""
    return {
        "pathological_mr": v.mr.pathological_mr(),
        "pathological_ar": v.ar.pathological_ar(),
        "mitral_stenosis": v.ms_mean_gradient_mmhg >= MS_MEAN_GRADIENT_MMHG,
        "mitral_features": v.mitral.count() >= 2,
        "aortic_features": v.aortic.count() >= 2,
    }


def _routes(v: Valves) -> tuple[list[str], list[str]]:
    """(Definite routes met, Borderline routes met), named by the guideline's letters."""
    return whf_routes(criteria_met(v))


def whf_label(v: Valves) -> str:
    """ "normal" | "borderline" | "definite" by the WHF 2012 criteria for age <= 20."""
    definite, borderline = _routes(v)
    return "definite" if definite else "borderline" if borderline else "normal"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("s" if n != 1 else "")


def findings(v: Valves) -> list[str]:
    """The criteria met, as a reader would list them; [] for a normal study with nothing notable."""
    out = []
    if v.mr.pathological_mr():
        out.append("pathological MR")
    if v.ar.pathological_ar():
        out.append("pathological AR")
    if v.mitral.count():
        out.append(_plural(v.mitral.count(), "mitral morphological feature"))
    if v.aortic.count():
        out.append(_plural(v.aortic.count(), "aortic morphological feature"))
    if v.ms_mean_gradient_mmhg >= MS_MEAN_GRADIENT_MMHG:
        out.append(f"mitral stenosis: mean gradient {v.ms_mean_gradient_mmhg:.1f} mmHg")
    definite, borderline = _routes(v)
    return out + (definite or borderline)


@dataclass(frozen=True)
class DiseaseKnobs:
    """Knobs of the hidden-parameter sampler; defaults documented in docs/whf2012.md."""

    physiological_mr_rate: float = 0.45  # share of Normal studies with a trivial (non-pathological) MR jet
    physiological_ar_rate: float = 0.08  # share of Normal studies with trivial AR
    near_threshold_share: float = 0.35  # share of Normal/Borderline studies with parameters within ~15% of a threshold

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"disease.{f.name} must lie in [0, 1], got {value!r}")


# --- sampler ---------------------------------------------------------------------------------------------------
# Every value is kept to 2 decimals, so the sidecar (as_dict) holds exactly what the label was read from.


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 2)


def _between(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi], both included."""
    return int(rng.integers(lo, hi + 1))


def _pathological(
    rng: np.random.Generator, min_jet: float, max_jet: float, max_views: int, near: bool = False
) -> Regurgitation:
    """A jet meeting all four criteria; near: just over each line (2 views, within 15% on length and velocity)."""
    if near:
        return Regurgitation(
            MIN_VIEWS,
            _u(rng, min_jet, min_jet * (1 + _NEAR)),
            _u(rng, MIN_VELOCITY_M_S, MIN_VELOCITY_M_S * (1 + _NEAR)),
            _u(rng, PAN_FRACTION, 1.0),
        )
    return Regurgitation(
        _between(rng, MIN_VIEWS, max_views), _u(rng, min_jet, max_jet), _u(rng, 3.0, 5.5), _u(rng, PAN_FRACTION, 1.0)
    )


def _physiological(
    rng: np.random.Generator, min_jet: float, short_from: float, long_to: float, max_views: int, near: bool
) -> Regurgitation:
    """A jet failing at least one criterion.

    Near: meets three criteria and misses the fourth narrowly (one view only, or within 15% on length, velocity
    or duration). Otherwise it misses clearly: short (< 80% of the length), or long but brief (<= 70% of the
    phase) or slow (<= 2.5 m/s).
    """
    if near:
        views, length = _between(rng, MIN_VIEWS, max_views), _u(rng, min_jet, min_jet * 1.3)
        velocity, duration = _u(rng, 3.0, 5.0), _u(rng, PAN_FRACTION, 1.0)
        missed = int(rng.integers(4))
        if missed == 0:
            views = 1
        elif missed == 1:
            length = _u(rng, min_jet * (1 - _NEAR), min_jet - 0.1)
        elif missed == 2:
            velocity = _u(rng, 2.6, MIN_VELOCITY_M_S - 0.01)
        else:
            duration = _u(rng, 0.75, PAN_FRACTION - 0.01)
        return Regurgitation(views, length, velocity, duration)
    kind = rng.choice(3, p=(0.6, 0.25, 0.15))  # short, long but brief, long but slow
    if kind == 0:
        return Regurgitation(
            _between(rng, 1, 2), _u(rng, short_from, 0.8 * min_jet), _u(rng, 1.5, 4.5), _u(rng, 0.2, 1.0)
        )
    if kind == 1:
        return Regurgitation(
            _between(rng, 1, max_views), _u(rng, min_jet, long_to), _u(rng, 2.0, 4.5), _u(rng, 0.2, 0.7)
        )
    return Regurgitation(_between(rng, 1, max_views), _u(rng, min_jet, long_to), _u(rng, 1.5, 2.5), _u(rng, 0.3, 1.0))


def _trivial_mr(rng: np.random.Generator, near: bool) -> Regurgitation:
    return _physiological(rng, MR_MIN_JET_MM, 3.0, 25.0, _MR_MAX_VIEWS, near)


def _trivial_ar(rng: np.random.Generator, near: bool) -> Regurgitation:
    return _physiological(rng, AR_MIN_JET_MM, 5.0, 14.0, _AR_MAX_VIEWS, near)


def _mitral(rng: np.random.Generator, n_features: int, near: bool = False) -> MitralMorphology:
    """Exactly n_features of the four, thickening among them at random.

    A thickened AMVL is 3-6 mm (3-3.45 near), an unthickened one 1.5-2.5 mm (2.6-2.99 near).
    """
    present = set(rng.permutation(4)[:n_features].tolist())
    if 0 in present:
        thick = _u(rng, AMVL_THICK_MM, AMVL_THICK_MM * (1 + _NEAR)) if near else _u(rng, AMVL_THICK_MM, 6.0)
    else:
        thick = _u(rng, 2.6, AMVL_THICK_MM - 0.01) if near else _u(rng, 1.5, 2.5)
    return MitralMorphology(thick, 1 in present, 2 in present, 3 in present)


def _aortic(rng: np.random.Generator, n_features: int) -> AorticMorphology:
    present = set(rng.permutation(4)[:n_features].tolist())
    return AorticMorphology(0 in present, 1 in present, 2 in present, 3 in present)


def _normal(rng: np.random.Generator, knobs: DiseaseKnobs, near: bool) -> Valves:
    """Physiological jets at the knobs' rates, at most one feature per valve, no stenosis."""
    mr = _trivial_mr(rng, near) if rng.random() < knobs.physiological_mr_rate else NO_JET
    ar = _trivial_ar(rng, near) if rng.random() < knobs.physiological_ar_rate else NO_JET
    mitral = _mitral(rng, int(rng.random() < (0.5 if near else 0.1)), near)
    return Valves(mr, ar, mitral, _aortic(rng, int(rng.random() < 0.05)))


def _borderline(rng: np.random.Generator, knobs: DiseaseKnobs, near: bool) -> Valves:
    """Route B 70% (pathological MR, < 2 MV features), A 20% (>= 2 MV features), C 10% (pathological AR)."""
    route = rng.choice(3, p=(0.2, 0.7, 0.1))
    if route == 0:  # A; near: exactly 2 features, and an MR jet one criterion short of Definite A
        mitral = _mitral(rng, 2 if near else _between(rng, 2, 3), near)
        mr = _trivial_mr(rng, near) if rng.random() < 0.6 else NO_JET
        return Valves(mr, NO_JET, mitral, _aortic(rng, int(rng.random() < 0.1)))
    if route == 1:  # B; near: just pathological, with one MV feature (one short of Definite A)
        mr = _pathological(rng, MR_MIN_JET_MM, 35.0, _MR_MAX_VIEWS, near)
        mitral = _mitral(rng, 1 if near else _between(rng, 0, 1), near)
        ar = _trivial_ar(rng, near) if rng.random() < knobs.physiological_ar_rate else NO_JET
        return Valves(mr, ar, mitral, _aortic(rng, int(rng.random() < 0.1)))
    # C; near: just pathological AR with one AV feature (one short of Definite C)
    ar = _pathological(rng, AR_MIN_JET_MM, 25.0, _AR_MAX_VIEWS, near)
    mr = _trivial_mr(rng, near) if rng.random() < knobs.physiological_mr_rate else NO_JET
    return Valves(mr, ar, _mitral(rng, _between(rng, 0, 1), near), _aortic(rng, 1 if near else _between(rng, 0, 1)))


def _definite(rng: np.random.Generator, knobs: DiseaseKnobs) -> Valves:
    """Route A 65%, C 15%, D 15% (half MR + AR, half MV features + AR), B 5% (mitral stenosis)."""
    route = rng.choice(4, p=(0.65, 0.05, 0.15, 0.15))
    if route == 0:  # A
        ar = _trivial_ar(rng, False) if rng.random() < knobs.physiological_ar_rate else NO_JET
        return Valves(
            _pathological(rng, MR_MIN_JET_MM, 45.0, _MR_MAX_VIEWS),
            ar,
            _mitral(rng, _between(rng, 2, 4)),
            _aortic(rng, _between(rng, 0, 1)),
        )
    if route == 1:  # B: a stenotic valve is thick and restricted; any MR stays physiological
        mr = _trivial_mr(rng, False) if rng.random() < 0.5 else NO_JET
        return Valves(
            mr,
            NO_JET,
            _mitral(rng, _between(rng, 1, 4)),
            _aortic(rng, _between(rng, 0, 1)),
            _u(rng, MS_MEAN_GRADIENT_MMHG, 12.0),
        )
    if route == 2:  # C
        mr = _trivial_mr(rng, False) if rng.random() < knobs.physiological_mr_rate else NO_JET
        return Valves(
            mr,
            _pathological(rng, AR_MIN_JET_MM, 30.0, _AR_MAX_VIEWS),
            _mitral(rng, _between(rng, 0, 1)),
            _aortic(rng, _between(rng, 2, 4)),
        )
    ar = _pathological(rng, AR_MIN_JET_MM, 25.0, _AR_MAX_VIEWS)  # D
    if rng.random() < 0.5:  # pathological MR and pathological AR
        return Valves(
            _pathological(rng, MR_MIN_JET_MM, 35.0, _MR_MAX_VIEWS),
            ar,
            _mitral(rng, _between(rng, 0, 1)),
            _aortic(rng, _between(rng, 0, 1)),
        )
    mr = _trivial_mr(rng, False) if rng.random() < knobs.physiological_mr_rate else NO_JET
    return Valves(mr, ar, _mitral(rng, _between(rng, 2, 3)), _aortic(rng, _between(rng, 0, 1)))  # MV features + AR


def sample_valves(label: str, rng: np.random.Generator, knobs: DiseaseKnobs = DiseaseKnobs()) -> Valves:
    """Plausible hidden parameters for the class, redrawn (at most 100 times) until the criteria give that class.

    Only `rng` is drawn from, so the same generator state and inputs give the same Valves.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    for _ in range(_MAX_ATTEMPTS):
        near = bool(rng.random() < knobs.near_threshold_share)
        if label == "normal":
            valves = _normal(rng, knobs, near)
        elif label == "borderline":
            valves = _borderline(rng, knobs, near)
        else:
            valves = _definite(rng, knobs)
        if whf_label(valves) == label:
            return valves
    raise RuntimeError(f"no {label} valves in {_MAX_ATTEMPTS} draws; check the disease knobs")
