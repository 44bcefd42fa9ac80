"""The diagnose stage's answer for each kind of study: a label with every WHF criterion's estimate, a referral
that still shows the estimates when the evidence is short, and a referral without any score when the criteria do
not apply to the patient (over 20, or age unknown)."""

import asyncio
import itertools
from pathlib import Path

import pytest
from rhd.assemble.ops import STUDY_FEATURE_NAMES, STUDY_FEATURE_SET
from rhd.diagnose.service import Diagnose
from rhd.labels import CRITERIA
from rhd.runtime.settings import Settings
from rhd.runtime.stage import Position
from rhd.v1 import rhd_pb2 as pb

MODELS = Path(__file__).resolve().parents[2] / "models"  # trained by make models (tests/training needs them)
AT = Position(0, 0, 0.0)
# A study with a long pan-systolic MR jet in 3 views at 4.2 m/s, both traces read, every colour video phased, valves
# of normal shape on B-mode: Borderline B.
GOOD = {
    **dict.fromkeys(STUDY_FEATURE_NAMES, 0.0),
    "systolic_jet_length_mm_max": 28.0,
    "second_view_systolic_jet_mm": 22.0,
    "views_with_systolic_jet": 3.0,
    "systolic_jet_cover_max": 1.0,
    "mr_peak_velocity_m_s": 4.2,
    "mr_systolic_cover": 0.98,
    "phase_known_fraction": 1.0,
    "colour_videos_read": 5.0,
    "mitral_trace_read": 1.0,
    "aortic_trace_read": 1.0,
    # B-mode: valves of normal shape, seen in 3 (mitral) and 2 (aortic) videos
    "amvl_thickness_mm": 2.0,
    "chord_thickness_mm": 0.9,
    "mitral_opening": 0.52,
    "mitral_coaptation_mm": -1.2,
    "aortic_thickness_mm": 0.5,
    "aortic_opening": 0.45,
    "aortic_closure_bow_mm": 0.15,
    "aortic_gap_mm": 0.6,
    "mitral_valve_read": 3.0,
    "aortic_valve_read": 2.0,
}


STUDY_IDS = itertools.count()


def study(age: str | None, **changes: float) -> pb.StudyFeatures:
    values = {**GOOD, **changes}
    return pb.StudyFeatures(
        study_id=f"S{next(STUDY_IDS)}",
        completeness=pb.COMPLETENESS_COMPLETE,
        frames=pb.FrameCounts(expected=300, analysed=280, skipped=20),
        features=pb.FeatureVector(
            feature_set=STUDY_FEATURE_SET, names=STUDY_FEATURE_NAMES, values=[values[n] for n in STUDY_FEATURE_NAMES]
        ),
        clinical={} if age is None else {"age_years": age},
    )


@pytest.fixture(scope="module")
def stage():
    diagnose = Diagnose()
    asyncio.run(diagnose.start(Settings(models_dir=MODELS)))
    return diagnose


def answer(stage: Diagnose, features: pb.StudyFeatures) -> pb.Diagnosis:
    [output] = stage.handle(features, AT)
    return output.message


def test_a_child_with_pathological_mr_is_labelled_with_each_criterions_estimate(stage):
    d = answer(stage, study("12.4"))
    assert not d.referred and d.label != pb.LABEL_UNSPECIFIED
    assert [c.criterion for c in d.criteria] == list(CRITERIA)
    mr = d.criteria[0]
    assert mr.met and mr.probability > 0.5 and mr.measurements["mr_peak_velocity_m_s"] == pytest.approx(4.2)
    assert {e.name for e in d.evidence} >= {"systolic_jet_length_mm_max", "mr_peak_velocity_m_s"}


def test_short_evidence_is_referred_with_its_estimates_shown(stage):
    d = answer(stage, study("12.4", phase_known_fraction=0.0))
    assert d.referred and "no ECG" in d.referral
    assert d.label == pb.LABEL_UNSPECIFIED and d.probabilities and len(d.criteria) == len(CRITERIA)


@pytest.mark.parametrize(("age", "why"), [("34.0", "age 34 years"), (None, "age unknown")])
def test_the_criteria_do_not_apply_to_adults_or_unknown_ages_who_are_referred_unscored(stage, age, why):
    d = answer(stage, study(age))
    assert d.referred and why in d.referral
    assert d.label == pb.LABEL_UNSPECIFIED and not d.probabilities and not d.criteria


def test_a_replayed_or_republished_study_is_diagnosed_once(stage):
    features = study("12.4")
    assert answer(stage, features).study_id == features.study_id
    assert stage.handle(features, AT) == []  # the same record again (a restart, a rebalance, a replay)
    # Studies diagnosed before this replica started (read back from studies.diagnosed.v1) are not diagnosed again.
    before = study("12.4")
    asyncio.run(stage.partitions_assigned({0}, [before.study_id]))
    assert stage.handle(before, AT) == []


def test_a_study_with_no_frame_analysed_gets_no_label_but_says_why(stage):
    features = study("12.4")
    features.completeness = pb.COMPLETENESS_INCOMPLETE
    features.frames.CopyFrom(pb.FrameCounts(expected=40, failed=40))
    features.reason = "40 frames failed (first: view: model server unavailable)"
    d = answer(stage, features)
    assert d.completeness == pb.COMPLETENESS_FAILED and d.label == pb.LABEL_UNSPECIFIED
    assert not d.probabilities and not d.criteria
    assert d.reason.startswith("no diagnosis possible: not one frame") and "model server unavailable" in d.reason


def test_a_study_model_whose_parameters_are_not_those_its_manifest_recorded_is_refused(tmp_path):
    import json
    import shutil

    from rhd.diagnose.ops import load_study_model
    from rhd.modelstore import ModelIntegrityError

    shutil.copytree(MODELS / "study" / "1", tmp_path / "study" / "1")
    assert load_study_model(tmp_path).version == "study/1"
    manifest = json.loads((tmp_path / "study" / "1" / "manifest.json").read_text())
    manifest["thresholds"] = {k: v / 2 for k, v in manifest["thresholds"].items()}  # a threshold edited by hand
    (tmp_path / "study" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="the manifest recorded"):
        load_study_model(tmp_path)
