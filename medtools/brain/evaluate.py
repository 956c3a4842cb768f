"""seg-eval: pair predicted label maps with ground truth and score them (Dice, IoU, HD95, WT/TC/ET)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.metrics import mean_scores, score_case
from medtools.core.errors import InputError
from medtools.core.inputs import expand_inputs
from medtools.core.data import image_volume
from medtools.core.io import NIFTI_EXTS, RASTER_EXTS, read_image, split_ext
from medtools.core.manifest import load_rows

PRED_SUFFIXES = ("_seg", "_pred", "_label", "_mask")
LABEL_EXTS = (*NIFTI_EXTS, *RASTER_EXTS)  # 3-D label volumes and 2-D label pictures


def _key(path: Path) -> str:
    stem = split_ext(path)[0]
    for suffix in PRED_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_files(pred: Path, truth: Path) -> list[tuple[str, Path | None, Path]]:
    """(case, prediction or None, truth) pairs: truth cases from a manifest/folder, matched by case id
    (prediction file stem minus _seg/_pred) or, for plain folders of label files, by relative path."""
    predictions = [item for item in expand_inputs([pred], exts=LABEL_EXTS) if not item.path.name.endswith("_prob.nii.gz")]
    by_key = {_key(item.path): item.path for item in predictions}
    by_rel = {str(item.rel): item.path for item in predictions}
    try:
        rows = [r for r in load_rows(truth) if r.get("label")]
    except InputError:
        rows = []
    if rows:
        return [(r["case"], by_key.get(r["case"]), Path(r["label"])) for r in rows]
    truths = expand_inputs([truth], exts=LABEL_EXTS)
    return [(_key(item.path), by_rel.get(str(item.rel)) or by_key.get(_key(item.path)), item.path) for item in truths]


def evaluate_pair(pred_path: Path, truth_path: Path, *, with_hd95: bool = True) -> dict[str, Any]:
    pred_image, truth_image = read_image(pred_path), read_image(truth_path)
    pred, truth = image_volume(pred_image), image_volume(truth_image)
    if pred.shape != truth.shape:
        raise InputError(f"{pred_path.name}: shape {pred.shape} differs from ground truth {truth.shape}")
    if pred_image.affine is not None and truth_image.affine is not None and not np.allclose(pred_image.affine, truth_image.affine, atol=1e-3):
        raise InputError(f"{pred_path.name}: affine differs from the ground truth's")
    labels = sorted(set(np.unique(np.rint(truth)).astype(int).tolist()) | set(np.unique(np.rint(pred)).astype(int).tolist()))
    return score_case(pred, truth, labels=labels, spacing=truth_image.spacing, with_hd95=with_hd95)


def summarise(per_case: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return mean_scores(list(per_case.values()))


def render_scores(result: dict) -> list[str]:
    """seg-eval's table for people: mean Dice/IoU/HD95 per region."""
    lines = [f"{'region':<12}{'dice':>8}{'iou':>8}{'hd95':>9}{'cases':>7}"]
    for key, values in result["mean"].items():
        lines.append(f"{key:<12}{values['dice']:>8.4f}{values['iou']:>8.4f}{values['hd95']:>9.2f}{values['cases']:>7}")
    return lines
