"""The study model's decision rule, threshold choice and clinical metrics, on hand-made numbers."""

import numpy as np
import pytest
from rhd.diagnose.ops import decide
from rhd.training.report import evaluate, write_report
from rhd.training.study import choose_thresholds, decisions

CLASSES = ["normal", "borderline", "definite"]


def test_the_gravest_class_reaching_its_threshold_wins_else_the_most_probable_of_the_rest():
    thresholds = {"definite": 0.3, "borderline": 0.4}
    assert decide({"normal": 0.6, "borderline": 0.1, "definite": 0.3}, thresholds) == "definite"
    assert decide({"normal": 0.5, "borderline": 0.41, "definite": 0.09}, thresholds) == "borderline"
    assert decide({"normal": 0.5, "borderline": 0.39, "definite": 0.11}, thresholds) == "normal"
    assert decide({"normal": 0.2, "borderline": 0.7, "definite": 0.1}, {}) == "borderline"  # no thresholds: argmax


def test_thresholds_are_the_highest_that_reach_the_target_recall():
    # 20 definite studies with P(definite) 0.05 .. 1.0: 95% recall needs 19 of them, so the 19th highest, 0.10.
    p_def = np.linspace(0.05, 1.0, 20)
    y = np.array(["definite"] * 20 + ["borderline"] * 10 + ["normal"] * 10)
    proba = np.zeros((40, 3))
    proba[:20, 2] = p_def
    proba[20:30, 1] = np.linspace(0.1, 1.0, 10)  # borderline: 80% recall needs 8 of 10: the 8th highest, 0.3
    proba[30:, 0] = 1.0
    thresholds = choose_thresholds(y, proba, CLASSES)
    assert thresholds["definite"] == pytest.approx(0.10)
    assert thresholds["borderline"] == pytest.approx(0.30)
    called = decisions(proba, CLASSES, thresholds)
    assert (called[:20] == "definite").sum() == 19 and (called[20:30] == "borderline").sum() == 8
    assert (called[30:] == "normal").all()


def test_a_threshold_never_takes_more_than_a_tenth_of_the_normal_studies():
    # A weak model: Normal studies score P(definite) 0.01 .. 0.50, as high as most Definite ones.
    y = np.array(["definite"] * 20 + ["normal"] * 50)
    proba = np.zeros((70, 3))
    proba[:20, 2] = np.linspace(0.02, 0.9, 20)
    proba[20:, 2] = np.linspace(0.01, 0.5, 50)
    proba[:, 0] = 1 - proba[:, 2]
    thresholds = choose_thresholds(y, proba, CLASSES)
    taken = (proba[20:, 2] >= thresholds["definite"]).sum()
    assert taken == 5  # 10% of 50, not the 49 that 95% Definite recall would take
    assert thresholds["definite"] > np.sort(proba[20:, 2])[-6]


def test_metrics_precision_at_prevalence_and_intervals(tmp_path):
    # 100 normal (90 right, 10 called borderline), 50 borderline (40 right, 10 called normal), 50 definite (all right).
    y = np.array(["normal"] * 100 + ["borderline"] * 50 + ["definite"] * 50)
    predicted = np.array(
        ["normal"] * 90 + ["borderline"] * 10 + ["borderline"] * 40 + ["normal"] * 10 + ["definite"] * 50
    )
    proba = np.array([[1.0 if c == p else 0.0 for c in CLASSES] for p in predicted])
    metrics = evaluate(y, proba, predicted, CLASSES, seed=1, rounds=200)
    f = metrics["figures"]
    assert metrics["recall"] == pytest.approx({"normal": 0.9, "borderline": 0.8, "definite": 1.0})
    assert metrics["precision"]["borderline"] == pytest.approx(40 / 50)
    # At PROVAR prevalence, 10% of 95.1% normal studies called borderline swamp the 80% of 4.2% borderline ones.
    expected = 0.8 * 0.042 / (0.1 * 0.951 + 0.8 * 0.042)
    assert f["precision_at_prevalence.borderline"]["value"] == pytest.approx(expected)
    assert f["balanced_accuracy"]["value"] == pytest.approx((0.9 + 0.8 + 1.0) / 3)
    for figure in f.values():
        low, high = figure["ci95"]
        assert low <= figure["value"] <= high
    assert f["recall.normal"]["ci95"][0] < 0.9 < f["recall.normal"]["ci95"][1]  # sampling varies it
    assert f["recall.definite"]["ci95"] == [1.0, 1.0]
    path = write_report(tmp_path, "report", "test", metrics, y, proba, predicted, CLASSES, {"definite": 0.95})
    text = path.read_text()
    assert "| definite | 1.000 (1.000-1.000) | >= 0.95 met |" in text
    assert (tmp_path / "report-confusion.png").stat().st_size > 0 and (tmp_path / "report-curves.png").exists()


def test_criteria_combine_into_classes_by_the_whf_rules():
    from rhd.diagnose.ops import class_probabilities
    from rhd.labels import CRITERIA, whf_class

    none = dict.fromkeys(CRITERIA, 0.0)
    assert class_probabilities(none) == pytest.approx({"normal": 1.0, "borderline": 0.0, "definite": 0.0})
    # Certain criteria give their class exactly; each WHF route once.
    for met, label in (
        ({"pathological_mr": 1.0}, "borderline"),
        ({"pathological_mr": 1.0, "mitral_features": 1.0}, "definite"),
        ({"mitral_stenosis": 1.0}, "definite"),
        ({"pathological_ar": 1.0}, "borderline"),
        ({"pathological_ar": 1.0, "aortic_features": 1.0}, "definite"),
        ({"pathological_ar": 1.0, "mitral_features": 1.0}, "definite"),
        ({"mitral_features": 1.0}, "borderline"),
        ({"aortic_features": 1.0}, "normal"),
    ):
        p = class_probabilities({**none, **met})
        assert p[label] == pytest.approx(1.0), (met, p)
        assert whf_class({c: met.get(c, 0.0) == 1.0 for c in CRITERIA}) == label
    # Uncertain ones mix: P(MR) 0.5 and certain >= 2 mitral features: half Definite A, half Borderline A.
    p = class_probabilities({**none, "pathological_mr": 0.5, "mitral_features": 1.0})
    assert p == pytest.approx({"normal": 0.0, "borderline": 0.5, "definite": 0.5})
    assert sum(class_probabilities(dict.fromkeys(CRITERIA, 0.3)).values()) == pytest.approx(1.0)


def test_a_criterion_is_met_only_when_every_part_is_each_read_from_its_own_measurements():
    from rhd.assemble.ops import STUDY_FEATURE_NAMES
    from rhd.diagnose.ops import PART_MEASUREMENTS, criterion_probabilities
    from rhd.labels import CRITERIA, PARTS
    from rhd.training.study import fit_parts

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(STUDY_FEATURE_NAMES)))
    # Each measured part is met when its first measurement is positive; morphology at random.
    met = np.stack(
        [
            x[:, STUDY_FEATURE_NAMES.index(PART_MEASUREMENTS[p][0])] > 0
            if PART_MEASUREMENTS[p]
            else rng.random(400) < 0.3
            for p in PARTS
        ],
        axis=1,
    )
    parts = fit_parts(x, met)
    mr = [
        STUDY_FEATURE_NAMES.index(PART_MEASUREMENTS[p][0])
        for p in ("mr_length", "mr_views", "mr_velocity", "mr_duration")
    ]
    every = np.zeros((1, len(STUDY_FEATURE_NAMES)))
    every[0, mr] = 4.0
    slow = every.copy()
    slow[0, mr[2]] = -4.0  # long, in many views, pan-systolic, but slow: not pathological
    p_every, p_slow = criterion_probabilities(parts, np.vstack([every, slow]), STUDY_FEATURE_NAMES)[:, 0]
    assert CRITERIA[0] == "pathological_mr" and p_every > 0.9 and p_slow < 0.1


def test_the_definite_threshold_leaves_borderline_its_own_target():
    # Borderline studies score P(definite) as high as half the Definite ones: 95% Definite recall would take all of
    # them; the threshold stops where 20% of them are taken, so 80% Borderline recall stays reachable.
    y = np.array(["definite"] * 20 + ["borderline"] * 20)
    proba = np.zeros((40, 3))
    proba[:20, 2] = np.linspace(0.02, 0.98, 20)
    proba[20:, 2] = np.linspace(0.01, 0.45, 20)
    proba[20:, 1] = 1 - proba[20:, 2]
    thresholds = choose_thresholds(y, proba, CLASSES)
    assert (proba[20:, 2] >= thresholds["definite"]).sum() == 4  # 20% of 20
    assert (decisions(proba, CLASSES, thresholds)[20:] == "borderline").sum() >= 16


def test_a_missed_target_names_the_parts_it_rests_on_and_the_generator_is_hashed():
    from rhd.training.study import generator_of_record, missed_targets

    parts = {
        "mr_length": {"met": 10, "sensitivity": 0.95, "specificity": 0.90},
        "ar_length": {"met": 10, "sensitivity": 0.45, "specificity": 0.99},
    }
    lines = missed_targets({"normal": 0.86, "borderline": 0.85, "definite": 0.83}, parts)
    assert len(lines) == 2  # borderline met its 0.80
    assert "normal" in lines[0] and "mr_length 0.90" in lines[0] and "ar_length" not in lines[0]
    assert "definite" in lines[1] and "ar_length 0.45 (diastolic_jet_length_mm_max)" in lines[1]
    first, again = generator_of_record(), generator_of_record()
    assert first["sha256"] == again["sha256"] and first["rules"]["AMVL_THICK_MM"] == 3.0
