"""Names shared by the generator, the models and the stages: views and diagnosis classes."""

# The standard screening views (probe positions): parasternal long and short axis, apical four and five chamber.
VIEWS: tuple[str, ...] = ("plax", "psax", "a4c", "a5c")

# What the view model answers, in its output order: a standard view, or "other" for off-axis and
# poor-quality frames that no view's criteria should be read from.
VIEW_CLASSES: tuple[str, ...] = (*VIEWS, "other")

# Study classes by the World Heart Federation 2012 criteria, in the classifier's order.
CLASSES: tuple[str, ...] = ("normal", "borderline", "definite")

# The WHF 2012 criteria a study's class is decided by (age <= 20), each a yes or no: pathological mitral and aortic
# regurgitation (all four of length, views, velocity, duration), mitral stenosis (mean gradient >= 4 mmHg), and >= 2
# morphological features of the mitral and of the aortic valve.
CRITERIA: tuple[str, ...] = (
    "pathological_mr",
    "pathological_ar",
    "mitral_stenosis",
    "mitral_features",
    "aortic_features",
)

# The conditions each criterion is made of, each estimated on its own from its own measurements: a criterion is met
# when all of its parts are (pathological MR: a jet >= 2 cm, seen in >= 2 views, >= 3 m/s, pan-systolic), or, for the
# morphological ones, when at least CRITERION_NEEDS of them are (>= 2 of the valve's four features).
CRITERION_PARTS: dict[str, tuple[str, ...]] = {
    "pathological_mr": ("mr_length", "mr_views", "mr_velocity", "mr_duration"),
    "pathological_ar": ("ar_length", "ar_views", "ar_velocity", "ar_duration"),
    "mitral_stenosis": ("ms_gradient",),
    "mitral_features": ("amvl_thickening", "chordal_thickening", "mitral_restricted", "mitral_tip_motion"),
    "aortic_features": ("aortic_thickening", "aortic_coaptation_defect", "aortic_restricted", "aortic_prolapse"),
}
CRITERION_NEEDS: dict[str, int] = {
    name: 2 if name.endswith("_features") else len(parts) for name, parts in CRITERION_PARTS.items()
}
PARTS: tuple[str, ...] = tuple(part for name in CRITERIA for part in CRITERION_PARTS[name])


def criterion_met(name: str, parts: dict[str, bool]) -> bool:
    """Whether criterion `name` is met, given which of its parts are."""
    return sum(bool(parts[p]) for p in CRITERION_PARTS[name]) >= CRITERION_NEEDS[name]


def whf_routes(met: dict[str, bool]) -> tuple[list[str], list[str]]:
    """(Definite routes met, Borderline routes met) by the WHF 2012 rules, named by the guideline's letters, from
    which of CRITERIA are met. The one statement of the rules: the generator labels by it, diagnose decides by it."""
    path_mr, path_ar, stenosis = met["pathological_mr"], met["pathological_ar"], met["mitral_stenosis"]
    mv_features, av_features = met["mitral_features"], met["aortic_features"]
    definite = []
    if path_mr and mv_features:
        definite.append("Definite A: pathological MR + >= 2 MV features")
    if stenosis:
        definite.append("Definite B: MS mean gradient >= 4 mmHg")
    if path_ar and av_features:
        definite.append("Definite C: pathological AR + >= 2 AV features")
    if (path_mr or mv_features) and path_ar:
        definite.append("Definite D: borderline disease of both aortic and mitral valves")
    borderline = []
    if mv_features and not path_mr and not stenosis:
        borderline.append("Borderline A: >= 2 MV features without pathological MR or MS")
    if path_mr:
        borderline.append("Borderline B: pathological MR")
    if path_ar:
        borderline.append("Borderline C: pathological AR")
    return definite, borderline


def whf_class(met: dict[str, bool]) -> str:
    """ "normal" | "borderline" | "definite" from which of CRITERIA are met."""
    definite, borderline = whf_routes(met)
    return "definite" if definite else "borderline" if borderline else "normal"
