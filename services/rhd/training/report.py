"""Clinical metrics of a study classifier on a labelled set, with bootstrap 95% intervals, as JSON, Markdown
and PNG: confusion matrix, per-class recall and precision, macro-F1, balanced accuracy, one-vs-rest ROC and
PR curves with their AUC, and precision as it would be at screening prevalence; and whether the model can be
trusted beyond those averages: calibration (ECE, reliability diagram) and recall by subgroup."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from rhd.training.provenance import plot_confusion

# PROVAR's screening prevalence (issue 7): what precision means where the system is used.
PROVAR_PREVALENCE = {"normal": 0.951, "borderline": 0.042, "definite": 0.006}
BOOTSTRAP = 1000


def _point(
    y: np.ndarray, proba: np.ndarray, predicted: np.ndarray, classes: Sequence[str], prevalence: Mapping[str, float]
) -> dict[str, float]:
    """Every figure of one (re)sample, flat: recall.<c>, precision.<c>, precision_at_prevalence.<c>, ..."""
    labels = list(classes)
    matrix = confusion_matrix(y, predicted, labels=labels).astype(np.float64)
    # Per class, every study of it: one predicted as none of the classes (referred) is a miss, not left out.
    rows = np.array([(np.asarray(y) == c).sum() for c in labels], np.float64)
    rates = matrix / np.maximum(rows[:, None], 1)  # P(predicted | truth)
    weights = np.array([prevalence[c] for c in labels])
    out: dict[str, float] = {
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(np.trace(matrix) / max(len(y), 1)),
    }
    for i, c in enumerate(labels):
        called = matrix[:, i].sum()
        out[f"recall.{c}"] = float(rates[i, i])
        out[f"precision.{c}"] = float(matrix[i, i] / called) if called else 0.0
        at_prevalence = float(rates[:, i] @ weights)  # P(predicted c) in a screened population
        out[f"precision_at_prevalence.{c}"] = float(rates[i, i] * weights[i] / at_prevalence) if at_prevalence else 0.0
        truth = (y == c).astype(int)
        if 0 < truth.sum() < len(truth):
            out[f"roc_auc.{c}"] = float(roc_auc_score(truth, proba[:, i]))
            out[f"pr_auc.{c}"] = float(average_precision_score(truth, proba[:, i]))
    return out


def evaluate(
    y: Sequence[str],
    proba: np.ndarray,
    predicted: Sequence[str],
    classes: Sequence[str],
    seed: int = 0,
    prevalence: Mapping[str, float] = PROVAR_PREVALENCE,
    rounds: int = BOOTSTRAP,
) -> dict[str, Any]:
    """Point figures and their bootstrap 95% intervals (studies resampled within each class, `rounds` times)."""
    y, predicted, proba = np.asarray(y), np.asarray(predicted), np.asarray(proba, np.float64)
    point = _point(y, proba, predicted, classes, prevalence)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == c) for c in classes]
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(rounds):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members if len(m)])
        for key, value in _point(y[index], proba[index], predicted[index], classes, prevalence).items():
            samples[key].append(value)
    figures = {
        key: {
            "value": value,
            "ci95": [float(np.percentile(samples[key], 2.5)), float(np.percentile(samples[key], 97.5))],
        }
        for key, value in point.items()
    }
    return {
        "studies": int(len(y)),
        "per_class": {c: int((y == c).sum()) for c in classes},
        "figures": figures,
        # The manifest's headline, keyed by class name.
        "recall": {c: point[f"recall.{c}"] for c in classes},
        "precision": {c: point[f"precision.{c}"] for c in classes},
        "confusion_matrix": {
            "labels": list(classes),
            "rows_truth": confusion_matrix(y, predicted, labels=list(classes)).tolist(),
        },
        "prevalence": dict(prevalence),
        "bootstrap_rounds": rounds,
    }


def _plot_curves(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=110)
    for i, c in enumerate(classes):
        truth = (y == c).astype(int)
        if not 0 < truth.sum() < len(truth):
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, i])
        roc_ax.plot(fpr, tpr, label=f"{c} (AUC {roc_auc_score(truth, proba[:, i]):.3f})")
        precision, recall, _ = precision_recall_curve(truth, proba[:, i])
        pr_ax.plot(recall, precision, label=f"{c} (AP {average_precision_score(truth, proba[:, i]):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall, one vs rest (set's own prevalence)")
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _ci(figure: Mapping[str, Any]) -> str:
    low, high = figure["ci95"]
    return f"{figure['value']:.3f} ({low:.3f}-{high:.3f})"


def write_report(
    out_dir: Path,
    name: str,
    title: str,
    metrics: Mapping[str, Any],
    y: Sequence[str],
    proba: np.ndarray,
    predicted: Sequence[str],
    classes: Sequence[str],
    targets: Mapping[str, float],
    notes: Sequence[str] = (),
) -> Path:
    """<name>.md with <name>-confusion.png and <name>-curves.png beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y_arr = np.asarray(y)
    plot_confusion(
        np.array(metrics["confusion_matrix"]["rows_truth"]), classes, title, out_dir / f"{name}-confusion.png"
    )
    _plot_curves(y_arr, np.asarray(proba), classes, out_dir / f"{name}-curves.png", title)
    f = metrics["figures"]
    lines = [
        f"# {title}",
        "",
        f"{metrics['studies']} studies: "
        + ", ".join(f"{n} {c}" for c, n in metrics["per_class"].items())
        + f". Intervals: bootstrap 95% ({metrics['bootstrap_rounds']} rounds, studies resampled within class).",
        "",
        "| class | recall | target | precision (this set) | precision at PROVAR prevalence | ROC AUC | PR AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in classes:
        target = f">= {targets[c]:.2f}" if c in targets else ""
        met = "" if c not in targets else (" met" if f[f"recall.{c}"]["value"] >= targets[c] else " **missed**")
        lines.append(
            f"| {c} | {_ci(f[f'recall.{c}'])} | {target}{met} | {_ci(f[f'precision.{c}'])} | "
            f"{_ci(f[f'precision_at_prevalence.{c}'])} ({100 * metrics['prevalence'][c]:.1f}%) | "
            f"{_ci(f[f'roc_auc.{c}']) if f'roc_auc.{c}' in f else '-'} | "
            f"{_ci(f[f'pr_auc.{c}']) if f'pr_auc.{c}' in f else '-'} |"
        )
    lines += [
        "",
        f"Balanced accuracy {_ci(f['balanced_accuracy'])}; macro-F1 {_ci(f['macro_f1'])}; "
        f"accuracy {_ci(f['accuracy'])}.",
        "",
        f"![confusion matrix]({name}-confusion.png)",
        "",
        f"![ROC and PR curves]({name}-curves.png)",
        "",
    ]
    lines += list(notes)
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# Calibration and subgroups: whether the probabilities can be read as probabilities, and whether recall holds in
# every sex, age band, device and hospital rather than only on average.
SUBGROUP_MIN_STUDIES = 10  # fewer studies of a class in a group: its recall there is shown without an interval


def _bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability: (k/bins, (k+1)/bins], with 0 in the first bin and 1 in the last."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], np.clip(p, 0.0, 1.0), side="left")


def _ece(bin_index: np.ndarray, confidence: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """Expected calibration error: sum over bins of (bin's share of studies) * |accuracy - mean confidence|."""
    counts = np.bincount(bin_index, minlength=bins)
    gaps = np.bincount(bin_index, weights=hit, minlength=bins) - np.bincount(
        bin_index, weights=confidence, minlength=bins
    )  # per bin: count * (accuracy - confidence)
    return float(np.abs(gaps).sum() / max(counts.sum(), 1))


def calibration(
    y: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    bins: int = 10,
    seed: int = 0,
    rounds: int = BOOTSTRAP,
) -> dict[str, Any]:
    """Expected calibration error (ECE, `bins` equal-width bins) of the top-class confidence (the most probable
    class's probability against whether that class is the truth), and per class one vs rest (P(class) against
    whether the truth is that class), with bootstrap 95% intervals (studies resampled within each class, `rounds`
    times) as in `evaluate`; and the top class's reliability curve: per non-empty bin its mean confidence,
    accuracy and count. This is the calibration of the probabilities, not of the thresholded decision."""
    y, proba = np.asarray(y), np.asarray(proba, np.float64)
    labels = list(classes)
    if proba.ndim != 2 or proba.shape != (len(y), len(labels)) or not len(y):
        raise ValueError(f"proba is {proba.shape}, expected ({len(y)}, {len(labels)}) with at least one study")
    if unknown := sorted(set(y.tolist()) - set(labels)):
        raise ValueError(f"truth labels {unknown} are not among the classes {labels}")
    top = proba.argmax(axis=1)
    confidence = proba[np.arange(len(y)), top]
    # (bin of each study, its probability, whether it came true) for the top class and for each class.
    series = {"ece": (_bin_of(confidence, bins), confidence, (np.asarray(labels)[top] == y).astype(np.float64))}
    for i, c in enumerate(labels):
        series[f"ece.{c}"] = (_bin_of(proba[:, i], bins), proba[:, i], (y == c).astype(np.float64))
    point = {key: _ece(b, p, h, bins) for key, (b, p, h) in series.items()}
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == c) for c in labels]
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(rounds):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members if len(m)])
        for key, (b, p, h) in series.items():
            samples[key].append(_ece(b[index], p[index], h[index], bins))
    figures = {
        key: {
            "value": value,
            "ci95": [float(np.percentile(samples[key], 2.5)), float(np.percentile(samples[key], 97.5))],
        }
        for key, value in point.items()
    }
    b, p, h = series["ece"]
    edges = np.linspace(0.0, 1.0, bins + 1)
    reliability = [
        {
            "low": float(edges[k]),
            "high": float(edges[k + 1]),
            "confidence": float(p[b == k].mean()),
            "accuracy": float(h[b == k].mean()),
            "count": int((b == k).sum()),
        }
        for k in range(bins)
        if (b == k).any()
    ]
    return {
        "studies": int(len(y)),
        "classes": labels,
        "bins": bins,
        "figures": figures,
        # The headline, as in `evaluate`: top-class ECE, and one vs rest ECE keyed by class name.
        "ece": point["ece"],
        "ece_per_class": {c: point[f"ece.{c}"] for c in labels},
        "reliability": reliability,
        "bootstrap_rounds": rounds,
    }


def plot_reliability(calibration_result: Mapping[str, Any], path: Path, title: str) -> Path:
    """The top class's reliability diagram as a PNG: accuracy against mean confidence per bin beside the diagonal
    of perfect calibration, the studies per bin below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = calibration_result["reliability"]
    width = 1.0 / calibration_result["bins"]
    ece = calibration_result["figures"]["ece"]
    fig, (curve_ax, count_ax) = plt.subplots(
        2, 1, figsize=(5, 5.6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    curve_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    curve_ax.bar(
        [q["low"] for q in points],
        [q["accuracy"] for q in points],
        width=width,
        align="edge",
        color="tab:blue",
        alpha=0.25,
        edgecolor="tab:blue",
    )
    curve_ax.plot(
        [q["confidence"] for q in points],
        [q["accuracy"] for q in points],
        marker="o",
        color="tab:blue",
        label=f"top class (ECE {_ci(ece)})",
    )
    curve_ax.set(ylabel="accuracy", title="reliability, top class")
    curve_ax.set_ylim(0, 1.02)
    curve_ax.legend(loc="upper left", fontsize=8)
    count_ax.bar([q["low"] for q in points], [q["count"] for q in points], width=width, align="edge", color="tab:grey")
    count_ax.set(xlabel="confidence (probability of the most probable class)", ylabel="studies")
    count_ax.set_xlim(0, 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def subgroup_recall(
    y: Sequence[str],
    predicted: Sequence[str],
    classes: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    seed: int = 0,
    rounds: int = BOOTSTRAP,
    min_studies: int = SUBGROUP_MIN_STUDIES,
) -> dict[str, Any]:
    """Per grouping (e.g. "sex": each study's "F" or "M") and per value of it: its number of studies, of studies
    of each class, and the recall of each class among them; a class with no studies in the group has no recall
    there. The recall has a bootstrap 95% interval (the group's studies of that class resampled, `rounds` times)
    when the group has at least `min_studies` studies of the class, and none ("ci95" absent) otherwise."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    labels = list(classes)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for grouping, values in groups.items():
        values = np.asarray([str(v) for v in values])
        if len(values) != len(y):
            raise ValueError(f"grouping {grouping!r} has {len(values)} values for {len(y)} studies")
        out[grouping] = {}
        for value in sorted(set(values.tolist())):
            inside = values == value
            per_class = {c: int((inside & (y == c)).sum()) for c in labels}
            recall: dict[str, dict[str, Any]] = {}
            for c in labels:
                if not per_class[c]:
                    continue
                hits = (predicted[inside & (y == c)] == c).astype(np.float64)
                recall[c] = {"value": float(hits.mean())}
                if len(hits) >= min_studies:
                    resampled = hits[rng.integers(0, len(hits), size=(rounds, len(hits)))].mean(axis=1)
                    recall[c]["ci95"] = [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]
            out[grouping][value] = {"studies": int(inside.sum()), "per_class": per_class, "recall": recall}
    return {"classes": labels, "groupings": out, "bootstrap_rounds": rounds, "min_studies": min_studies}


def trust_markdown(
    calibration_result: Mapping[str, Any],
    subgroups: Mapping[str, Any],
    reliability_png: str = "report-reliability.png",
) -> list[str]:
    """Calibration and recall by subgroup as Markdown lines, for `write_report`'s notes; the reliability diagram
    is expected beside the report as `reliability_png` (written by `plot_reliability`)."""
    f = calibration_result["figures"]
    lines = [
        "## Calibration",
        "",
        f"Expected calibration error (ECE) over {calibration_result['bins']} equal-width probability bins: "
        "|accuracy - mean probability| per bin, weighted by the bin's share of the studies; 0 is perfectly "
        "calibrated. Top class: the most probable class's probability against whether it is the truth; per class: "
        "P(class) against whether the truth is that class. Intervals: bootstrap 95% "
        f"({calibration_result['bootstrap_rounds']} rounds, studies resampled within class).",
        "",
        "| probability | ECE |",
        "|---|---|",
        f"| top class | {_ci(f['ece'])} |",
        *(f"| {c} (one vs rest) | {_ci(f[f'ece.{c}'])} |" for c in calibration_result["classes"]),
        "",
        f"![reliability diagram]({reliability_png})",
        "",
        "## Recall by subgroup",
        "",
        f"Recall of each class among the studies of each group, with n its studies of that class; bootstrap 95% "
        f"interval ({subgroups['bootstrap_rounds']} rounds, the group's studies of the class resampled) where n >= "
        f"{subgroups['min_studies']}; '-' where the group has no study of the class.",
        "",
    ]
    classes = subgroups["classes"]
    for grouping, by_value in subgroups["groupings"].items():
        lines += [
            f"### {grouping}",
            "",
            f"| {grouping} | studies | " + " | ".join(f"recall {c}" for c in classes) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        for value, group in by_value.items():
            cells = []
            for c in classes:
                figure = group["recall"].get(c)
                if figure is None:
                    cells.append("-")
                else:
                    shown = _ci(figure) if "ci95" in figure else f"{figure['value']:.3f}"
                    cells.append(f"{shown}, n={group['per_class'][c]}")
            lines.append(f"| {value} | {group['studies']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
