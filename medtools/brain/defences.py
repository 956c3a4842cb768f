"""Defences an attacker applies to every image it trains and tests on: the known ways to undo
protective noise (shortcut removal), so that ``protect`` is measured against attackers who adapt.

Spec strings (``reid-train --defence``; several may be combined, applied in the given order):

* ``jpeg:Q`` – JPEG round trip at quality Q (PIL, 8-bit gray per channel; "Image Shortcut
  Squeezing", Liu et al. 2023, undoes unlearnable examples with JPEG 10);
* ``blur:SIGMA`` – Gaussian blur, sigma in pixels of the attacker's input (scipy.ndimage);
* ``lowpass:CUTOFF`` – ideal low-pass in the Fourier domain: frequencies with radius above
  CUTOFF cycles/pixel (0 < CUTOFF ≤ 0.5, Nyquist = 0.5) are zeroed (torch.fft);
* ``median:K`` – K×K median filter (scipy.ndimage);
* ``quantise:BITS`` – rounding to 2^BITS gray levels (bit-depth reduction, Xu et al. 2018);
* ``aware`` (alias ``aware:signature``) – the scheme-aware attacker of ``protect --objective
  signature``: it knows the method, not the key. Per case (one release of one visit) it estimates
  the constant ±a block pattern from the mean over the case's slices of the high-pass residual of
  the block means on the documented ``SIGNATURE_GRID`` (block means minus their Gaussian smoothing
  over neighbouring blocks, sigma 1 block), centred on the mean over the release's cases: signs
  from that residual, a by least squares; it subtracts the estimate from every slice's foreground
  (``estimate_signatures``);
* ``aware:slice`` – the blunter scheme-aware attacker: every slice minus its own foreground block
  means on the ``SIGNATURE_GRID`` (plus its foreground mean), which removes any block-constant
  pattern exactly, and the anatomy's block-scale contrast with it;
* ``aware:case`` – the scheme-aware attacker of ``--objective minmin``/``minminmax`` (and of
  any noise that carries the case's label): min-min noise is not block-constant, but because it
  encodes one label per case, part of it is shared by the case's slices. Per case it estimates
  that shared part at pixel resolution as the mean over the case's slices of the high-pass
  residual (image minus its Gaussian blur, sigma ``CASE_SIGMA`` px), centred on the mean over
  the release's K cases (times K/(K−1)), and subtracts it from every slice's foreground (``remove_case_residual``).
  On one 2-D image per case it removes the image's own high-pass detail (a blur). Against
  ``minminmax`` add ``adv:EPS`` at the protection's budget (``aware:case+adv:0.05``);
* ``adv:EPS`` – not an image transform: PGD adversarial training of the attacker (Madry et al.
  2018) at L∞ EPS in normalised units (``ADV_STEPS`` steps of EPS/2, random start), which makes
  it robust to small perturbations such as protective noise.

Images are (N, C, H, W) float in [0, 1] at the attacker's input size (``image_size``); every
transform works per 2-D channel image and returns values in [0, 1]. The specs are stored in the
attacker's checkpoint (``medtools.config.defence``) and re-applied by ``reid-eval`` and by
``protect`` (where gradients pass the non-differentiable transforms straight through, BPDA,
Athalye et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtools.core.errors import UsageError

DEFENCES = ("jpeg", "blur", "lowpass", "median", "quantise", "aware", "adv")
ADV_STEPS = 3
_HELP = "jpeg:Q | blur:SIGMA | lowpass:CUTOFF | median:K | quantise:BITS | aware | aware:slice | aware:case | adv:EPS"
CASE_SIGMA = 1.0  # aware:case: the high-pass residual is the image minus its Gaussian blur (px)


def parse_defences(specs: str | Sequence[str] | None) -> list[str]:
    """Canonical spec strings from flags (``"jpeg:10,blur:1"`` or a list); invalid → UsageError."""
    if not specs:
        return []
    items = [specs] if isinstance(specs, str) else list(specs)
    out = []
    for item in items:
        for part in (p.strip() for p in str(item).replace("+", ",").split(",")):
            if not part:
                continue
            name, _, value = part.partition(":")
            name = name.lower()
            if name not in DEFENCES:
                raise UsageError(f"unknown defence {part!r}: use {_HELP}")
            if name == "aware":
                if value not in ("", "signature", "slice", "case"):
                    raise UsageError(f"aware:{value}: the scheme-aware attackers are aware (= aware:signature, per-case estimate), aware:slice (per-slice block means) and aware:case (per-case shared high-pass residual, against minmin)")
                out.append(f"aware:{value}" if value in ("slice", "case") else "aware")
                continue
            try:
                number = float(value)
            except ValueError:
                raise UsageError(f"defence {part!r} needs a number ({_HELP})") from None
            ok = {
                "jpeg": 1 <= number <= 95 and number == int(number),
                "blur": number > 0,
                "lowpass": 0 < number <= 0.5,
                "median": number >= 2 and number == int(number),
                "quantise": 1 <= number <= 16 and number == int(number),
                "adv": 0 < number <= 1,
            }[name]
            if not ok:
                raise UsageError(f"defence {part!r} out of range: jpeg quality 1–95, blur sigma > 0, lowpass cutoff in (0, 0.5], median size ≥ 2, quantise bits 1–16, adv eps in (0, 1]")
            out.append(f"{name}:{int(number) if name in ('jpeg', 'median', 'quantise') else number:g}")
    return out


def _value(spec: str) -> float:
    return float(spec.partition(":")[2])


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of each channel image (8-bit gray, PIL) at ``quality``."""
    import io

    from PIL import Image as PILImage

    out = np.empty(images.shape, dtype=np.float32)
    for index in np.ndindex(*images.shape[:-2]):
        gray = PILImage.fromarray(np.clip(np.rint(images[index] * 255.0), 0, 255).astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        gray.save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[index] = np.asarray(PILImage.open(buffer), dtype=np.float32) / 255.0
    return out


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(images.astype(np.float32), sigma=(0,) * (images.ndim - 2) + (sigma, sigma), mode="reflect")


def median(images: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(images.astype(np.float32), size=(1,) * (images.ndim - 2) + (int(size), int(size)), mode="reflect")


def lowpass(images: np.ndarray, cutoff: float) -> np.ndarray:
    """Zero every Fourier component with radius > ``cutoff`` cycles/pixel (torch.fft)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]
    fx = torch.fft.fftfreq(x.shape[-1])[None, :]
    keep = (fy**2 + fx**2) <= cutoff**2 + 1e-12
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real.numpy()


def quantise(images: np.ndarray, bits: int) -> np.ndarray:
    levels = 2 ** int(bits) - 1
    return np.rint(np.clip(images, 0.0, 1.0) * levels) / levels


def block_highpass(images: np.ndarray, grid: int | None = None) -> np.ndarray:
    """(…, C, H, W) → (…, C, grid, grid): block means minus their Gaussian smoothing (sigma 1 block)."""
    from scipy.ndimage import gaussian_filter

    from medtools.brain.pgd import SIGNATURE_GRID

    grid = grid or SIGNATURE_GRID
    h, w = images.shape[-2:]
    rows = np.arange(h) * grid // h
    cols = np.arange(w) * grid // w
    sums = np.zeros((*images.shape[:-2], grid, grid), dtype=np.float64)
    for r in range(grid):
        for c in range(grid):
            sums[..., r, c] = images[..., rows == r, :][..., cols == c].mean(axis=(-2, -1))
    smooth = gaussian_filter(sums, sigma=(0,) * (sums.ndim - 2) + (1.0, 1.0), mode="nearest")
    return (sums - smooth).astype(np.float32)


def estimate_signatures(images: np.ndarray, groups: np.ndarray | None = None, grid: int | None = None) -> dict[Any, np.ndarray]:
    """Each release's constant block pattern (C, H, W), per group (case) of ``images`` (N, C, H, W).

    The documented scheme: ±a per block of the ``SIGNATURE_GRID``, the same on every slice of a
    case, independent between cases. Per case, the mean over its slices of the block high-pass
    residual is H_c ≈ hp(P_c) + the case's mean anatomy; with several cases in the release, their
    mean (the common anatomy: the patterns are independent, zero-mean) is subtracted first. The
    signs are sign(H_c); the amplitude a (one per channel for the release, as ``protect`` uses one
    ``signature_share × eps``) is the least-squares fit of hp(a·signs) to the H_c."""
    from medtools.brain.pgd import SIGNATURE_GRID

    grid = grid or SIGNATURE_GRID
    groups = np.zeros(len(images), dtype=np.int64) if groups is None else np.asarray(groups)
    names = list(np.unique(groups))
    residual = np.stack([block_highpass(images[groups == g], grid).mean(axis=0) for g in names])  # (K, C, G, G)
    if len(names) > 1:
        residual = residual - residual.mean(axis=0, keepdims=True)
    signs = np.where(residual >= 0, 1.0, -1.0)
    basis = block_highpass(signs, grid)
    amplitude = np.clip((residual * basis).sum(axis=(0, -2, -1)) / np.maximum((basis**2).sum(axis=(0, -2, -1)), 1e-12), 0.0, None)  # (C,)
    h, w = images.shape[-2:]
    rows = (np.arange(h) * grid // h)[:, None]
    cols = (np.arange(w) * grid // w)[None, :]
    return {g: (signs[k] * amplitude[:, None, None])[:, rows, cols].astype(np.float32) for k, g in enumerate(names)}


def remove_signature(images: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Subtract each group's (case's) estimated block pattern from its slices' foreground."""
    groups = np.zeros(len(images), dtype=np.int64) if groups is None else np.asarray(groups)
    out = images.astype(np.float32).copy()
    for group, pattern in estimate_signatures(images, groups).items():
        sel = groups == group
        foreground = (images[sel] > 0).any(axis=1, keepdims=True)
        out[sel] = np.clip(images[sel] - pattern[None] * foreground, 0.0, 1.0)
    return out


def remove_block_means(images: np.ndarray, grid: int | None = None) -> np.ndarray:
    """``aware:slice``: subtract each slice's own foreground block means on the ``SIGNATURE_GRID``
    (then add back the slice's foreground mean): any pattern constant on the blocks is gone
    exactly (up to one offset per slice: the pattern's mean), together with the anatomy's
    block-scale contrast; detail within blocks stays."""
    from medtools.brain.pgd import SIGNATURE_GRID

    grid = grid or SIGNATURE_GRID
    x = images.astype(np.float64)
    h, w = x.shape[-2:]
    block = ((np.arange(h) * grid // h)[:, None] * grid + (np.arange(w) * grid // w)[None, :]).ravel()
    foreground = np.broadcast_to((x > 0).any(axis=1, keepdims=True), x.shape).reshape(*x.shape[:2], -1)
    flat = x.reshape(*x.shape[:2], -1)
    out = flat.copy()
    onehot = np.eye(grid * grid)[block]  # (H·W, G²)
    sums = np.einsum("ncp,pg->ncg", flat * foreground, onehot)
    counts = np.einsum("ncp,pg->ncg", foreground.astype(np.float64), onehot)
    means = sums / np.maximum(counts, 1)
    overall = (flat * foreground).sum(-1, keepdims=True) / np.maximum(foreground.sum(-1, keepdims=True), 1)
    out = np.where(foreground, flat - means[..., block] + overall, flat)
    return np.clip(out.reshape(x.shape), 0.0, 1.0).astype(np.float32)


def remove_case_residual(images: np.ndarray, groups: np.ndarray | None = None, sigma: float = CASE_SIGMA) -> np.ndarray:
    """``aware:case``: subtract from each group's (case's) slices, on their foreground, the mean
    over the group's slices (per pixel, over the slices where it is foreground) of the high-pass
    residual (image − Gaussian blur of ``sigma`` px), centred on the mean over the K groups and
    scaled by K/(K−1): the part of the noise the case's slices share."""
    groups = np.zeros(len(images), dtype=np.int64) if groups is None else np.asarray(groups)
    x = images.astype(np.float32)
    residual = x - blur(x, sigma)
    foreground = (x > 0).any(axis=1, keepdims=True)
    names = list(np.unique(groups))
    # per pixel: the mean over the case's slices where that pixel is foreground (the noise is there only)
    shared = np.stack([(residual[groups == g] * foreground[groups == g]).sum(0) / np.maximum(foreground[groups == g].sum(0), 1) for g in names])
    if len(names) > 1:  # centred (the common anatomy), rescaled: centring takes 1/K of each case's own pattern
        shared = (shared - shared.mean(axis=0, keepdims=True)) * len(names) / (len(names) - 1)
    out = x.copy()
    for k, g in enumerate(names):
        sel = groups == g
        out[sel] = np.clip(x[sel] - shared[k][None] * foreground[sel], 0.0, 1.0)
    return out


def apply_defences(images: np.ndarray, specs: Sequence[str] | None, *, groups: np.ndarray | None = None) -> np.ndarray:
    """The image transforms of ``specs`` in order (``adv`` is skipped: it is a training mode).

    ``groups`` (N,) names each image's case for ``aware`` (default: all images one case)."""
    out = np.asarray(images, dtype=np.float32)
    for spec in specs or ():
        name = spec.partition(":")[0]
        if name == "adv":
            continue
        if spec == "aware:slice":
            out = remove_block_means(out)
        elif spec == "aware:case":
            out = remove_case_residual(out, groups)
        elif name == "aware":
            out = remove_signature(out, groups)
        elif name == "jpeg":
            out = jpeg(out, int(_value(spec)))
        elif name == "blur":
            out = blur(out, _value(spec))
        elif name == "median":
            out = median(out, int(_value(spec)))
        elif name == "lowpass":
            out = lowpass(out, _value(spec))
        elif name == "quantise":
            out = quantise(out, int(_value(spec)))
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out


def image_defences(specs: Sequence[str] | None) -> list[str]:
    return [s for s in specs or () if not s.startswith("adv")]


def adv_eps(specs: Sequence[str] | None) -> float | None:
    values = [_value(s) for s in specs or () if s.startswith("adv:")]
    return max(values) if values else None


def defend_tensor(x: Any, specs: Sequence[str] | None) -> Any:
    """Torch (N, C, H, W) → defended, with the gradient passed straight through (BPDA): the
    forward value is the defended image, the backward is the identity. The batch is one case."""
    import torch

    specs = image_defences(specs)
    if not specs:
        return x
    with torch.no_grad():
        defended = torch.from_numpy(apply_defences(x.detach().float().cpu().numpy(), specs)).to(x.device, x.dtype)
    return x + (defended - x).detach()


class DefendedPredictor:
    """A Predictor whose ``forward``/``embed`` first resize to the model's input size and apply the
    checkpoint's defences (straight-through gradients); everything else is the Predictor's."""

    def __init__(self, predictor: Any, specs: Sequence[str]):
        self._predictor = predictor
        self.defences = list(specs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def _defend(self, x: Any) -> Any:
        from medtools.core.preprocess import resize

        return defend_tensor(resize(x, self._predictor.size), self.defences)

    def forward(self, x: Any, **extra: Any) -> Any:
        return self._predictor.forward(self._defend(x), **extra)

    def embed(self, x: Any) -> Any:
        return self._predictor.embed(self._defend(x))


def with_defences(predictor: Any) -> Any:
    """The predictor wrapped with its checkpoint's image defences (unchanged when it has none)."""
    specs = image_defences(predictor.config.get("defence"))
    return DefendedPredictor(predictor, specs) if specs else predictor
