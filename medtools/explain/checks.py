"""The sanity checks shipped with every map.

- Model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): the map of the
  trained model against the maps of the same network with its layers re-initialised, top
  (output side) first, cascading; SSIM and Spearman rank correlation at each step. A map that
  stays the same when the weights are random explains the image, not the model: flagged.
- Localisation where a mask exists: the share of saliency mass inside the mask (and the share of
  the area it covers, what a uniform map scores) and the pointing game (the hottest pixel lies
  in the mask); with a label map, the share of mass on each label (tumour, head, background).
- Faithfulness (Petsiuk et al. 2018, RISE): deletion (remove the most salient pixels first, to
  zero) and insertion (reveal them first, over a blurred copy) curves of the target's
  probability; their AUC against the same curves in a random order. Deletion must fall faster
  than random.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RANDOMISATION_SPEARMAN = 0.5  # a fully randomised model's map at least this rank-correlated: flagged
# SSIM is reported beside it, not used for the flag: sparse maps (a Grad-CAM that is zero outside
# the target) share their zeros, which lifts SSIM whatever the weights.
FAITHFULNESS_STEPS = 16


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    top = a.max() if a.size else 0.0
    return a / top if top > 0 else np.zeros_like(a)


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """SSIM (maps scaled to [0, 1], mean over slices) and Spearman rank correlation of two (N, H, W) maps."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    values = []
    for x, y in zip(a, b):
        x, y = _unit(x), _unit(y)
        side = min(x.shape)
        win = min(7, side if side % 2 else side - 1)
        values.append(structural_similarity(x, y, data_range=1.0, win_size=max(3, win)))
    flat_a, flat_b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if flat_a.std() == 0 or flat_b.std() == 0:
        rho = 0.0
    else:
        rho = float(spearmanr(flat_a, flat_b).statistic)
    return {"ssim": float(np.mean(values)) if values else 0.0, "spearman": 0.0 if np.isnan(rho) else rho}


def localisation(maps: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Mass of (N, H, W) ``maps`` inside the (N, H, W) boolean ``mask``, the mask's area share
    (a uniform map's score) and the pointing game over the slices whose mask is not empty."""
    mask = mask.astype(bool)
    total = float(maps.sum())
    hits, games = 0, 0
    for m, k in zip(maps, mask):
        if k.any() and m.max() > 0:
            games += 1
            hits += bool(k.ravel()[int(np.argmax(m))])
    return {
        "mass_inside": float((maps * mask).sum() / total) if total > 0 else 0.0,
        "area_share": float(mask.mean()) if mask.size else 0.0,
        "pointing_game": hits / games if games else None,
        "pointing_slices": games,
    }


def region_mass(saliency_map: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Share of the saliency mass and of the area on each label of a label map of the same
    shape (e.g. 0 background, 1 head, 2 tumour): ``{label: {"mass": m, "area": a}}``; a
    uniform map has mass = area on every label."""
    saliency_map = np.asarray(saliency_map, dtype=np.float64)
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    total = float(saliency_map.sum())
    out = {}
    for value in np.unique(labels):
        inside = labels == value
        out[str(int(value))] = {"mass": float(saliency_map[inside].sum() / total) if total > 0 else 0.0, "area": float(inside.mean())}
    return out


def _auc(curve: np.ndarray) -> float:
    x = np.linspace(0.0, 1.0, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(x)))


def faithfulness(score: Any, x: np.ndarray, maps: np.ndarray, *, seed: int = 0, steps: int = FAITHFULNESS_STEPS) -> dict[str, float]:
    """Deletion and insertion AUC of the target probability (``score``: (M, C, H, W) float32 →
    (M,) probabilities) for salient-first and random pixel orders, averaged over the items of
    ``x`` (N, C, H, W) with their ``maps`` (N, H, W)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {"deletion_auc": [], "deletion_auc_random": [], "insertion_auc": [], "insertion_auc_random": []}
    fractions = np.linspace(0.0, 1.0, steps + 1)
    for image, saliency in zip(x, maps):
        pixels = saliency.size
        blurred = np.stack([gaussian_filter(c, sigma=max(1.0, min(c.shape) / 16)) for c in image]).astype(np.float32)
        orders = {"": np.argsort(-saliency.ravel(), kind="stable"), "_random": rng.permutation(pixels)}
        for suffix, order in orders.items():
            deleted, inserted = [], []
            for fraction in fractions:
                chosen = np.zeros(pixels, dtype=bool)
                chosen[order[: int(round(fraction * pixels))]] = True
                chosen = chosen.reshape(saliency.shape)[None]
                deleted.append(np.where(chosen, 0.0, image))
                inserted.append(np.where(chosen, image, blurred))
            probs = score(np.stack(deleted + inserted).astype(np.float32))
            results[f"deletion_auc{suffix}"].append(_auc(probs[: len(fractions)]))
            results[f"insertion_auc{suffix}"].append(_auc(probs[len(fractions) :]))
    return {name: float(np.mean(v)) for name, v in results.items() if v}


def flags(report: dict[str, Any]) -> list[str]:
    """What the numbers of one target say is wrong with its map (empty: nothing found)."""
    out = []
    if report.get("empty"):
        out.append("empty: the map is zero everywhere")
    randomisation = report.get("randomisation")
    if randomisation:
        last = randomisation[-1]
        if last["spearman"] >= RANDOMISATION_SPEARMAN:
            out.append(f"randomisation: the map of the re-initialised model is as similar as SSIM {last['ssim']:.2f} / Spearman {last['spearman']:.2f}: the map does not depend on the weights")
    faithful = report.get("faithfulness")
    if faithful and faithful["deletion_auc"] >= faithful["deletion_auc_random"]:
        out.append(f"faithfulness: deleting the salient pixels first lowers the score no faster than a random order (AUC {faithful['deletion_auc']:.3f} vs {faithful['deletion_auc_random']:.3f})")
    for name in ("mask", "prediction"):
        where = report.get(f"localisation_{name}")
        if where and where["mass_inside"] <= where["area_share"]:
            out.append(f"localisation: no more saliency inside the {name} ({where['mass_inside']:.2f}) than a uniform map ({where['area_share']:.2f})")
    return out
