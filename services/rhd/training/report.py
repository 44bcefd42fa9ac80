"""Clinical metrics of a study classifier on a labelled set, with bootstrap 95% intervals, as JSON, Markdown
and PNG: confusion matrix, per-class recall and precision, macro-F1, balanced accuracy, one-vs-rest ROC and
PR curves with their AUC, and precision as it would be at screening prevalence."""

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
    rows = matrix.sum(axis=1)
    rates = matrix / np.maximum(rows[:, None], 1)  # P(predicted | truth)
    weights = np.array([prevalence[c] for c in labels])
    out: dict[str, float] = {
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
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
