"""The demo's table: each diagnosis beside the generator's truth, criteria and measurements both."""

from rhd.local.demo import diagnosis_table, truth_measured
from rhd.synth.criteria import AorticMorphology, MitralMorphology, Regurgitation, Valves, criteria_met
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Progress


def _valves() -> Valves:
    return Valves(
        mr=Regurgitation(views_seen=2, jet_length_mm=27.4, peak_velocity_m_s=3.6, duration_fraction=1.0),
        ar=Regurgitation(views_seen=0, jet_length_mm=0.0, peak_velocity_m_s=0.0, duration_fraction=0.0),
        mitral=MitralMorphology(amvl_thickness_mm=4.2, chordal_thickening=True),
        aortic=AorticMorphology(prolapse=True),
    )


def test_the_truth_line_gives_the_hidden_values_of_the_same_measurements():
    said = truth_measured(_valves())
    for part in (
        "MR 27 mm in 2 views, 3.6 m/s, 100% of systole",
        "AR 0 mm",
        "AMVL 4.2 mm",
        "chords yes",
        "restricted no",
        "prolapse yes",
    ):
        assert part in said


def test_each_study_shows_its_diagnosis_criteria_and_measurements_above_the_truth():
    valves = _valves()
    diagnosis = pb.Diagnosis(study_id="S1", label=pb.LABEL_DEFINITE)
    mr = diagnosis.criteria.add(criterion="pathological_mr", met=True)
    for name, value in (
        ("systolic_jet_length_mm_max", 25.0),
        ("views_with_systolic_jet", 2.0),
        ("mr_peak_velocity_m_s", 3.4),
        ("mr_systolic_cover", 0.9),
    ):
        mr.measurements[name] = value
    progress = Progress(diagnoses={"S1": [diagnosis]})
    truths = {
        "S1": {"label": "definite", "met": criteria_met(valves), "measured": truth_measured(valves)},
        "S2": {"label": "normal", "met": {}},
    }
    lines = diagnosis_table(progress, truths).splitlines()
    s1 = next(i for i, line in enumerate(lines) if line.startswith("S1"))
    assert "MR 25 mm in 2 views, 3.4 m/s, 90% of systole" in lines[s1]
    assert lines[s1 + 1].strip().startswith("truth: MR 27 mm in 2 views")
    assert any(line.startswith("S2") and "(no diagnosis)" in line for line in lines)
