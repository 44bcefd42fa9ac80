"""World Heart Federation 2012 echocardiographic criteria for RHD (individuals aged <= 20 years), as pure
functions, and a sampler of hidden valve parameters per class for the generator.

Reményi B, et al. World Heart Federation criteria for echocardiographic diagnosis of rheumatic heart
disease - an evidence-based guideline. Nat Rev Cardiol 2012;9:297-309.
"""

from dataclasses import asdict, dataclass

import numpy as np

MR_MIN_JET_MM = 20.0  # pathological MR: jet >= 2 cm in at least one view
AR_MIN_JET_MM = 10.0  # pathological AR: jet >= 1 cm in at least one view
MIN_VELOCITY_M_S = 3.0  # >= 3 m/s for one complete envelope (MR) / in early diastole (AR)
MIN_VIEWS = 2  # seen in two views
PAN_FRACTION = 0.9  # lasting >= 90% of systole (MR) / diastole (AR): pan-systolic / pan-diastolic
AMVL_THICK_MM = 3.0  # anterior mitral leaflet thickening (age <= 20)
MS_MEAN_GRADIENT_MMHG = 4.0  # mitral stenosis mean gradient


@dataclass(frozen=True)
class Regurgitation:
    views_seen: int  # standard views in which the jet is seen; 0 = no jet
    jet_length_mm: float  # longest jet in any view
    peak_velocity_m_s: float
    duration_fraction: float  # of systole (MR) or diastole (AR), 0..1

    def _all_four(self, min_jet_mm: float) -> bool:
        return (self.views_seen >= MIN_VIEWS and self.jet_length_mm >= min_jet_mm
                and self.peak_velocity_m_s >= MIN_VELOCITY_M_S and self.duration_fraction >= PAN_FRACTION)

    def pathological_mr(self) -> bool:
        return self._all_four(MR_MIN_JET_MM)

    def pathological_ar(self) -> bool:
        return self._all_four(AR_MIN_JET_MM)


NO_JET = Regurgitation(0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class MitralMorphology:
    amvl_thickness_mm: float
    chordal_thickening: bool = False
    restricted_motion: bool = False
    excessive_tip_motion: bool = False

    def count(self) -> int:
        return (int(self.amvl_thickness_mm >= AMVL_THICK_MM) + int(self.chordal_thickening)
                + int(self.restricted_motion) + int(self.excessive_tip_motion))


@dataclass(frozen=True)
class AorticMorphology:
    irregular_thickening: bool = False
    coaptation_defect: bool = False
    restricted_motion: bool = False
    prolapse: bool = False

    def count(self) -> int:
        return (int(self.irregular_thickening) + int(self.coaptation_defect) + int(self.restricted_motion)
                + int(self.prolapse))


@dataclass(frozen=True)
class Valves:
    """The hidden disease parameters of one study."""

    mr: Regurgitation
    ar: Regurgitation
    mitral: MitralMorphology
    aortic: AorticMorphology
    ms_mean_gradient_mmhg: float = 0.0

    def as_dict(self) -> dict:
        def rounded(d: dict) -> dict:
            return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}

        return {"mr": rounded(asdict(self.mr)), "ar": rounded(asdict(self.ar)),
                "mitral": rounded(asdict(self.mitral)), "aortic": asdict(self.aortic),
                "ms_mean_gradient_mmhg": round(self.ms_mean_gradient_mmhg, 2)}

    @classmethod
    def from_dict(cls, d: dict) -> "Valves":
        return cls(Regurgitation(**d["mr"]), Regurgitation(**d["ar"]), MitralMorphology(**d["mitral"]),
                   AorticMorphology(**d["aortic"]), float(d.get("ms_mean_gradient_mmhg", 0.0)))


def _routes(v: Valves) -> tuple[list[str], list[str]]:
    """(Definite routes met, Borderline routes met), by the criteria's letters."""
    path_mr, path_ar = v.mr.pathological_mr(), v.ar.pathological_ar()
    mv_features, av_features = v.mitral.count(), v.aortic.count()
    stenosis = v.ms_mean_gradient_mmhg >= MS_MEAN_GRADIENT_MMHG
    borderline_mv = path_mr or mv_features >= 2
    definite = []
    if path_mr and mv_features >= 2:
        definite.append("Definite A: pathological MR + >= 2 MV features")
    if stenosis:
        definite.append("Definite B: MS mean gradient >= 4 mmHg")
    if path_ar and av_features >= 2:
        definite.append("Definite C: pathological AR + >= 2 AV features")
    if path_ar and borderline_mv:
        definite.append("Definite D: borderline disease of both aortic and mitral valves")
    borderline = []
    if mv_features >= 2 and not path_mr and not stenosis:
        borderline.append("Borderline A: >= 2 MV features without pathological MR or MS")
    if path_mr:
        borderline.append("Borderline B: pathological MR")
    if path_ar:
        borderline.append("Borderline C: pathological AR")
    return definite, borderline


def whf_label(v: Valves) -> str:
    """"normal" | "borderline" | "definite" by the WHF 2012 criteria for age <= 20."""
    definite, borderline = _routes(v)
    return "definite" if definite else "borderline" if borderline else "normal"


def findings(v: Valves) -> list[str]:
    """The criteria met, as a reader would list them; [] for a normal study with nothing notable."""
    out = []
    if v.mr.pathological_mr():
        out.append("pathological MR")
    if v.ar.pathological_ar():
        out.append("pathological AR")
    if v.mitral.count():
        out.append(f"{v.mitral.count()} mitral morphological feature(s)")
    if v.aortic.count():
        out.append(f"{v.aortic.count()} aortic morphological feature(s)")
    definite, borderline = _routes(v)
    return out + (definite or borderline)


@dataclass(frozen=True)
class DiseaseKnobs:
    physiological_mr_rate: float = 0.45  # Normal studies with a trivial (non-pathological) MR jet
    physiological_ar_rate: float = 0.08  # Normal studies with trivial AR
    near_threshold_share: float = 0.35  # Normal/Borderline studies with parameters close to a threshold


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform, to 2 decimals: what the sidecar records is exactly what the label was read from."""
    return round(float(rng.uniform(lo, hi)), 2)


def _pathological(rng: np.random.Generator, min_jet: float, max_jet: float, views: tuple[int, int]) -> Regurgitation:
    return Regurgitation(int(rng.integers(views[0], views[1] + 1)), _u(rng, min_jet, max_jet), _u(rng, 3.0, 5.5),
                         _u(rng, PAN_FRACTION, 1.0))


def _trivial(rng: np.random.Generator, min_jet: float, near: bool, short: tuple[float, float]) -> Regurgitation:
    """A physiological jet: fails at least one criterion; near threshold, it fails exactly one, narrowly."""
    if not near:
        return Regurgitation(int(rng.integers(1, 3)), _u(rng, *short), _u(rng, 1.5, 2.8), _u(rng, 0.2, 0.8))
    jet = _pathological(rng, min_jet, min_jet * 1.3, (2, 3))
    failing = int(rng.integers(4))
    if failing == 0:
        return Regurgitation(1, jet.jet_length_mm, jet.peak_velocity_m_s, jet.duration_fraction)
    if failing == 1:
        return Regurgitation(jet.views_seen, _u(rng, 0.85 * min_jet, min_jet - 0.1), jet.peak_velocity_m_s,
                             jet.duration_fraction)
    if failing == 2:
        return Regurgitation(jet.views_seen, jet.jet_length_mm, _u(rng, 2.55, 2.99), jet.duration_fraction)
    return Regurgitation(jet.views_seen, jet.jet_length_mm, jet.peak_velocity_m_s, _u(rng, 0.7, PAN_FRACTION - 0.01))


def _mitral(rng: np.random.Generator, n_features: int, near: bool = False) -> MitralMorphology:
    """Exactly n_features of the four (thickening among them at random); sub-threshold thickness otherwise."""
    present = set(rng.permutation(4)[:n_features].tolist())
    thick = _u(rng, 3.0, 6.0) if 0 in present else (_u(rng, 2.6, 2.99) if near else _u(rng, 1.5, 2.6))
    return MitralMorphology(round(thick, 2), 1 in present, 2 in present, 3 in present)


def _aortic(rng: np.random.Generator, n_features: int) -> AorticMorphology:
    present = set(rng.permutation(4)[:n_features].tolist())
    return AorticMorphology(0 in present, 1 in present, 2 in present, 3 in present)


def _draw(label: str, rng: np.random.Generator, knobs: DiseaseKnobs) -> Valves:
    near = bool(rng.random() < knobs.near_threshold_share)
    if label == "normal":
        mr = _trivial(rng, MR_MIN_JET_MM, near, (3.0, 19.0)) if rng.random() < knobs.physiological_mr_rate else NO_JET
        ar = _trivial(rng, AR_MIN_JET_MM, near, (3.0, 9.0)) if rng.random() < knobs.physiological_ar_rate else NO_JET
        mitral = _mitral(rng, int(rng.random() < (0.5 if near else 0.1)), near)
        return Valves(mr, ar, mitral, _aortic(rng, int(rng.random() < 0.05)))
    if label == "borderline":
        route = rng.choice(3, p=(0.2, 0.7, 0.1))  # A: MV features only, B: pathological MR, C: pathological AR
        if route == 0:
            trivial = _trivial(rng, MR_MIN_JET_MM, near, (3.0, 19.0)) if rng.random() < 0.5 else NO_JET
            return Valves(trivial, NO_JET, _mitral(rng, int(rng.integers(2, 4))), _aortic(rng, 0))
        if route == 1:
            mr = (_pathological(rng, 20.0, 24.0, (2, 2)) if near else _pathological(rng, 20.0, 35.0, (2, 4)))
            mitral = _mitral(rng, int(rng.integers(0, 2)), near)
            return Valves(mr, NO_JET, mitral, _aortic(rng, int(rng.integers(0, 2))))
        ar = _pathological(rng, 10.0, 25.0, (2, 2))
        return Valves(NO_JET, ar, _mitral(rng, int(rng.integers(0, 2))), _aortic(rng, int(rng.integers(0, 2))))
    if label == "definite":
        route = rng.choice(4, p=(0.7, 0.05, 0.15, 0.1))  # A, B, C, D
        if route == 0:
            return Valves(_pathological(rng, 20.0, 45.0, (2, 4)), NO_JET, _mitral(rng, int(rng.integers(2, 5))),
                          _aortic(rng, int(rng.integers(0, 2))))
        if route == 1:
            return Valves(NO_JET, NO_JET, _mitral(rng, int(rng.integers(1, 4))), _aortic(rng, 0),
                          round(_u(rng, 4.0, 10.0), 2))
        if route == 2:
            return Valves(NO_JET, _pathological(rng, 10.0, 30.0, (2, 2)), _mitral(rng, 0),
                          _aortic(rng, int(rng.integers(2, 5))))
        return Valves(_pathological(rng, 20.0, 35.0, (2, 3)), _pathological(rng, 10.0, 25.0, (2, 2)),
                      _mitral(rng, int(rng.integers(0, 2))), _aortic(rng, int(rng.integers(0, 2))))
    raise ValueError(f"unknown label {label!r}; expected normal, borderline or definite")


def sample_valves(label: str, rng: np.random.Generator, knobs: DiseaseKnobs = DiseaseKnobs()) -> Valves:
    """Plausible hidden parameters for the class, re-drawn until the criteria give that class."""
    for _ in range(100):
        valves = _draw(label, rng, knobs)
        if whf_label(valves) == label:
            return valves
    raise RuntimeError(f"could not sample valves for {label!r} in 100 draws; check the disease knobs")
