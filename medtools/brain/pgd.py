"""Adversarial protection: L∞ PGD noise that blinds re-identification attackers while a
segmentation model keeps its output (Madry et al. 2018, "Towards Deep Learning Models
Resistant to Adversarial Attacks"; expectation over transformation, Athalye et al. 2018).

Units: ``eps`` is a fraction of each modality's normalised intensity range, i.e. of the
percentile window [p0.5, p99.5] that maps the volume to [0, 1] (the normalisation recorded
in the checkpoints). In raw units the budget is ``eps × (p99.5 − p0.5)`` per modality, and
it holds exactly after writing: integer outputs are rounded and then clipped to
``floor(eps × range)``.

Objectives (what the noise pushes the attackers towards):

* ``untargeted`` – away from the true identity (the seed's method);
* ``decoy`` – towards a random other identity, drawn per slice, so the noise is not one
  consistent patient-specific pattern;
* ``entropy`` – towards a uniform prediction;
* ``feature`` – penultimate features away from the clean image's features (label-free);
* ``minmin`` / ``minminmax`` – error-minimising noise per release (Huang et al. 2021) and its
  robust variant (Fu et al. 2022), computed jointly for all cases of one ``protect`` run by
  ``brain/minmin.py`` (not by ``pgd_delta``);
* ``signature`` – each case (one release of one visit) gets a secret block pattern and a
  secret decoy identity, both drawn from HMAC(``--key``, case id): the pattern takes
  ``signature_share`` of the budget (the same on every slice of the case), PGD towards the
  decoy takes the rest. Against an attacker retrained on protected images (adaptive): the
  pattern is an easier feature to learn than anatomy (a class-wise "shortcut", as in
  unlearnable examples, Huang et al. 2021), and because every release gets an independent
  pattern, that shortcut does not carry over to the patient's other releases. It lowers the
  adaptive attacker on average, not reliably (docs/results.md).

Several ``--attacker`` checkpoints form an ensemble (losses averaged). Each step sees
random rounding noise of the output's quantisation step and, with ``diversity``, a
random shift, so the protection survives writing to disk and small pose changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.cases import LoadedCase
from medtools.core.predict import Predictor
from medtools.core.preprocess import slices_to_volume
from medtools.core.errors import UsageError
from medtools.core.io import Image

OBJECTIVES = ("untargeted", "decoy", "entropy", "feature", "signature", "minmin", "minminmax")  # the last two: brain/minmin.py
SIGNATURE_GRID = 8  # the signature pattern is a GRID×GRID block pattern: survives resizing and shifts


def load_attackers(paths: list[Path], device: Any) -> list[Predictor]:
    """Attackers as Predictors (frozen weights): ``forward`` is differentiable w.r.t. the input.
    An attacker trained with defences (``reid-train --defence``) sees them applied here too."""
    from medtools.brain.defences import with_defences

    return [with_defences(Predictor(path, kind=("reid", "cls"), device=device, precision="fp32")) for path in paths]


def quantisation_steps(loaded: LoadedCase) -> np.ndarray:
    """Per-channel rounding step of the output file in normalised units (0 for float files)."""
    steps = []
    for image, window in zip(loaded.images, loaded.windows):
        integer = image.array.dtype.kind in "iu"
        steps.append(1.0 / (window["high"] - window["low"]) if integer else 0.0)
    return np.asarray(steps, dtype=np.float32)


def pgd_delta(
    slices: Any,
    attackers: list[tuple[Predictor, list[int]]],
    *,
    eps: float,
    steps: int,
    step_size: float,
    objective: str,
    identity: list[int | None],
    utility: tuple[Predictor, list[int]] | None = None,
    utility_weight: float = 1.0,
    random_start: bool = True,
    quant: Any = None,
    diversity: bool = True,
    mask: Any = None,
    generator: Any = None,
    decoys: list[int | None] | None = None,
    base: Any = None,
) -> Any:
    """The perturbation (same shape as ``slices``, |δ| ≤ eps) for one batch of slices.

    ``attackers`` pairs each attacker with the channel indices it reads; ``identity`` gives,
    per attacker, the true class index of this case (None: use the clean prediction; a tensor:
    one class per slice).
    ``utility`` is (segmentation Predictor, its channels). ``decoys`` fixes, per
    attacker, the class to push towards (otherwise drawn per slice); ``base`` is a fixed
    perturbation added first, PGD then spends only ``eps − max|base|``.
    """
    import torch
    import torch.nn.functional as F

    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if objective in ("minmin", "minminmax"):
        raise UsageError(f"--objective {objective} is computed per release (brain/minmin.py), not per batch")
    x = slices.detach()
    fixed = base if base is not None else torch.zeros_like(x)
    if base is not None:
        eps = max(eps - float(base.abs().max()), 0.0)
        step_size = min(step_size, eps) if eps > 0 else 0.0
    if random_start:
        delta = (torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    if mask is not None:
        delta = delta * mask
    with torch.no_grad():
        targets, clean_features, clean_seg = [], [], None
        for index, ((attacker, channels), known) in enumerate(zip(attackers, identity)):
            logits = attacker.forward(x[:, channels])
            if torch.is_tensor(known):  # one class per slice (adversarial training)
                truth = known.to(x.device)
            else:
                truth = torch.full((len(x),), known, device=x.device) if known is not None else logits.argmax(1)
            if decoys is not None and decoys[index] is not None:
                targets.append(torch.full((len(x),), decoys[index], device=x.device))
            elif objective in ("decoy", "signature"):
                n = logits.shape[1]
                offset = torch.randint(1, max(n, 2), (len(x),), generator=generator).to(x.device)
                targets.append((truth + offset) % n)
            else:
                targets.append(truth)
            if objective == "feature":
                clean_features.append(attacker.embed(x[:, channels]).detach())
        if utility is not None:
            seg_model, seg_channels = utility
            clean_seg = seg_model.forward(x[:, seg_channels]).float().log_softmax(1)

    def objective_loss(delta: Any) -> Any:
        adv = x + fixed + delta
        if quant is not None:
            adv = adv + (torch.rand(x.shape, generator=generator).to(x.device) - 0.5) * quant
        if diversity:
            shift = [int(v) for v in torch.randint(-2, 3, (2,), generator=generator)]
            adv_seen = torch.roll(adv, shifts=shift, dims=(-2, -1))
        else:
            adv_seen = adv
        loss = 0.0
        for index, ((attacker, channels), target) in enumerate(zip(attackers, targets)):
            inp = adv_seen[:, channels]
            if objective == "feature":
                loss = loss - F.cosine_similarity(attacker.embed(inp).flatten(1), clean_features[index].flatten(1)).mean()
                continue
            logits = attacker.forward(inp).float()
            if objective == "untargeted":
                loss = loss + F.cross_entropy(logits, target)
            elif objective in ("decoy", "signature"):
                loss = loss - F.cross_entropy(logits, target)
            else:  # entropy: minimise KL(uniform || p)
                loss = loss + logits.log_softmax(1).mean()
        loss = loss / len(attackers)
        if utility is not None:
            loss = loss - utility_penalty(utility[0], utility[1], adv, clean_seg, utility_weight)
        return loss

    delta = linf_ascent(objective_loss, delta, steps=steps, step_size=step_size, eps=eps, mask=mask)
    return (fixed + delta).detach()


def default_step_size(eps: float, steps: int) -> float:
    """The PGD step when none is given: max(eps/4, 2.5·eps/steps) (protect, seg-eval --attack, --adv-train)."""
    return max(eps / 4.0, 2.5 * eps / max(steps, 1))


def linf_ascent(loss_of: Any, delta: Any, *, steps: int, step_size: float, eps: float, mask: Any = None, project: Any = None) -> Any:
    """The projected signed-gradient ascent loop of L∞ PGD (Madry et al. 2018), shared by
    ``pgd_delta`` (protection) and ``brain/robust.py`` (attacks on the segmenter, adversarial
    training): ``steps`` times δ ← clip(δ + step_size · sign(∇δ loss_of(δ)), −eps, eps), then
    ``mask`` (multiplied) and ``project(δ)`` (e.g. keep x + δ inside [0, 1]). FGSM is one step
    of size eps from δ = 0. Returns the detached δ."""
    import torch

    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(delta), delta)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
            if mask is not None:
                delta = delta * mask
            if project is not None:
                delta = project(delta)
    return delta.detach()


def utility_penalty(seg_model: Any, seg_channels: list[int], adv: Any, clean_seg: Any, weight: float) -> Any:
    """``weight × KL(seg(x) ‖ seg(x + δ))`` per pixel (×1000): what the noise costs the segmenter."""
    import torch.nn.functional as F

    adv_seg = seg_model.forward(adv[:, seg_channels]).float().log_softmax(1)
    return weight * F.kl_div(adv_seg, clean_seg, log_target=True, reduction="batchmean") / (adv_seg.shape[-1] * adv_seg.shape[-2]) * 1000.0


def _keyed_draw(key: bytes, message: str) -> int:
    """A 64-bit number only the key holder can reproduce: the first 8 bytes of HMAC-SHA256(key, message)."""
    import hashlib
    import hmac

    return int.from_bytes(hmac.new(key, message.encode(), hashlib.sha256).digest()[:8], "big")


def case_decoy(key: bytes, case_id: str, true_index: int | None, classes: int) -> int:
    """The secret decoy identity of one case: HMAC(key, case id) over the other classes."""
    draw = _keyed_draw(key, case_id)
    if true_index is None or classes < 2:
        return draw % max(classes, 1)
    return (true_index + 1 + draw % (classes - 1)) % classes


def signature_pattern(key: bytes, case_id: str, channels: int, height: int, width: int, amplitude: float) -> np.ndarray:
    """The case's secret ±amplitude block pattern (C, H, W), drawn from HMAC(key, case id).

    One pattern per release, the same on every slice: to a model trained on protected images it
    is the easiest feature that separates patients (a class-wise shortcut), and because every
    release gets an independent pattern the shortcut does not carry over to other releases.
    Unlike a public per-decoy pattern, two releases never share one, and without the key nobody
    can regenerate it.
    """
    seed = _keyed_draw(key, f"medtools-signature:{case_id}")
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(channels, SIGNATURE_GRID, SIGNATURE_GRID))
    rows = (np.arange(height) * SIGNATURE_GRID // height)[:, None]
    cols = (np.arange(width) * SIGNATURE_GRID // width)[None, :]
    return (signs[:, rows, cols] * amplitude).astype(np.float32)


def quantise_delta(loaded: LoadedCase, delta: np.ndarray, eps: float) -> tuple[list[Image], np.ndarray]:
    """Write-ready protected images (same dtype and geometry) and the perturbation they really hold
    (normalised units, (Z, C, H, W)) after rounding and clipping to the budget. With a
    ``loaded.grid`` the noise (on the training geometry's slices) is mapped back onto the input's
    grid before it is added, and the applied noise into that geometry again for the metrics."""
    out_images, real = [], []
    for channel, (image, window) in enumerate(zip(loaded.images, loaded.windows)):
        scale = window["high"] - window["low"]
        raw = image.array
        volume_delta = slices_to_volume(delta[:, channel])
        if loaded.grid is not None:  # computed in the training geometry: back onto the input's grid
            volume_delta = loaded.grid.from_model(volume_delta)
        volume_delta = volume_delta.reshape(raw.shape) * scale
        if raw.dtype.kind in "iu":
            budget = np.floor(eps * scale + 1e-9)
            step = np.clip(np.rint(volume_delta), -budget, budget)
            info = np.iinfo(raw.dtype)
            protected = np.clip(raw.astype(np.int64) + step.astype(np.int64), info.min, info.max).astype(raw.dtype)
        else:
            protected = (raw.astype(np.float64) + np.clip(volume_delta, -eps * scale, eps * scale)).astype(raw.dtype)
        out_images.append(image.with_array(protected))
        applied = ((protected.astype(np.float64) - raw.astype(np.float64)) / scale).reshape(raw.shape if raw.ndim == 3 else (*raw.shape, 1))
        if loaded.grid is not None:  # what the models see of it: in the training geometry again
            applied = loaded.grid.to_model(applied.astype(np.float32))
        real.append(np.moveaxis(applied, 2, 0))
    return out_images, np.stack(real, axis=1).astype(np.float32)


def image_quality(clean: np.ndarray, protected: np.ndarray) -> dict[str, float]:
    """L∞, PSNR and SSIM on normalised [0, 1] slices (Z, C, H, W), data range 1."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    clean64, prot64 = clean.astype(np.float64), np.clip(protected.astype(np.float64), 0.0, 1.0)
    linf = float(np.abs(protected - clean).max()) if clean.size else 0.0
    mse = float(np.mean((clean64 - prot64) ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(clean64, prot64, data_range=1.0))
    ssim_values = [structural_similarity(clean64[z, c], prot64[z, c], data_range=1.0) for z in range(clean.shape[0]) for c in range(clean.shape[1]) if min(clean.shape[-2:]) >= 7]
    return {"linf": linf, "psnr": psnr, "ssim": float(np.mean(ssim_values)) if ssim_values else float("nan")}
