"""DP-SGD for the server's mapping network (opacus), against membership inference.

``umn-train --dp-epsilon ε`` wraps model, optimizer and loader in the ``prepare`` hook of
``core.train.fit`` (``PrivacyEngine.make_private``: Poisson sampling of the latent pairs,
per-sample gradients clipped to ``--max-grad-norm``, Gaussian noise calibrated by the RDP
accountant so that the planned number of steps spends exactly ε at ``--dp-delta``);
``after_epoch`` stores the ε actually spent so far in the checkpoint's provenance (``dp``),
with the accountant's history. The UMN uses GroupNorm, Conv2d, SiLU, adaptive pooling and
interpolation: opacus' validator finds nothing to replace (in-place activations are switched to
out-of-place for training: the same function); a model it rejects is refused,
never silently changed (a checkpoint must rebuild from its config). Per-sample gradients
use opacus' hook mode: on the UMN it matches per-example autograd (tests/test_collab.py) and,
unlike functorch mode, it takes the empty batches Poisson sampling draws.

The unit of privacy is one (image latent, mask latent) pair, i.e. one image; a patient
with several images spends ε once per image.
"""

from __future__ import annotations

from medtools.core.dp import DPSGD

GRAD_SAMPLE_MODE = "hooks"


def umn_dp(*, epsilon: float, delta: float, max_grad_norm: float, planned_steps: int) -> DPSGD:
    """fit()'s DP-SGD hooks for the UMN (the ``dp`` record names the unit of privacy)."""
    return DPSGD(
        epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, planned_steps=planned_steps,
        grad_sample_mode=GRAD_SAMPLE_MODE, what="UMN", extra={"unit": "one (image, mask) latent pair"},
    )
