"""Calibration (ECE, reliability diagram) and recall by subgroup of the study classifier, on hand-made numbers."""

import numpy as np
import pytest
from rhd.training.report import (
    calibration,
    evaluate,
    plot_reliability,
    subgroup_recall,
    trust_markdown,
    write_report,
)

CLASSES = ["normal", "borderline", "definite"]


def _calibrated_by_construction() -> tuple[np.ndarray, np.ndarray]:
    """20 studies at P(normal) 0.6 (12 normal, 4 borderline, 4 definite) and 10 at P(normal) 0.8 (8 normal, 1 and
    1): every probability comes true exactly as often as it says, for the top class and for each class."""
    proba = np.array([[0.6, 0.2, 0.2]] * 20 + [[0.8, 0.1, 0.1]] * 10)
    y = np.array(["normal"] * 12 + ["borderline"] * 4 + ["definite"] * 4 + ["normal"] * 8 + ["borderline", "definite"])
    return y, proba


def _over_confident() -> tuple[np.ndarray, np.ndarray]:
    """4 studies at P(normal) 0.9 of which 2 are normal, 2 at P(borderline) 0.7 that are both normal."""
    proba = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.2, 0.7, 0.1]] * 2)
    y = np.array(["normal", "normal", "borderline", "definite", "normal", "normal"])
    return y, proba


def test_probabilities_that_come_true_as_often_as_they_say_have_no_calibration_error():
    y, proba = _calibrated_by_construction()
    result = calibration(y, proba, CLASSES, rounds=200)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    assert result["ece_per_class"] == pytest.approx(dict.fromkeys(CLASSES, 0.0), abs=1e-12)
    assert result["reliability"] == [
        pytest.approx({"low": 0.5, "high": 0.6, "confidence": 0.6, "accuracy": 0.6, "count": 20}),
        pytest.approx({"low": 0.7, "high": 0.8, "confidence": 0.8, "accuracy": 0.8, "count": 10}),
    ]


def test_a_model_whose_classes_are_drawn_from_its_probabilities_is_calibrated():
    rng = np.random.default_rng(3)
    proba = rng.dirichlet([1.0, 1.0, 1.0], size=20_000)
    y = np.array(CLASSES)[[rng.choice(3, p=p) for p in proba]]
    result = calibration(y, proba, CLASSES, rounds=50)
    assert result["ece"] < 0.02  # finite-sample noise only
    assert all(value < 0.02 for value in result["ece_per_class"].values())
    assert result["figures"]["ece"]["ci95"][1] < 0.03


def test_an_over_confident_model_has_the_calibration_error_computed_by_hand():
    y, proba = _over_confident()
    result = calibration(y, proba, CLASSES, rounds=200)
    # Top class: bin (0.8, 0.9]: 4 studies, confidence 0.9, accuracy 0.5; bin (0.6, 0.7]: 2, 0.7 and 0.
    assert result["ece"] == pytest.approx(4 / 6 * 0.4 + 2 / 6 * 0.7)  # 0.5
    assert result["reliability"] == [
        pytest.approx({"low": 0.6, "high": 0.7, "confidence": 0.7, "accuracy": 0.0, "count": 2}),
        pytest.approx({"low": 0.8, "high": 0.9, "confidence": 0.9, "accuracy": 0.5, "count": 4}),
    ]
    # normal: P 0.9 x4 (2 normal: gap 0.4), P 0.2 x2 (both normal: gap 0.8).
    # borderline: P 0.05 x4 (1 borderline: gap 0.2), P 0.7 x2 (none: gap 0.7).
    # definite: P 0.05 x4 and 0.1 x2 share the bin (0, 0.1]: mean P 0.4 / 6, 1 definite of 6: gap 0.1.
    assert result["ece_per_class"] == pytest.approx(
        {"normal": 4 / 6 * 0.4 + 2 / 6 * 0.8, "borderline": 4 / 6 * 0.2 + 2 / 6 * 0.7, "definite": 0.1}
    )
    f = result["figures"]
    assert set(f) == {"ece", "ece.normal", "ece.borderline", "ece.definite"}
    for key, figure in f.items():
        assert set(figure) == {"value", "ci95"}
        low, high = figure["ci95"]
        assert 0.0 <= low <= high <= 1.0, key
    assert result["studies"] == 6 and result["bins"] == 10 and result["bootstrap_rounds"] == 200


def test_calibration_refuses_probabilities_that_do_not_match_the_studies():
    y, proba = _over_confident()
    with pytest.raises(ValueError):
        calibration(y[:-1], proba, CLASSES)
    with pytest.raises(ValueError):
        calibration(np.array(["normal"] * 5 + ["unknown"]), proba, CLASSES)


def test_plot_reliability_writes_a_png(tmp_path):
    y, proba = _over_confident()
    path = plot_reliability(calibration(y, proba, CLASSES, rounds=20), tmp_path / "report-reliability.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _subgroup_example() -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    # F: 10 definite (8 found), 2 normal (both found). M: 3 normal (2 found), 4 borderline (1 found), no definite.
    y = ["definite"] * 10 + ["normal"] * 2 + ["normal"] * 3 + ["borderline"] * 4
    predicted = (
        ["definite"] * 8
        + ["borderline"] * 2
        + ["normal"] * 2
        + ["normal", "normal", "borderline"]
        + ["borderline", "normal", "normal", "definite"]
    )
    sex = ["F"] * 12 + ["M"] * 7
    device = ["vscan"] * 6 + ["lumify"] * 13
    return np.array(y), np.array(predicted), {"sex": sex, "device": device}


def test_subgroup_recall_counts_studies_and_recall_per_class_within_each_group():
    y, predicted, groups = _subgroup_example()
    result = subgroup_recall(y, predicted, CLASSES, groups, rounds=200)
    assert result["classes"] == CLASSES and result["min_studies"] == 10 and result["bootstrap_rounds"] == 200
    sex = result["groupings"]["sex"]
    assert list(sex) == ["F", "M"]
    assert sex["F"]["studies"] == 12
    assert sex["F"]["per_class"] == {"normal": 2, "borderline": 0, "definite": 10}
    assert set(sex["F"]["recall"]) == {"normal", "definite"}  # no borderline study among F: no recall
    assert sex["F"]["recall"]["definite"]["value"] == pytest.approx(0.8)
    low, high = sex["F"]["recall"]["definite"]["ci95"]  # 10 definite studies: an interval
    assert low < 0.8 < high and 0.0 <= low and high <= 1.0
    assert sex["F"]["recall"]["normal"] == {"value": 1.0}  # 2 studies: no interval
    assert sex["M"]["studies"] == 7
    assert sex["M"]["per_class"] == {"normal": 3, "borderline": 4, "definite": 0}
    assert sex["M"]["recall"] == {"normal": {"value": pytest.approx(2 / 3)}, "borderline": {"value": 0.25}}
    device = result["groupings"]["device"]
    assert {v: g["studies"] for v, g in device.items()} == {"lumify": 13, "vscan": 6}
    assert device["vscan"]["recall"] == {"definite": {"value": 1.0}}
    assert device["lumify"]["per_class"] == {"normal": 5, "borderline": 4, "definite": 4}
    assert device["lumify"]["recall"]["definite"] == {"value": 0.5}
    assert device["lumify"]["recall"]["normal"] == {"value": pytest.approx(4 / 5)}


def test_subgroup_recall_refuses_a_grouping_of_another_length():
    y, predicted, _ = _subgroup_example()
    with pytest.raises(ValueError, match="sex"):
        subgroup_recall(y, predicted, CLASSES, {"sex": ["F", "M"]})


def test_trust_markdown_shows_calibration_every_grouping_and_the_reliability_diagram(tmp_path):
    y, proba = _over_confident()
    cal = calibration(y, proba, CLASSES, rounds=50)
    sy, predicted, groups = _subgroup_example()
    groups["age_band"] = ["5-9"] * 9 + ["10-14"] * 10
    lines = trust_markdown(cal, subgroup_recall(sy, predicted, CLASSES, groups, rounds=50))
    text = "\n".join(lines)
    assert "![reliability diagram](report-reliability.png)" in text
    assert f"| top class | {cal['figures']['ece']['value']:.3f} (" in text
    for c in CLASSES:
        assert f"| {c} (one vs rest) |" in text
    for grouping in ("sex", "device", "age_band"):
        assert f"### {grouping}" in text
        assert f"| {grouping} | studies | recall normal | recall borderline | recall definite |" in text
    for value in ("F", "M", "vscan", "lumify", "5-9", "10-14"):
        assert f"| {value} |" in text
    assert "| M | 7 | 0.667, n=3 | 0.250, n=4 | - |" in text
    assert "| F | 12 | 1.000, n=2 | - | 0.800 (" in text

    # As write_report's notes, beside the PNG that plot_reliability writes.
    called = np.array(["normal"] * 4 + ["borderline"] * 2)
    metrics = evaluate(y, proba, called, CLASSES, rounds=20)
    plot_reliability(cal, tmp_path / "report-reliability.png", "test")
    report = write_report(tmp_path, "report", "test", metrics, y, proba, called, CLASSES, {}, notes=lines).read_text()
    assert "## Calibration" in report and "## Recall by subgroup" in report
    assert (tmp_path / "report-reliability.png").stat().st_size > 0
