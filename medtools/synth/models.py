"""The DDPM denoiser: a diffusers ``UNet2DModel`` configured from plain keywords.

``unet_config`` turns CLI-sized knobs (image size, channels, block widths, which levels
get self-attention) into the exact ``UNet2DModel`` keyword dict that is stored as the
checkpoint's ``medtools.config``; ``build_unet(**config)`` rebuilds it (the ``ddpm`` kind
registered below). Nothing here is re-implemented: diffusers owns the net.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtools.core.errors import UsageError
from medtools.core.registry import register_kind

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
    """``UNet2DModel(**config)``, random init (the registry passes only UNET_KEYS)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def denoise(model: Any, x: Any, *, timesteps: Any) -> Any:
    """ε_θ(x, t): the registered forward of a ``ddpm`` model (diffusers returns an output object)."""
    return model(x, timesteps).sample


# UNet2DModel's init keywords (diffusers 0.27+): a checkpoint config may hold only these
UNET_KEYS = (
    "sample_size", "in_channels", "out_channels", "center_input_sample", "time_embedding_type", "time_embedding_dim",
    "freq_shift", "flip_sin_to_cos", "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
    "layers_per_block", "mid_block_scale_factor", "downsample_padding", "downsample_type", "upsample_type", "dropout",
    "act_fn", "attention_head_dim", "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift",
    "add_attention", "class_embed_type", "num_class_embeds", "num_train_timesteps",
)

register_kind(
    "ddpm",
    family="synth",
    builder="medtools.synth.models:build_unet",
    description="DDPM denoiser (diffusers UNet2DModel, epsilon prediction)",
    builder_keys=UNET_KEYS,
    forward="medtools.synth.models:denoise",
    default_norm={"method": "unit", "model_range": [-1.0, 1.0]},
    task="denoise",
    tiny=(
        {**unet_config(size=16, channels=1, widths=(8, 16), attention=(1,), layers_per_block=1, norm_groups=4)},
        {**unet_config(size=16, channels=3, widths=(8, 16), attention=(), layers_per_block=1, norm_groups=4)},
    ),
)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
