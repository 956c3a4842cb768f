"""Robustness of the segmenter: white-box FGSM and PGD on its inputs, Dice under attack as a
curve over eps, and the adversarial batches of ``seg-train --adv-train``.

Threat model: the attacker knows the segmentation model (weights, preprocessing) and the
ground-truth mask, and adds an L∞-bounded perturbation to each slice the model reads. The
loss pushed up is the training loss, cross-entropy + Dice against the ground truth
(untargeted). FGSM (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples") is one signed-gradient step of size eps from the clean slice; PGD (Madry et al.
2018) starts uniformly in the eps ball and takes ``steps`` projected steps (default step size
max(eps/4, 2.5·eps/steps), as ``protect``). Both run through ``Predictor.forward`` (the one
differentiable inference path: resize to the checkpoint's size, model range) and share
the ascent loop with protection (``brain/pgd.py: linf_ascent``).

``seg-eval --attack`` loads and scores cases as ``segment`` + ``seg-eval`` do (same
preprocessing, 2.5-D context stacked as the checkpoint says; without ``--tta`` or
largest-component post-processing), so eps 0 is the clean Dice. With ``--context`` each
stacked neighbour slice is perturbed on its own (a slightly stronger attacker than one
perturbed volume).

Units: ``eps`` is a fraction of the model's normalised input range [0, 1] (the percentile
window of each modality, as ``protect --eps``); perturbed slices are clipped to [0, 1].
eps 0 is the clean input. This attacks the model input, after normalisation: an attacker
who can only write the raw file changes the normalisation window too (not modelled here).

Adversarial training (Madry et al. 2018): :func:`adversarial_batch` replaces a chosen
fraction of each training batch by its PGD perturbation against the model being trained
(in eval mode, so BatchNorm statistics are not moved by the attack).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.pgd import default_step_size
from medtools.core.errors import UsageError

ATTACKS = ("fgsm", "pgd", "noise")  # noise: random ±eps signs, the no-gradient baseline
PGD_STEPS = 10


def parse_eps(text: str | Sequence[float]) -> list[float]:
    """``"0,0.01,0.02"`` (or a list) → sorted unique eps values in [0, 1]; UsageError otherwise."""
    if isinstance(text, str):
        try:
            values = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--eps must be comma-separated numbers, got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if not values or any(not (0.0 <= v <= 1.0) for v in values):
        raise UsageError(f"--eps values must lie in [0, 1] (fractions of the normalised intensity range), got {text!r}")
    return sorted(set(values))


def seg_loss(logits: Any, labels: Any) -> Any:
    """Cross-entropy + Dice (smp, multiclass, from logits): the segmenter's training loss."""
    import torch.nn.functional as F
    from segmentation_models_pytorch.losses import DiceLoss

    logits = logits.float()
    return F.cross_entropy(logits, labels) + DiceLoss(mode="multiclass", from_logits=True)(logits, labels)


def perturb(
    forward: Callable[[Any], Any],
    images: Any,
    labels: Any,
    *,
    attack: str,
    eps: float,
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool = True,
    generator: Any = None,
    clip: bool = True,
) -> Any:
    """Adversarial version of one batch (N, C, H, W) in [0, 1], |δ| ≤ eps, clipped to [0, 1]
    (``clip=False``: not clipped, for augmented training batches that leave [0, 1] a little).

    ``forward(x)`` gives logits (N, classes, H, W) for ``labels`` (N, H, W) class indices.
    ``fgsm``: one step of size eps from δ = 0 (``steps``/``step_size``/``random_start`` unused);
    ``pgd``: ``steps`` (default 10) steps of ``step_size`` from a uniform random start;
    ``noise``: random ±eps per pixel, no gradient (the baseline: how much is the model's
    gradient, how much any noise of that size).
    """
    import torch

    from medtools.brain.pgd import linf_ascent

    if attack not in ATTACKS:
        raise UsageError(f"--attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    x = images.detach().float()
    if eps <= 0:
        return x.clone()
    labels = labels.to(x.device).long()

    def project(delta: Any) -> Any:
        return (x + delta).clamp(0.0, 1.0) - x if clip else delta

    if attack == "noise":  # random signs at the full budget: what a count of "simulated attacks" without gradients tries
        signs = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x.device) * 2.0 - 1.0
        return (x + project(signs * eps)).detach()
    if attack == "fgsm":
        steps, step_size, delta = 1, eps, torch.zeros_like(x)
    else:
        steps = PGD_STEPS if steps is None else int(steps)
        step_size = default_step_size(eps, steps) if step_size is None else float(step_size)
        if random_start:
            delta = project((torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1) * eps)
        else:
            delta = torch.zeros_like(x)
    delta = linf_ascent(lambda d: seg_loss(forward(x + d), labels), delta, steps=steps, step_size=step_size, eps=eps, project=project)
    return (x + delta).detach()


def attack_slices(
    predictor: Any,
    slices: np.ndarray,
    labels: np.ndarray,
    *,
    attack: str,
    eps: float,
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool = True,
    batch_size: int | None = None,
    generator: Any = None,
) -> np.ndarray:
    """Class-index predictions (N, H, W) of ``predictor`` on attacked ``slices`` (N, C, H, W) in
    [0, 1], batched; ``labels`` (N, H, W) are the ground-truth class indices the attack uses."""
    import torch

    step = int(batch_size or predictor.batch_size)
    out = []
    for start in range(0, len(slices), step):
        x = torch.from_numpy(np.ascontiguousarray(slices[start : start + step])).float()
        y = torch.from_numpy(np.ascontiguousarray(labels[start : start + step])).long()
        adv = perturb(predictor.forward, x, y, attack=attack, eps=eps, steps=steps, step_size=step_size, random_start=random_start, generator=generator)
        with torch.no_grad():
            out.append(predictor.forward(adv).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *slices.shape[-2:]), np.int64)


def dice_curve(predictor: Any, slices: np.ndarray, labels: np.ndarray, *, attack: str, eps: Sequence[float], **options: Any) -> dict[str, Any]:
    """Foreground Dice (all classes > 0 together, pooled over the slices) at each eps:
    ``{"eps": [...], "dice": [...]}``. ``options`` as :func:`attack_slices`."""
    from medtools.brain.metrics import dice

    values = parse_eps(list(eps))
    scores = [dice(attack_slices(predictor, slices, labels, attack=attack, eps=e, **options) > 0, labels > 0) for e in values]
    return {"attack": attack, "eps": values, "dice": scores}


def _class_labels(predictor: Any, raw: np.ndarray) -> np.ndarray:
    """Raw ground-truth values → the model's class indices (its training label map)."""
    from medtools.core.data import map_labels

    label_map = None
    if predictor.checkpoint is not None:
        recorded = predictor.checkpoint.provenance.get("label_map")
        if isinstance(recorded, dict):
            label_map = {int(k): int(v) for k, v in recorded.items()}
    if label_map is None:
        label_map = {int(v): i for i, v in enumerate(predictor.config["label_values"])}
    return map_labels(raw, label_map)


def evaluate_attack(
    cases: Sequence[Any],
    model: Path | str,
    *,
    attack: str,
    eps: str | Sequence[float],
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool = True,
    batch_size: int = 16,
    device: str | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], Any]:
    """``seg-eval --attack``: Dice (per label, BraTS region, foreground) of ``model`` on each
    case (with ground truth) under ``attack`` at each eps, and the mean over cases. Each case and
    its truth are mapped into the checkpoint's training geometry first (the attack acts on what
    the model sees), and Dice is measured there.

    Returns (result, core.batch.Outcome). ``result["dice"][region]`` is the mean curve
    (one value per eps); ``result["curve"]`` holds the full mean scores per eps and
    ``result["cases"][case][region]`` each case's curve.
    """
    import torch

    from medtools.brain.cases import SINGLE, load_case
    from medtools.brain.metrics import mean_scores, score_case
    from medtools.core import report
    from medtools.core.errors import InputError
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import slices_to_volume, stack_context, volume_to_slices

    if attack not in ATTACKS:
        raise UsageError(f"--attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    values = parse_eps(eps)
    if attack == "pgd" and steps is not None and steps < 1:
        raise UsageError("--steps must be at least 1")
    predictor = Predictor(model, kind="seg", device=device, precision="fp32", batch_size=batch_size)
    label_values = np.asarray(predictor.config["label_values"])
    generator = torch.Generator().manual_seed(int(seed))
    per_eps: list[list[dict[str, Any]]] = [[] for _ in values]
    per_case: dict[str, dict[str, list[float]]] = {}
    total_slices = 0

    def work(case: Any) -> None:
        nonlocal total_slices
        if case.label is None:
            raise InputError("no ground-truth label for this case")
        loaded = load_case(case, predictor.modalities or [SINGLE], predictor.norm, with_label=True, geometry=True)  # into the training geometry, as segment
        label = loaded.label
        if loaded.grid is not None:  # the truth too (nearest): Dice is measured on the model's grid
            if label.shape != loaded.grid.shape:
                raise InputError(f"label shape {label.shape} differs from the image's {loaded.grid.shape}")
            label = loaded.grid.to_model(label, labels=True)
        truth = volume_to_slices(_class_labels(predictor, label.reshape(*label.shape[:2], -1)))
        if truth.shape[0] != loaded.slices.shape[0] or truth.shape[1:] != loaded.slices.shape[2:]:
            raise InputError(f"label shape {loaded.label.shape} differs from the image's")
        truth_raw = slices_to_volume(label_values[truth])
        inputs = stack_context(loaded.slices, int(predictor.config.get("context", 0)))  # as segment feeds the model
        scores = []
        for e in values:
            pred = attack_slices(predictor, inputs, truth, attack=attack, eps=e, steps=steps, step_size=step_size, random_start=random_start, batch_size=batch_size, generator=generator)
            scores.append(score_case(slices_to_volume(label_values[pred]), truth_raw, labels=label_values.tolist(), with_hd95=False))
        for index, score in enumerate(scores):
            per_eps[index].append(score)
        per_case[case.case] = {region: [s[region]["dice"] for s in scores] for region in scores[0]}
        total_slices += len(loaded.slices)

    from medtools.core import batch

    outcome = batch.run_items(cases, work, name=lambda c: c.case, total=len(cases), description=f"seg-eval --attack {attack}")
    if not per_case:
        raise InputError("no case with ground truth could be evaluated")
    curve = [{"eps": e, "mean": {region: {k: v for k, v in m.items() if k != "hd95"} for region, m in mean_scores(rows).items()}} for e, rows in zip(values, per_eps)]
    regions = list(curve[0]["mean"])
    steps_used = {"fgsm": 1, "noise": 0}.get(attack, PGD_STEPS if steps is None else int(steps))
    result = {
        "attack": attack,
        "eps": values,
        "eps_units": "fraction of the normalised [0, 1] input range (per modality percentile window)",
        "steps": steps_used,
        "step_size": [e if attack != "pgd" else (default_step_size(e, steps_used) if step_size is None else float(step_size)) for e in values],
        "random_start": bool(random_start and attack == "pgd"),
        "dice": {region: [c["mean"][region]["dice"] for c in curve] for region in regions},
        "curve": curve,
        "cases": per_case,
        "slices": total_slices,
        "failed": [name for name, _ in outcome.failures],
    }
    return result, outcome


def adv_settings(fraction: float | None, eps: float | None, steps: int | None = None) -> dict[str, Any] | None:
    """``seg-train --adv-train F --adv-eps E --adv-steps N`` checked → the keywords of
    :func:`adversarial_batch` (also recorded in the checkpoint), or None when off (F = 0)."""
    if not fraction:
        return None
    steps = 3 if steps is None else int(steps)
    if not (0.0 < fraction <= 1.0):
        raise UsageError(f"--adv-train must be a fraction in (0, 1], got {fraction}")
    if eps is None or not (0.0 < eps <= 1.0):
        raise UsageError(f"--adv-train needs --adv-eps in (0, 1] (normalised units), got {eps}")
    if steps < 1:
        raise UsageError(f"--adv-steps must be at least 1, got {steps}")
    return {"fraction": float(fraction), "eps": float(eps), "steps": steps, "step_size": default_step_size(float(eps), steps), "attack": "pgd"}


def adversarial_batch(
    net: Any,
    images: Any,
    labels: Any,
    fraction: float,
    eps: float,
    steps: int = 3,
    *,
    step_size: float | None = None,
    generator: Any = None,
    attack: str = "pgd",
) -> Any:
    """A training batch with round(fraction · N) of its items (chosen at random) replaced by PGD
    perturbations (eps, ``steps``) against ``net`` itself; the rest unchanged.

    ``net`` is the model being trained (called on the batch as training calls it) or a
    Predictor. It is put in eval mode for the attack and restored, and its parameters get no
    gradient from the attack.
    """
    import torch

    if not (0.0 <= fraction <= 1.0):
        raise UsageError(f"--adv-train must be a fraction in [0, 1], got {fraction}")
    n = int(round(fraction * images.shape[0]))
    if n == 0 or eps <= 0:
        return images
    chosen = torch.randperm(images.shape[0], generator=generator)[:n].to(images.device)
    predictor = hasattr(net, "prepare")
    module = net.model if predictor else net
    module = getattr(module, "module", module)  # DDP's wrapped model: no gradient sync for the attack
    forward = net.forward if predictor else module
    was_training = module.training
    module.eval()
    try:
        adv = perturb(forward, images[chosen], labels[chosen], attack=attack, eps=eps, steps=steps, step_size=step_size, generator=generator, clip=False)
    finally:
        module.train(was_training)
    out = images.clone()
    out[chosen] = adv.to(out.dtype)
    return out


def render_curve(result: dict) -> list[str]:
    """seg-eval --attack's table for people: Dice per region at each eps."""
    regions = list(result["dice"])
    lines = [f"{'eps':<10}" + "".join(f"{r:>12}" for r in regions)]
    for index, value in enumerate(result["eps"]):
        lines.append(f"{value:<10g}" + "".join(f"{result['dice'][r][index]:>12.4f}" for r in regions))
    return lines
