"""Small parameter-free layers the network builders insert (imported only when a model is built)."""

from __future__ import annotations

import torch


class Copy(torch.nn.Module):
    """Returns a copy of its input: after a layer Opacus hooks, so that a residual block's
    in-place ``out += identity`` modifies the copy, not the tensor the backward hook returned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()
