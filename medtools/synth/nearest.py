"""``nearest``: does a generator copy its training images? Nearest-neighbour memorisation check.

For every synthetic image its nearest training image, in two spaces:

* **pixels**: RMS difference of the images in [0, 1] at one size (default: the synthetic
  images' own size; training images are resized to it with the one preprocessing path);
* **features** (``-m CKPT``): L2 distance of a medtools checkpoint's registered features
  (``Predictor.features``: pre-logits of a ``cls``/``reid`` classifier, pooled bottleneck of
  a segmenter).

The reference is real: each held-out image (another patient) also gets its nearest training
image, and the two distance distributions are reported side by side. An image closer to a
training image than real images of other patients ever come is suspicious, so the
**copy-detection rate** is the fraction of synthetic images whose distance to their nearest
training image t is below the distance from t to its nearest held-out image. That rate is
not 0 for a generator that copies nothing (a synthetic image picks its nearest t, so it
often wins), so the same rate of the held-out images themselves (each against the other
held-out images) is reported beside it (``copy_rate_held_out``): a generator that copies
scores above it. Without ``--held-out`` the reference of t is its nearest training image of
another patient (no baseline).
``--grid`` writes the closest pairs (synthetic | training) as one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import UsageError
from medtools.synth.images import ImageRef, check_disjoint_patients, collect_images, load_images

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75)


def pairwise_min(a: np.ndarray, b: np.ndarray, *, exclude: np.ndarray | None = None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a`` (N, D): (distance to the nearest row of ``b`` (M, D), its index).

    ``exclude`` (N, M) bool masks pairs that may not count (same patient)."""
    import torch

    bt = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))
    dist, index = [], []
    for start in range(0, len(a), chunk):
        at = torch.from_numpy(np.ascontiguousarray(a[start : start + chunk], dtype=np.float64))
        d = torch.cdist(at, bt)
        if exclude is not None:
            d = d.masked_fill(torch.from_numpy(exclude[start : start + chunk]), float("inf"))
        value, where = d.min(dim=1)
        dist.append(value.numpy())
        index.append(where.numpy())
    return np.concatenate(dist), np.concatenate(index)


def summary(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    out = {f"p{int(q * 100)}": float(np.quantile(finite, q)) for q in QUANTILES} if len(finite) else {}
    if len(finite):
        out["mean"] = float(finite.mean())
    return out


def analyse(
    synth: np.ndarray,
    train: np.ndarray,
    held_out: np.ndarray | None,
    train_patients: Sequence[str],
) -> dict[str, Any]:
    """Nearest-training distances of synthetic and held-out vectors, and the copy-detection rate."""
    d_synth, nn_synth = pairwise_min(synth, train)
    out: dict[str, Any] = {"synthetic_to_train": summary(d_synth)}
    if held_out is not None and len(held_out):
        import torch

        d_held, nn_held = pairwise_min(held_out, train)
        # train × held-out distances: per training image the nearest and second-nearest held-out image
        cross = torch.cdist(torch.from_numpy(np.asarray(train, np.float64)), torch.from_numpy(np.asarray(held_out, np.float64)))
        two = cross.topk(min(2, cross.shape[1]), dim=1, largest=False)
        reference = two.values[:, 0].numpy()
        out["held_out_to_train"] = summary(d_held)
        out["reference"] = "held-out"
        # how often a synthetic image is nearer to train than a held-out image is (0.5 = alike)
        ranked = np.sort(d_held)
        above = len(ranked) - np.searchsorted(ranked, d_synth, side="right")
        ties = np.searchsorted(ranked, d_synth, side="right") - np.searchsorted(ranked, d_synth, side="left")
        out["closer_than_held_out"] = float(((above + 0.5 * ties) / len(ranked)).mean())
        # the same rate for real images of other patients (each held-out image against the
        # others): what an exchangeable, non-copying generator scores; the rate is not 0 for it
        if cross.shape[1] > 1:
            first, second = two.indices[:, 0].numpy(), two.values[:, 1].numpy()
            own = np.arange(len(held_out))
            reference_without = np.where(first[nn_held] == own, second[nn_held], reference[nn_held])
            out["copy_rate_held_out"] = float((d_held < reference_without).mean())
    else:
        patients = np.asarray(train_patients)
        reference, _ = pairwise_min(train, train, exclude=patients[:, None] == patients[None, :])
        out["reference"] = "train, other patients"
    flagged = d_synth < reference[nn_synth]
    out["copy_rate"] = float(flagged.mean())
    out["copies"] = int(flagged.sum())
    return {"summary": out, "distance": d_synth, "nearest": nn_synth, "flagged": flagged}


def write_grid(path: Path, synth: np.ndarray, train: np.ndarray, order: Sequence[int], nearest: np.ndarray, *, gap: int = 2) -> Path:
    """Rows of (synthetic | nearest training) image pairs, closest first, as one 8-bit PNG."""
    from medtools.core.io import Image, write_image

    size = synth.shape[-1]
    rows = len(order)
    canvas = np.full((rows * (size + gap) + gap, 2 * size + 3 * gap), 255, np.uint8)
    for r, i in enumerate(order):
        y = gap + r * (size + gap)
        canvas[y : y + size, gap : gap + size] = np.rint(synth[i, 0] * 255).astype(np.uint8)
        canvas[y : y + size, 2 * gap + size : 2 * gap + 2 * size] = np.rint(train[nearest[i], 0] * 255).astype(np.uint8)
    return write_image(Image(canvas, format="png"), path)


def run_nearest(
    *,
    synthetic: Sequence[str | Path],
    train: Sequence[str | Path],
    held_out: Sequence[str | Path] | None = None,
    model: Path | None = None,
    size: int | None = None,
    grid: Path | None = None,
    top: int = 16,
    patient_regex: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Pixel (and feature) nearest-neighbour distances, the copy-detection rate, the closest pairs."""
    from medtools.core.preprocess import load_image

    if top < 1:
        raise UsageError("--top must be at least 1")
    synth_refs = collect_images(list(synthetic))
    train_refs = collect_images(list(train), patient_regex=patient_regex)
    held_refs: list[ImageRef] = collect_images(list(held_out), patient_regex=patient_regex) if held_out else []
    check_disjoint_patients(train_refs, held_refs, ("--train", "--held-out"), "held-out images must be other patients")
    if size is None:
        size = int(load_image(synth_refs[0].path, None, 1).shape[-1])
    report.log(f"{len(synth_refs)} synthetic, {len(train_refs)} training, {len(held_refs)} held-out images at {size}×{size}")
    images = {name: load_images(refs, size, 1).astype(np.float32) for name, refs in (("synthetic", synth_refs), ("train", train_refs), ("held_out", held_refs)) if refs}
    patients = [r.patient for r in train_refs]
    pixels = {k: v.reshape(len(v), -1) / np.sqrt(v[0].size) for k, v in images.items()}  # L2 / sqrt(D): RMS difference
    spaces: dict[str, Any] = {"pixel": analyse(pixels["synthetic"], pixels["train"], pixels.get("held_out"), patients)}
    result: dict[str, Any] = {"images": {"synthetic": len(synth_refs), "train": len(train_refs), "held_out": len(held_refs)}, "size": size}
    if model is not None:
        from medtools.core.predict import Predictor

        predictor = Predictor(model, device=device, batch_size=batch_size)
        channels = predictor.in_channels
        feats = {k: predictor.features(np.repeat(v, channels, axis=1) if channels > 1 else v) for k, v in images.items()}
        spaces["features"] = analyse(feats["synthetic"], feats["train"], feats.get("held_out"), patients)
        result["features"] = {"checkpoint": str(model), "kind": predictor.kind.name, "dim": int(feats["train"].shape[1]), "device": str(predictor.device)}
    for name, space in spaces.items():
        order = np.argsort(space["distance"], kind="stable")[:top]
        result[name] = {
            **space["summary"],
            "closest": [
                {"synthetic": str(synth_refs[i].path), "train": str(train_refs[space["nearest"][i]].path), "distance": float(space["distance"][i]), "flagged": bool(space["flagged"][i])}
                for i in order
            ],
        }
    if grid is not None:
        order = np.argsort(spaces["pixel"]["distance"], kind="stable")[:top]
        result["grid"] = str(write_grid(grid, images["synthetic"], images["train"], order, spaces["pixel"]["nearest"]))
        if "features" in spaces:
            feature_grid = grid.with_name(grid.stem + "-features" + grid.suffix)
            order = np.argsort(spaces["features"]["distance"], kind="stable")[:top]
            result["grid_features"] = str(write_grid(feature_grid, images["synthetic"], images["train"], order, spaces["features"]["nearest"]))
    return result


def render(result: dict[str, Any]) -> list[str]:
    """nearest's summary for people: copy rate and median distances per space."""
    rows = []
    for space in ("pixel", "features"):
        if space in result:
            values = result[space]
            rows.append(f"{space}\tcopy_rate\t{values['copy_rate']:.4f}\tmedian_synthetic_to_train\t{values['synthetic_to_train'].get('p50', float('nan')):.4g}" + (f"\tmedian_held_out_to_train\t{values['held_out_to_train']['p50']:.4g}" if "held_out_to_train" in values else ""))
    return rows


def nearest_job(*, model: Path | None, **options: Any) -> int:
    """``nearest``: copy detection on stdout (summary or JSON with the run record)."""
    from medtools.core import report

    result = run_nearest(model=model, **options)
    record = report.RunRecord(seed=0)
    if model is not None:
        record.add_checkpoint(model)
    report.emit_result(result, render, record=record)
    for key in ("grid", "grid_features"):
        if key in result:
            report.log(f"wrote {result[key]}")
    return 0
