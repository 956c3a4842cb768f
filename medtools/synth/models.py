"""The DDPM denoiser: a diffusers ``UNet2DModel`` configured from plain keywords.

``unet_config`` turns CLI-sized knobs (image size, channels, block widths, which levels
get self-attention) into the exact ``UNet2DModel`` keyword dict that is stored as the
checkpoint's ``medtools.config``; ``build_unet(**config)`` rebuilds it (the ``ddpm``
entry of ``core.ckpt.BUILDERS``). Nothing here is re-implemented: diffusers owns the net.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtools.core.errors import UsageError

DEFAULT_WIDTHS = (32, 64, 128)
DEFAULT_ATTENTION = (2,)


def unet_config(
    *,
    size: int = 64,
    channels: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    attention: Sequence[int] = DEFAULT_ATTENTION,
    layers_per_block: int = 2,
    norm_groups: int = 8,
    mid_attention: bool = True,
    attention_head_dim: int = 8,
    dropout: float = 0.0,
) -> dict[str, Any]:
    """UNet2DModel keywords; ``attention`` lists the resolution levels (0 = full size) with self-attention."""
    widths = [int(w) for w in widths]
    levels = len(widths)
    if levels < 1:
        raise UsageError("--widths needs at least one block width, e.g. 32,64,128")
    bad_levels = [a for a in attention if not 0 <= a < levels]
    if bad_levels:
        raise UsageError(f"--attention levels {bad_levels} out of range: there are {levels} levels (0..{levels - 1})")
    if any(w % norm_groups for w in widths):
        raise UsageError(f"--norm-groups {norm_groups} must divide every block width {widths}")
    if size % (2 ** (levels - 1)):
        raise UsageError(f"--size {size} must be divisible by {2 ** (levels - 1)} for {levels} levels (try {size - size % 2 ** (levels - 1) or 2 ** (levels - 1)})")
    if channels not in (1, 3):
        raise UsageError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    down = ["AttnDownBlock2D" if level in attention else "DownBlock2D" for level in range(levels)]
    up = ["AttnUpBlock2D" if level in attention else "UpBlock2D" for level in reversed(range(levels))]
    return {
        "sample_size": int(size),
        "in_channels": int(channels),
        "out_channels": int(channels),
        "block_out_channels": widths,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": int(layers_per_block),
        "norm_num_groups": int(norm_groups),
        "add_attention": bool(mid_attention),
        "attention_head_dim": int(attention_head_dim),
        "dropout": float(dropout),
    }


def build_unet(**config: Any):
    """``UNet2DModel(**config)``, random init; diffusers' private config keys are dropped."""
    from diffusers import UNet2DModel

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return UNet2DModel(**clean)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
