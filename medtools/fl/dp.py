"""Differential privacy at one site: Opacus DP-SGD in every local epoch, one RDP account over all rounds.

Each site protects its own patients (record-level DP of the site's data set towards everyone
who sees its updates: the server, the other sites, an eavesdropper). Every round's local
training is ``PrivacyEngine.make_private`` (Poisson sampling at rate q = 1/steps per epoch,
per-sample gradients clipped to ``max_grad_norm``, Gaussian noise σ·``max_grad_norm``). σ is
calibrated once, with Opacus' ``get_noise_multiplier``, so that all planned steps (rounds ×
local epochs × steps per epoch) together spend exactly the target ε at δ; the accountant's
history is carried from round to round, so the ε recorded after round r is what the site has
spent up to r (it grows with the rounds and ends at the target). The global model is a
post-processing of the sites' updates: it is (ε, δ)-DP towards each site's data with that
site's ε (sites hold disjoint patients, parallel composition).
"""

from __future__ import annotations

from typing import Any

from medtools.core import report
from medtools.core.errors import UsageError

GRAD_SAMPLE_MODE = "hooks"
MAX_GRAD_NORM = 1.0


class SiteDP:
    """fit()'s prepare/after_epoch for DP-SGD, with one accountant for all of a site's rounds."""

    def __init__(self, *, epsilon: float, delta: float, rounds: int, local_epochs: int, max_grad_norm: float = MAX_GRAD_NORM):
        if epsilon <= 0:
            raise UsageError("--dp-epsilon must be positive")
        self.epsilon, self.delta, self.rounds, self.local_epochs, self.max_grad_norm = float(epsilon), float(delta), int(rounds), int(local_epochs), float(max_grad_norm)
        self.history: list[tuple[float, float, int]] = []
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.per_round: list[float] = []
        self.engine: Any = None

    def prepare(self, model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        import warnings

        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise UsageError(f"this model has layers Opacus cannot train privately: {'; '.join(map(str, problems))[:300]}")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        if self.noise_multiplier is None:
            self.sample_rate = 1.0 / len(loader)
            planned = self.rounds * self.local_epochs * len(loader)
            self.noise_multiplier = float(get_noise_multiplier(target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=self.sample_rate, steps=planned, accountant="rdp"))
            report.log(f"DP-SGD: target ε={self.epsilon} δ={self.delta} over {self.rounds} rounds, noise multiplier {self.noise_multiplier:.3f}, clip {self.max_grad_norm}, sample rate {self.sample_rate:.4f}, {planned} steps")
        self.engine = PrivacyEngine(accountant="rdp")
        self.engine.accountant.history = list(self.history)
        return self.engine.make_private(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, poisson_sampling=True, grad_sample_mode=GRAD_SAMPLE_MODE)

    def after_epoch(self, epoch: int, model: Any) -> dict[str, Any]:
        self.history = [tuple(h) for h in self.engine.accountant.history]
        spent = float(self.engine.get_epsilon(self.delta))
        if epoch == self.local_epochs:
            self.per_round.append(spent)
        return {"dp_epsilon": spent}

    def spent(self) -> dict[str, Any]:
        """What the site has spent so far (sent to the server with each update)."""
        return {
            "epsilon": self.per_round[-1] if self.per_round else 0.0,
            "epsilon_per_round": self.per_round,
            "delta": self.delta,
            "target_epsilon": self.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": sum(int(h[2]) for h in self.history),
            "accountant": "rdp",
            "library": "opacus",
        }
