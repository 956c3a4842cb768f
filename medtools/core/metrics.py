"""Binary classification metrics with a bootstrap confidence interval by patient (shared:
``cls-eval`` and ``tstr`` both report them).

Accuracy, balanced accuracy, ROC AUC (Mann–Whitney U / (n₊·n₋), scipy), sensitivity and
specificity of the positive class, and the confusion matrix (rows: truth, columns:
prediction, in ``class_names`` order). Slices of one patient are correlated, so the 95 %
interval resamples *patients* with replacement (cluster bootstrap; percentile interval),
falling back to images when no patient ids are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NEGATIVE_NAMES = {"notumor", "no tumor", "no_tumor", "normal", "negative", "healthy"}


def positive_class(class_names: Sequence[str]) -> str:
    """The class that is the finding: the one not named like 'normal'; else the last."""
    others = [c for c in class_names if c.lower() not in NEGATIVE_NAMES]
    return others[0] if len(others) == 1 else class_names[-1]


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of ``score`` for y == 1 (None when a class is absent)."""
    from scipy.stats import mannwhitneyu

    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return None
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def binary_metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """y, pred ∈ {0, 1} (1 = positive), score = P(positive)."""
    tp = int(((y == 1) & (pred == 1)).sum())
    tn = int(((y == 0) & (pred == 0)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    parts = [v for v in (sens, spec) if v is not None]
    return {
        "accuracy": (tp + tn) / max(len(y), 1),
        "balanced_accuracy": float(np.mean(parts)) if parts else None,
        "auc": auc(y, score),
        "sensitivity": sens,
        "specificity": spec,
    }


def evaluate(
    truth: Sequence[str],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    positive: str | None = None,
    patients: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of (N, K) class probabilities against true class names, with 95 % CIs."""
    names = list(class_names)
    positive = positive or positive_class(names)
    if positive not in names:
        raise ValueError(f"positive class {positive!r} is not one of the model's classes {names}")
    k = names.index(positive)
    truth_index = np.array([names.index(t) for t in truth])
    pred_index = probabilities.argmax(axis=1)
    y = (truth_index == k).astype(int)
    pred = (pred_index == k).astype(int)
    score = probabilities[:, k]
    confusion = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(confusion, (truth_index, pred_index), 1)
    out: dict[str, Any] = {"n": int(len(y)), "positive": positive, "class_names": names, **binary_metrics(y, pred, score), "confusion_matrix": confusion.tolist()}
    groups = np.asarray(patients) if patients is not None else np.arange(len(y)).astype(str)
    unique = np.unique(groups)
    out["patients"] = int(len(unique)) if patients is not None else None
    if bootstrap and len(unique) > 1:
        rng = np.random.default_rng(seed)
        members = {g: np.nonzero(groups == g)[0] for g in unique}
        samples: dict[str, list[float]] = {key: [] for key in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")}
        for _ in range(bootstrap):
            idx = np.concatenate([members[g] for g in rng.choice(unique, size=len(unique), replace=True)])
            for key, value in binary_metrics(y[idx], pred[idx], score[idx]).items():
                if value is not None:
                    samples[key].append(value)
        out["ci95"] = {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None for key, v in samples.items()}
        out["bootstrap"] = {"resamples": bootstrap, "unit": "patient" if patients is not None else "image", "seed": seed}
    return out


def paired_auc_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, patients: Sequence[str] | None = None, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same test items, with a 95 % interval from one paired cluster
    bootstrap (the same resampled patients for both scores)."""
    a, b = auc(y, score_a), auc(y, score_b)
    out: dict[str, Any] = {"difference": None if a is None or b is None else a - b, "ci95": None}
    groups = np.asarray(patients) if patients is not None else np.arange(len(y)).astype(str)
    unique = np.unique(groups)
    if bootstrap and len(unique) > 1 and out["difference"] is not None:
        rng = np.random.default_rng(seed)
        members = {g: np.nonzero(groups == g)[0] for g in unique}
        values = []
        for _ in range(bootstrap):
            idx = np.concatenate([members[g] for g in rng.choice(unique, size=len(unique), replace=True)])
            da, db = auc(y[idx], score_a[idx]), auc(y[idx], score_b[idx])
            if da is not None and db is not None:
                values.append(da - db)
        if values:
            out["ci95"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return out
