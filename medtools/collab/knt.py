"""Keyed nonlinear latent transform (KNT-style) and keyed block permutation of the latent grid.

Both act on one scale's latents (N, C, H, W) in float64 torch tensors, after the linear
KLT (z ↦ Qᵀz + b, ``klt.py``) and with parameters that are key material:

* **Keyed coupling layers** (RealNVP affine coupling, Dinh et al. 2017, with the key as the
  conditioner's weights instead of learned ones; KNT, arXiv 2605.14123, keys a nonlinear
  transform the same way). Layer l splits the channels by a mask m (the first ⌈C/2⌉ channels
  for even l, the rest for odd l; a checkerboard over the grid when C = 1), computes
  h = tanh(conv_k(m⊙z; W1, c1)), [s, t] = conv_k(h; W2, c2), s ← s_max·tanh(s), and sets
  y = m⊙z + (1−m)⊙(z·exp(s) + t), followed by a keyed orthogonal channel mix Q_lᵀ y.
  The kept half passes unchanged, so the key holder recomputes s and t from it and inverts
  exactly: z = m⊙y + (1−m)⊙((y − t)·exp(−s)). The k×k convolutions make every output
  pixel depend on its neighbours (no per-pixel closed form); ``gain`` scales W2 and c2
  (gain 0 is the linear KLT again), so it is the transform's strength.
* **Block permutation** (``blocks`` = G): every scale's grid is cut into G×G blocks and the
  blocks are moved by one keyed permutation of G² (the same for every scale, so the scales
  stay aligned for the decoder and the UMN). A decoder or inverse that reads the spatial
  layout sees the blocks in the wrong places; each block's content is kept.

The conditioner weights are drawn at key generation (from the OS CSPRNG unless seeded) and
stored in the key file: nothing is derived from a password or a hash here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

S_MAX = 0.5  # bound on the log-scale of a coupling layer: |s| ≤ 0.5·gain per layer


def channel_mask(c: int, layer: int, h: int, w: int) -> np.ndarray:
    """(1, C, H, W) 0/1 mask of the channels (or pixels, for C = 1) that layer ``layer`` keeps."""
    m = np.zeros((1, c, h, w))
    if c == 1:
        yy, xx = np.mgrid[:h, :w]
        m[0, 0] = ((yy + xx + layer) % 2) == 0
    else:
        half = (c + 1) // 2
        if layer % 2 == 0:
            m[0, :half] = 1
        else:
            m[0, half:] = 1
    return m


def generate_layers(c: int, *, layers: int, hidden: int, kernel: int, gain: float, normal: Callable[[tuple[int, ...]], np.ndarray], orthogonal: Callable[[int], np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One scale's coupling parameters (float64): W1 (hidden, C, k, k), c1, W2 (2C, hidden, k, k), c2, Q (C, C)."""
    out = []
    for _ in range(int(layers)):
        w1 = normal((hidden, c, kernel, kernel)) / np.sqrt(c * kernel * kernel)
        c1 = 0.1 * normal((hidden,))
        w2 = gain * normal((2 * c, hidden, kernel, kernel)) / np.sqrt(hidden * kernel * kernel)
        c2 = gain * 0.1 * normal((2 * c,))
        out.append({"w1": w1, "c1": c1, "w2": w2, "c2": c2, "q": orthogonal(c)})
    return out


def _st(layer: dict[str, Any], kept: Any, gain_bound: float) -> tuple[Any, Any]:
    """The conditioner, in float32 (CPU convolutions in float64 are two orders of magnitude
    slower); forward and inverse compute it from the same kept half, so the coupling stays
    invertible to the float32 rounding of the conditioner's input (~1e-7 relative)."""
    import torch
    import torch.nn.functional as F

    pad = int(layer["w1"].shape[-1]) // 2
    x = kept.float()
    h = torch.tanh(F.conv2d(x, layer["w1"].float(), layer["c1"].float(), padding=pad))
    st = F.conv2d(h, layer["w2"].float(), layer["c2"].float(), padding=pad).to(kept.dtype)
    c = kept.shape[1]
    return gain_bound * torch.tanh(st[:, :c]), st[:, c:]


def couple(z: Any, layers: Sequence[dict[str, Any]], *, inverse: bool = False) -> Any:
    """Apply (or invert) one scale's coupling stack to (N, C, H, W) float64 torch latents."""
    import torch

    c, h, w = z.shape[1:]
    order = range(len(layers) - 1, -1, -1) if inverse else range(len(layers))
    for index in order:
        layer = layers[index]
        m = torch.as_tensor(channel_mask(c, index, h, w), dtype=z.dtype, device=z.device)
        if inverse:
            y = torch.einsum("cd,ndhw->nchw", layer["q"], z)
            kept = m * y
            s, t = _st(layer, kept, S_MAX)
            z = kept + (1 - m) * ((y - t) * torch.exp(-s))
        else:
            kept = m * z
            s, t = _st(layer, kept, S_MAX)
            y = kept + (1 - m) * (z * torch.exp(s) + t)
            z = torch.einsum("dc,nchw->ndhw", layer["q"].T, y)
    return z


def permute_blocks(z: Any, perm: Any, *, inverse: bool = False) -> Any:
    """Move the G×G blocks of (N, C, H, W) latents: block j of the output is block perm[j] of the input."""
    import torch

    g = int(round(len(perm) ** 0.5))
    n, c, h, w = z.shape
    if h % g or w % g:
        from medtools.core.errors import CheckpointError

        raise CheckpointError(f"a {h}×{w} latent grid cannot be cut into {g}×{g} blocks: the key's --block-permute {g} must divide every scale's size")
    bh, bw = h // g, w // g
    blocks = z.reshape(n, c, g, bh, g, bw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, g * g, bh, bw)
    index = torch.as_tensor(np.argsort(perm) if inverse else np.asarray(perm), dtype=torch.long, device=z.device)
    blocks = blocks[:, :, index]
    return blocks.reshape(n, c, g, g, bh, bw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
