"""Segmentation metrics: Dice, IoU, HD95 per label and BraTS regions (WT, TC, ET).

Regions follow BraTS: whole tumor = labels {1,2,3,4}, tumor core = {1,3,4}, enhancing =
{4}. Both empty → Dice 1 (nothing to find, nothing found); HD95 is NaN when either side
is empty (reported, not averaged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BRATS_REGIONS = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * inter / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # lazily: segment imports this module for is_brats only

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95 % Hausdorff distance as MONAI (``compute_hausdorff_distance(percentile=95)``) and the
    BraTS reports define it: the larger of the two directed 95th percentiles of surface-to-surface
    distances (in the spacing's units, mm for NIfTI). Pooling both directions before the
    percentile (medpy's ``hd95``) gives a smaller number and is not used."""
    if not pred.any() or not truth.any():
        return float("nan")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    from scipy import ndimage

    surface_p, surface_t = _surface(pred), _surface(truth)
    dist_to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    return float(max(np.percentile(dist_to_t[surface_p], 95), np.percentile(dist_to_p[surface_t], 95)))


def is_brats(values: Sequence[int]) -> bool:
    """Label values look like BraTS (more than background + one class, within 0..4)."""
    values = set(int(v) for v in values)
    return len(values - {0}) > 1 and values <= {0, 1, 2, 3, 4}


def score_case(pred: np.ndarray, truth: np.ndarray, *, labels: Sequence[int] | None = None, spacing: Sequence[float] | None = None, with_hd95: bool = True) -> dict[str, dict[str, float]]:
    """Per-label and (for BraTS-style labels) per-region Dice/IoU/HD95 for one case."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {truth.shape}")
    pred = np.rint(pred).astype(np.int64)
    truth = np.rint(truth).astype(np.int64)
    if labels is None:
        labels = sorted(set(np.unique(truth).tolist()) | set(np.unique(pred).tolist()))
    labels = [int(v) for v in labels if v != 0]
    out: dict[str, dict[str, float]] = {}
    for value in labels:
        p, t = pred == value, truth == value
        out[f"label_{value}"] = _scores(p, t, spacing, with_hd95)
    if is_brats(labels):
        for name, members in BRATS_REGIONS.items():
            out[name] = _scores(np.isin(pred, members), np.isin(truth, members), spacing, with_hd95)
    if len(labels) > 1 or not out:
        out["foreground"] = _scores(pred > 0, truth > 0, spacing, with_hd95)
    return out


def _scores(p: np.ndarray, t: np.ndarray, spacing, with_hd95: bool) -> dict[str, float]:
    scores = {"dice": dice(p, t), "iou": iou(p, t), "voxels_pred": int(p.sum()), "voxels_true": int(t.sum())}
    if with_hd95:
        scores["hd95"] = hd95(p, t, spacing)
    return scores


def mean_scores(per_case: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over cases of each metric (NaN HD95 skipped; count of cases with a value kept)."""
    keys = sorted({k for case in per_case for k in case})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        rows = [case[key] for case in per_case if key in case]
        out[key] = {}
        for metric in ("dice", "iou", "hd95"):
            values = [r[metric] for r in rows if metric in r and np.isfinite(r[metric])]
            out[key][metric] = float(np.mean(values)) if values else float("nan")
        out[key]["cases"] = len(rows)
    return out
