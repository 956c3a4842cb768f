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

from medtools.core.dp import DPSGD

MAX_GRAD_NORM = 1.0


class SiteDP(DPSGD):
    """DP-SGD with one accountant for all of a site's rounds (σ calibrated once for the whole plan)."""

    def __init__(self, *, epsilon: float, delta: float, rounds: int, local_epochs: int, max_grad_norm: float = MAX_GRAD_NORM):
        self.rounds, self.local_epochs = int(rounds), int(local_epochs)
        super().__init__(
            epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
            planned_steps=lambda per_epoch: self.rounds * self.local_epochs * per_epoch,
        )
        self.per_round: list[float] = []

    def after_epoch(self, epoch: int, model: Any) -> dict[str, Any]:
        spent = self.epsilon_spent()
        if epoch == self.local_epochs:
            self.per_round.append(spent)
        return {"dp_epsilon": spent}

    def spent(self) -> dict[str, Any]:
        """What the site has spent so far (sent to the server with each update)."""
        record = self.record(self.per_round[-1] if self.per_round else 0.0)
        record.pop("accountant_history")
        return {**record, "epsilon_per_round": self.per_round}
