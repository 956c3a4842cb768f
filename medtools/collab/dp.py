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

from typing import Any

from medtools.core import report
from medtools.core.errors import UsageError

GRAD_SAMPLE_MODE = "hooks"


class DPTraining:
    """The prepare/after_epoch pair that makes fit() train with DP-SGD and account ε."""

    def __init__(self, *, epsilon: float, delta: float, max_grad_norm: float, planned_steps: int) -> None:
        self.epsilon, self.delta, self.max_grad_norm, self.planned_steps = epsilon, delta, max_grad_norm, planned_steps
        self.engine: Any = None
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None

    def prepare(self, model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        import warnings

        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator

        for module in model.modules():  # in-place activations break opacus' backward hooks; same function, same weights
            if getattr(module, "inplace", False):
                module.inplace = False
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise UsageError(f"this UMN has layers opacus cannot train privately: {'; '.join(map(str, problems))}")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        self.sample_rate = 1.0 / len(loader)
        self.noise_multiplier = float(get_noise_multiplier(target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=self.sample_rate, steps=self.planned_steps, accountant="rdp"))
        self.engine = PrivacyEngine(accountant="rdp")
        report.log(f"DP-SGD: target ε={self.epsilon} δ={self.delta}, noise multiplier {self.noise_multiplier:.3f}, clip {self.max_grad_norm}, sample rate {self.sample_rate:.4f}, {self.planned_steps} steps")
        return self.engine.make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, poisson_sampling=True, grad_sample_mode=GRAD_SAMPLE_MODE)

    def after_epoch(self, epoch: int, model: Any) -> dict[str, Any]:
        spent = float(self.engine.get_epsilon(self.delta))
        return {
            "dp_epsilon": spent,
            "dp": {
                "epsilon": spent,
                "delta": self.delta,
                "target_epsilon": self.epsilon,
                "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm,
                "sample_rate": self.sample_rate,
                "steps": sum(int(h[2]) for h in self.engine.accountant.history),
                "accountant": "rdp",
                "accountant_history": [list(h) for h in self.engine.accountant.history],
                "library": "opacus",
                "grad_sample_mode": GRAD_SAMPLE_MODE,
                "unit": "one (image, mask) latent pair",
            },
        }
