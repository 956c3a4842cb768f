"""Error-minimising protective noise per release: ``protect --objective minmin`` (Huang et al.,
ICLR 2021, "Unlearnable Examples: Making Personal Data Unexploitable") and its robust variant
``--objective minminmax`` (Fu et al., ICLR 2022, "Robust Unlearnable Examples: Protecting Data
Against Adversarial Learning").

A *release* is what one ``protect`` run writes (all its input cases; with ``--shard``, one
shard). For a release the method trains a fresh surrogate re-identification model (the
architecture of the first ``--attacker``, re-initialised from the release seed; its weights are
not used) to tell the release's patients apart, and alternates, per round:

1. ``TRAIN_STEPS`` optimiser steps of the surrogate on the protected images ``x + δ`` (the
   attacker's own augmentation, ``reid._augment``);
2. ``steps`` signed-gradient steps per batch that *minimise* the surrogate's loss on ``x + δ``
   (|δ| ≤ eps, foreground only, with the segmentation-preserving term of ``pgd.py``);

until the surrogate is right on ``STOP_ACCURACY`` of the (non-empty) slices or ``rounds`` are
done. The noise then carries the patient's label in a form that is easier to learn than anatomy:
a model trained on the release learns the noise (a shortcut) instead of the patient.

``minminmax`` (min-min-max) adds Fu et al.'s inner maximisation: in both the surrogate's and the
noise's steps an adversarial perturbation of radius ``ROBUST_SHARE × eps`` (``ROBUST_STEPS``
signed-gradient ascent steps) is added first, so the shortcut survives an attacker who trains
adversarially at a smaller radius.

Per-release independence (what makes ``signature`` work across visits): the surrogate's
initialisation, the noise's random start and the surrogate's batches are drawn from
``release_seed`` = HMAC-SHA256(key, sorted case ids), so two releases of the same patient get
noise from unrelated surrogates; the shortcut learnt on one release need not carry over to the
other. Whether it does is an empirical question: the noise follows each release's anatomy
through the surrogate's gradient (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtools.core.errors import UsageError

MINMIN_OBJECTIVES = ("minmin", "minminmax")
TRAIN_STEPS = 10  # surrogate optimiser steps per round (Huang et al. 2021: 10)
STOP_ACCURACY = 0.99  # Huang et al.'s stop condition on the surrogate's training accuracy
ROBUST_SHARE = 0.5  # minminmax: adversarial radius / noise radius (Fu et al. 2022: 4/255 of 8/255)
ROBUST_STEPS = 2  # minminmax: ascent steps of the inner maximisation


def release_seed(key: bytes, case_ids: Sequence[str]) -> int:
    """The release's 63-bit seed: HMAC-SHA256(key, 'medtools-minmin:' + sorted case ids)."""
    import hashlib
    import hmac

    message = "medtools-minmin:" + "\n".join(sorted(case_ids))
    return int.from_bytes(hmac.new(key, message.encode(), hashlib.sha256).digest()[:8], "big") >> 1


def release_noise(slices: np.ndarray, labels: Sequence[str], *, seed: int = 0, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Error-minimising noise (N, C, H, W), |δ| ≤ eps, for the release's slices (N, C, H, W).

    ``labels`` (N,) names each slice's patient; ``options`` are those of ``_release_noise``:
    ``template`` (a Predictor whose architecture the surrogate copies, reading ``channels``),
    ``eps``, ``steps``, ``step_size``, ``rounds``, ``robust``, ``utility``, ``utility_weight``,
    ``quant`` (N, C: the rounding step of each slice's output file, normalised units), ``mask``
    (N, 1, H, W: the foreground that may change), ``batch_size``, ``lr``. The release ``seed``
    drives everything random (initialisation, batches, augmentation, random start); the caller's
    global torch RNG is left as it was. Returns (δ, {"rounds", "surrogate_top1"})."""
    import torch

    device = options["template"].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _release_noise(slices, labels, seed=seed, **options)


def _release_noise(
    slices: np.ndarray,
    labels: Sequence[str],
    *,
    template: Any,
    channels: Sequence[int],
    eps: float,
    steps: int,
    step_size: float,
    rounds: int = 5,
    robust: bool = False,
    utility: tuple[Any, list[int]] | None = None,
    utility_weight: float = 1.0,
    quant: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    batch_size: int = 32,
    seed: int = 0,
    lr: float = 1e-3,
) -> tuple[np.ndarray, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from medtools.brain.pgd import linf_ascent, utility_penalty
    from medtools.brain.reid import _augment
    from medtools.core import ckpt
    from medtools.core.predict import Predictor

    names = sorted(set(labels))
    if len(names) < 2:
        raise UsageError("--objective minmin/minminmax needs at least two patients in one protect run (the release): it trains a surrogate to tell them apart")
    device = template.device
    y_all = torch.tensor([names.index(label) for label in labels], device=device)
    x_all = torch.from_numpy(np.ascontiguousarray(slices)).to(device)
    chans = list(channels)
    n = len(x_all)
    generator = torch.Generator().manual_seed(seed)
    config = {k: v for k, v in template.config.items() if k != "defence"}
    config.update(num_classes=len(names), class_names=names, in_channels=len(chans))
    net = ckpt.new_model(template.kind.name, config).to(device)
    surrogate = Predictor.from_model(net, kind=template.kind.name, config=config, norm=template.norm)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    keep = torch.from_numpy(np.ones(n, bool) if mask is None else mask.reshape(n, -1).any(1)).to(device)
    m_all = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).to(device).float()
    q_all = None if quant is None else torch.from_numpy(np.asarray(quant, np.float32)).view(n, -1, 1, 1).to(device)
    delta = (torch.rand(x_all.shape, generator=generator).to(device) * 2 - 1) * eps
    if m_all is not None:
        delta = delta * m_all
    radius = ROBUST_SHARE * eps

    def logits_of(x: Any) -> Any:
        return surrogate.forward(x[:, chans]).float()

    def worst_case(x: Any, y: Any) -> Any:
        """Fu et al.'s inner max: a perturbation of radius ROBUST_SHARE·eps that raises the loss."""
        start = (torch.rand(x.shape, generator=generator).to(device) * 2 - 1) * radius
        return linf_ascent(lambda adv: F.cross_entropy(logits_of(x + adv), y), start, steps=ROBUST_STEPS, step_size=radius / 2, eps=radius)

    def accuracy() -> float:
        net.eval()
        hits = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                sel = slice(start, start + batch_size)
                hits.append(logits_of(x_all[sel] + delta[sel]).argmax(1) == y_all[sel])
        hit = torch.cat(hits)[keep]
        return float(hit.float().mean()) if len(hit) else 1.0

    clean_seg = None
    if utility is not None:
        seg_model, seg_channels = utility
        with torch.no_grad():
            clean_seg = torch.cat([seg_model.forward(x_all[s : s + batch_size][:, seg_channels]).float().log_softmax(1) for s in range(0, n, batch_size)])

    done, top1 = 0, 0.0
    for done in range(1, max(rounds, 1) + 1):
        # (1) the surrogate learns the protected release
        net.train()
        for _ in range(TRAIN_STEPS):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(device)
            x = _augment(x_all[idx] + delta[idx])
            if robust:
                net.eval()
                x = x + worst_case(x, y_all[idx])
                net.train()
            loss = F.cross_entropy(logits_of(x), y_all[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        # (2) the noise minimises the surrogate's loss (the seg output stays)
        net.eval()
        for start in range(0, n, batch_size):
            sel = slice(start, start + batch_size)
            x, y = x_all[sel], y_all[sel]

            def error(d: Any) -> Any:  # minimised: linf_ascent climbs its negative
                adv = x + d
                if q_all is not None:
                    adv = adv + (torch.rand(x.shape, generator=generator).to(device) - 0.5) * q_all[sel]
                seen = _augment(adv)
                if robust:
                    seen = seen + worst_case(seen.detach(), y)
                loss = F.cross_entropy(logits_of(seen), y)
                if utility is not None:
                    loss = loss + utility_penalty(utility[0], utility[1], adv, clean_seg[sel], utility_weight)
                return -loss

            delta[sel] = linf_ascent(error, delta[sel].clone(), steps=steps, step_size=step_size, eps=eps, mask=None if m_all is None else m_all[sel])
        top1 = accuracy()
        if top1 >= STOP_ACCURACY:
            break
    return delta.detach().cpu().numpy(), {"rounds": done, "surrogate_top1": top1}
