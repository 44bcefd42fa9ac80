"""WHF 2012 criteria (age <= 20) against hand-worked cases on both sides of every threshold, and the sampler
of hidden parameters: right class, deterministic, overlapping near the thresholds."""

import dataclasses

import numpy as np
import pytest
from rhd.synth.criteria import (
    NO_JET,
    AorticMorphology,
    DiseaseKnobs,
    MitralMorphology,
    Regurgitation,
    Valves,
    findings,
    sample_valves,
    whf_label,
)

MR = Regurgitation(views_seen=2, jet_length_mm=20.0, peak_velocity_m_s=3.0, duration_fraction=0.9)
AR = Regurgitation(views_seen=2, jet_length_mm=10.0, peak_velocity_m_s=3.0, duration_fraction=0.9)
THIN = MitralMorphology(2.0)
CLEAN_AV = AorticMorphology()


def valves(mr=NO_JET, ar=NO_JET, mitral=THIN, aortic=CLEAN_AV, ms=0.0) -> Valves:
    return Valves(mr, ar, mitral, aortic, ms)


@pytest.mark.parametrize(("change", "pathological"), [
    ({}, True),  # every criterion exactly at its threshold
    ({"jet_length_mm": 19.9}, False),
    ({"peak_velocity_m_s": 2.99}, False),
    ({"views_seen": 1}, False),
    ({"duration_fraction": 0.89}, False),
])
def test_pathological_mr_needs_all_four_criteria(change, pathological):
    mr = dataclasses.replace(MR, **change)
    assert mr.pathological_mr() is pathological
    assert whf_label(valves(mr=mr)) == ("borderline" if pathological else "normal")


@pytest.mark.parametrize(("length", "pathological"), [(10.0, True), (9.9, False)])
def test_pathological_ar_needs_a_jet_of_one_centimetre(length, pathological):
    ar = dataclasses.replace(AR, jet_length_mm=length)
    assert ar.pathological_ar() is pathological
    assert not ar.pathological_mr()  # 1 cm is far too short for MR
    assert whf_label(valves(ar=ar)) == ("borderline" if pathological else "normal")


@pytest.mark.parametrize(("thickness", "features"), [(3.0, 2), (2.99, 1)])
def test_leaflet_thickening_counts_from_three_millimetres(thickness, features):
    mitral = MitralMorphology(thickness, chordal_thickening=True)
    assert mitral.count() == features
    # Two features with pathological MR make Definite A; one feature leaves it Borderline B.
    assert whf_label(valves(mr=MR, mitral=mitral)) == ("definite" if features == 2 else "borderline")
    # Two features alone are Borderline A; one alone is Normal.
    assert whf_label(valves(mitral=mitral)) == ("borderline" if features == 2 else "normal")


@pytest.mark.parametrize(("gradient", "label"), [(4.0, "definite"), (3.99, "normal")])
def test_mitral_stenosis_gradient_of_four_mmhg_is_definite_b(gradient, label):
    assert whf_label(valves(ms=gradient)) == label


def test_definite_c_is_pathological_ar_with_two_aortic_features():
    assert whf_label(valves(ar=AR, aortic=AorticMorphology(coaptation_defect=True, prolapse=True))) == "definite"
    assert whf_label(valves(ar=AR, aortic=AorticMorphology(coaptation_defect=True))) == "borderline"
    # Aortic features without pathological AR are not a route to anything.
    assert whf_label(valves(aortic=AorticMorphology(True, True, True, True))) == "normal"


def test_definite_d_is_borderline_disease_of_both_valves():
    assert whf_label(valves(mr=MR, ar=AR)) == "definite"  # pathological MR and pathological AR
    two_mv = MitralMorphology(2.0, restricted_motion=True, excessive_tip_motion=True)
    assert whf_label(valves(ar=AR, mitral=two_mv)) == "definite"  # MV features and pathological AR
    assert whf_label(valves(ar=AR, mitral=MitralMorphology(2.0, restricted_motion=True))) == "borderline"


def test_normal_includes_a_long_jet_that_is_not_pansystolic_and_an_isolated_feature():
    long_brief = Regurgitation(3, 35.0, 4.5, 0.5)
    assert whf_label(valves(mr=long_brief, mitral=MitralMorphology(3.5))) == "normal"
    assert findings(valves()) == []
    listed = findings(valves(mr=MR, mitral=MitralMorphology(3.2, chordal_thickening=True)))
    assert "pathological MR" in listed and any(f.startswith("Definite A") for f in listed)


@pytest.mark.parametrize("label", ["normal", "borderline", "definite"])
def test_sampled_valves_read_as_their_class_and_repeat_by_seed(label):
    rng = np.random.default_rng(42)
    drawn = [sample_valves(label, rng) for _ in range(300)]
    assert all(whf_label(v) == label for v in drawn)
    again = np.random.default_rng(42)
    assert [sample_valves(label, again) for _ in range(300)] == drawn
    assert all(Valves.from_dict(v.as_dict()) == v for v in drawn)  # the sidecar holds exactly what was read


def test_classes_overlap_near_the_thresholds():
    rng = np.random.default_rng(7)
    normal = [sample_valves("normal", rng) for _ in range(500)]
    borderline = [sample_valves("borderline", rng) for _ in range(500)]
    long_normal_jets = [v for v in normal if v.mr.jet_length_mm >= 20.0]  # long, but failing another criterion
    assert len(long_normal_jets) >= 20
    assert sum(2.55 <= v.mr.peak_velocity_m_s < 3.0 for v in normal) >= 10
    assert sum(20.0 <= v.mr.jet_length_mm < 24.0 for v in borderline) >= 50  # just over the line
    assert sum(v.mr.views_seen > 0 for v in normal) == pytest.approx(0.45 * 500, rel=0.2)
    fewer = [sample_valves("normal", rng, DiseaseKnobs(physiological_mr_rate=0.0)) for _ in range(100)]
    assert all(v.mr == NO_JET for v in fewer)


def test_an_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown label"):
        sample_valves("severe", np.random.default_rng(0))
