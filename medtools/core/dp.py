"""DP-SGD for ``core.train.fit``: Opacus' ``PrivacyEngine`` in the ``prepare`` hook, ε in ``after_epoch``.

One implementation for every trainer that offers ``--dp-epsilon`` (the diffusion model, the
server's mapping network, a federated site). ``prepare`` validates the model (a layer Opacus
cannot train privately is refused, never silently replaced: a checkpoint must rebuild from its
config), calibrates the noise multiplier once with Opacus' ``get_noise_multiplier`` so that
the planned number of steps spends exactly the target ε at δ (RDP accountant, Poisson sampling
at rate 1/steps per epoch, per-sample gradients clipped to ``max_grad_norm``), and wraps model,
optimizer and loader with ``make_private``. The accountant's history is kept on the object and
can be handed in (a resumed run, a site's next round), so ε is always what has been spent in all.
"""

from __future__ import annotations

from typing import Any, Callable

from medtools.core import report
from medtools.core.errors import UsageError


class DPSGD:
    """fit()'s prepare/after_epoch pair for DP-SGD with an RDP account of ε spent so far.

    ``planned_steps`` is a number or a function of the steps per epoch (known only once the
    loader exists); ``extra`` is added to the ``dp`` record (e.g. the unit of privacy)."""

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        max_grad_norm: float,
        planned_steps: int | Callable[[int], int],
        grad_sample_mode: str = "hooks",
        what: str = "model",
        history: list | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if epsilon <= 0:
            raise UsageError("--dp-epsilon must be positive")
        self.epsilon, self.delta, self.max_grad_norm = float(epsilon), float(delta), float(max_grad_norm)
        self.planned_steps, self.grad_sample_mode, self.what = planned_steps, grad_sample_mode, what
        self.history: list[tuple] = [tuple(h) for h in (history or [])]
        self.extra = dict(extra or {})
        self.engine: Any = None
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None

    def prepare(self, model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        import warnings

        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator

        for module in model.modules():  # in-place activations break Opacus' backward hooks; the same function
            if getattr(module, "inplace", False):
                module.inplace = False
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise UsageError(f"this {self.what} has layers Opacus cannot train privately: {'; '.join(map(str, problems))[:300]}")
        # Opacus' notices (secure RNG off: fine for research use; RDP order at the range end) are not user errors
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        if self.noise_multiplier is None:  # calibrated once for the whole plan
            self.sample_rate = 1.0 / len(loader)
            steps = self.planned_steps(len(loader)) if callable(self.planned_steps) else int(self.planned_steps)
            self.noise_multiplier = float(get_noise_multiplier(target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=self.sample_rate, steps=steps, accountant="rdp"))
            report.log(f"DP-SGD: target ε={self.epsilon} δ={self.delta}, noise multiplier {self.noise_multiplier:.3f}, clip {self.max_grad_norm}, sample rate {self.sample_rate:.4f}, {steps} steps")
        self.engine = PrivacyEngine(accountant="rdp")
        self.engine.accountant.history = list(self.history)
        return self.engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm, poisson_sampling=True, grad_sample_mode=self.grad_sample_mode,
        )

    def epsilon_spent(self) -> float:
        """ε spent so far (all steps in the history) at δ."""
        self.history = [tuple(h) for h in self.engine.accountant.history]
        return float(self.engine.get_epsilon(self.delta))

    def record(self, spent: float) -> dict[str, Any]:
        """The checkpoint's ``dp`` record."""
        return {
            "epsilon": spent,
            "delta": self.delta,
            "target_epsilon": self.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": sum(int(h[2]) for h in self.history),
            "accountant": "rdp",
            "accountant_history": [list(h) for h in self.history],
            "library": "opacus",
            "grad_sample_mode": self.grad_sample_mode,
            **self.extra,
        }

    def after_epoch(self, epoch: int, model: Any) -> dict[str, Any]:
        spent = self.epsilon_spent()
        return {"dp_epsilon": spent, "dp": self.record(spent)}


def check_options(*, epsilon: float, delta: float, n_items: int, unit: str, compile: bool, precision: str | None) -> None:
    """What DP-SGD training refuses, the same for every trainer (usage errors, before any work)."""
    from medtools.core.train import distributed_context

    if epsilon <= 0:
        raise UsageError("--dp-epsilon must be positive")
    if not 0 < delta < 1.0 / n_items:
        raise UsageError(f"--dp-delta {delta} must be in (0, 1/N) = (0, {1.0 / n_items:.3g}) for N={n_items} {unit}")
    if distributed_context()[2] > 1:
        raise UsageError("DP training under torchrun is not supported (opacus needs DPDDP); run on one process")
    if compile:
        raise UsageError("--compile cannot be combined with DP training (opacus hooks)")
    if precision not in (None, "auto", "fp32"):
        raise UsageError("DP training runs in fp32 (per-sample gradients); drop --precision")
