"""collab-eval: Dice/IoU of decoded masks against ground truth, with the trivial baselines,
and the autoencoders' reconstruction quality (image PSNR/SSIM, mask PSNR).

Masks are compared at the ground truth's size (a decoded mask has the input's geometry).
The baselines are the empty mask and the all-foreground mask scored the same way, so a
number is only read next to what no model gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Binary Dice and IoU; both empty → 1.0."""
    p, t = pred.astype(bool), truth.astype(bool)
    inter, total, union = np.logical_and(p, t).sum(), p.sum() + t.sum(), np.logical_or(p, t).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def psnr_ssim(clean: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM (scikit-image) of (N, H, W) arrays in [0, 1], data range 1; means over images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim = [], []
    for a, b in zip(clean.astype(np.float64), recon.astype(np.float64)):
        psnr.append(float("inf") if np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=1.0)))
        ssim.append(float(structural_similarity(a, b, data_range=1.0)) if min(a.shape) >= 7 else float("nan"))
    return float(np.mean(psnr)), float(np.nanmean(ssim)) if ssim else float("nan")


def pair_masks(pred: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    """Predicted masks ↔ ground-truth masks by case name (mask suffixes ignored)."""
    from medtools.collab.autoencoder import case_name
    from medtools.core.inputs import expand_inputs

    truths = {case_name(i.path): i.path for i in expand_inputs([truth])}
    preds = {case_name(i.path): i.path for i in expand_inputs([pred])}
    pairs = [(c, preds[c], truths[c]) for c in sorted(preds) if c in truths]
    if not pairs:
        raise InputError(f"no predicted mask in {pred} matches a ground-truth mask in {truth} by case name")
    return pairs


def _binary(path: Path) -> np.ndarray:
    from medtools.core.io import read_image

    array = read_image(path).array
    if array.ndim == 3:
        array = array[..., 0]
    return array > 0


def evaluate(
    pred: Path,
    truth: Path,
    *,
    images: Path | None = None,
    ae_image: Path | None = None,
    ae_mask: Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, Any]:
    """Segmentation metrics (+ AE reconstruction metrics when the models are given)."""
    from medtools.core import preprocess

    per_case, empty, full, truths = {}, [], [], []
    for case, p, t in pair_masks(pred, truth):
        truth_mask = _binary(t)
        pred_mask = _binary(p)
        if pred_mask.shape != truth_mask.shape:
            raise InputError(f"{p}: shape {pred_mask.shape} differs from the ground truth's {truth_mask.shape}")
        d, i = dice_iou(pred_mask, truth_mask)
        per_case[case] = {"dice": d, "iou": i}
        empty.append(dice_iou(np.zeros_like(truth_mask), truth_mask)[0])
        full.append(dice_iou(np.ones_like(truth_mask), truth_mask)[0])
        truths.append(truth_mask)
    # shape prior: each case scored against the thresholded mean of the *other* cases' masks
    # (what a decoder that learned only "a typical mask" gives; needs no model)
    side = 128
    small = np.stack([preprocess.resize(t.astype(np.float32)[None, None], side)[0, 0] for t in truths])
    prior = []
    for index, t in enumerate(truths):
        if len(truths) < 2:
            break
        mean = (small.sum(0) - small[index]) / (len(truths) - 1)
        prior.append(dice_iou(preprocess.resize(mean[None, None], t.shape)[0, 0] > 0.5, t)[0])
    result: dict[str, Any] = {
        "cases": len(per_case),
        "dice": float(np.mean([v["dice"] for v in per_case.values()])),
        "iou": float(np.mean([v["iou"] for v in per_case.values()])),
        "baseline_empty_dice": float(np.mean(empty)),
        "baseline_full_dice": float(np.mean(full)),
        "baseline_prior_dice": float(np.mean(prior)) if prior else float("nan"),
        "per_case": per_case,
    }
    if ae_image is not None:
        if images is None:
            raise InputError("--ae-image needs --images (the clean images to reconstruct)")
        result["image_ae"] = reconstruction(sorted_files(images), ae_image, mask=False, batch_size=batch_size, device=device)
    if ae_mask is not None:
        result["mask_ae"] = reconstruction(sorted_files(truth), ae_mask, mask=True, batch_size=batch_size, device=device)
    return result


def sorted_files(folder: Path) -> list[Path]:
    from medtools.core.inputs import expand_inputs

    return sorted(i.path for i in expand_inputs([folder]))


def reconstruction(paths: Sequence[Path], model: Path, *, mask: bool, batch_size: int = 16, device: str | None = None) -> dict[str, float]:
    """Encode → decode at the model's size; PSNR/SSIM against the model-size input (masks: also Dice)."""
    from medtools.collab.autoencoder import load_batch
    from medtools.collab.latents import ae_predictor, decode, encode

    predictor = ae_predictor(model, "ae-mask" if mask else "ae-image", device, None, batch_size)
    psnrs, ssims, dices = [], [], []
    for start in range(0, len(paths), batch_size):
        x = load_batch(paths[start : start + batch_size], predictor.size, mask=mask)
        out = decode(predictor, encode(predictor, x))[:, 0]
        p, s = psnr_ssim(x[:, 0], out)
        psnrs += [p] * len(x)
        ssims += [s] * len(x)
        if mask:
            dices += [dice_iou(o > 0.5, c > 0.5)[0] for o, c in zip(out, x[:, 0])]
    result = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "items": len(paths), "size": predictor.size}
    if mask:
        result["dice"] = float(np.mean(dices))
    return result


def render(result: dict[str, Any]) -> list[str]:
    """collab-eval's summary for people."""
    lines = [f"dice {result['dice']:.4f}  iou {result['iou']:.4f}  cases {result['cases']}  (empty {result['baseline_empty_dice']:.4f}, all-foreground {result['baseline_full_dice']:.4f}, mean-mask prior {result['baseline_prior_dice']:.4f})"]
    lines += [f"{name}: psnr {result[name]['psnr']:.2f} dB  ssim {result[name]['ssim']:.4f}" for name in ("image_ae", "mask_ae") if name in result]
    return lines


def eval_job(pred: Path, truth: Path, *, ae_image: Path | None, ae_mask: Path | None, **options: Any) -> int:
    """``collab-eval``: Dice of decoded masks and autoencoder quality on stdout."""
    from medtools.core import report

    record = report.RunRecord()
    for path in (ae_image, ae_mask):
        if path is not None:
            record.add_checkpoint(path)
    result = evaluate(pred, truth, ae_image=ae_image, ae_mask=ae_mask, **options)
    report.emit_result(result, render, record=record)
    return 0
