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
DEFAULT_ATTENTION = None  # self-attention at the lowest resolution that exists (level len(widths) - 1)


def default_attention(widths: Sequence[int]) -> list[int]:
    """Attention at the lowest resolution level: fits every width list (32,64,128 → [2]; 16,32 → [1])."""
    return [max(len(list(widths)) - 1, 0)]


def unet_config(
    *,
    size: int = 64,
    channels: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    attention: Sequence[int] | None = DEFAULT_ATTENTION,
    layers_per_block: int = 2,
    norm_groups: int = 8,
    mid_attention: bool = True,
    attention_head_dim: int = 8,
    dropout: float = 0.0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """UNet2DModel keywords; ``attention`` lists the resolution levels (0 = full size) with
    self-attention (None: the lowest resolution). ``class_names`` makes the model
    class-conditional: diffusers' class embedding (``num_class_embeds`` = classes + 1, the last
    one the null class of classifier-free guidance), plus the info keys ``class_names`` and
    ``null_class``."""
    widths = [int(w) for w in widths]
    levels = len(widths)
    if levels < 1:
        raise UsageError("--widths needs at least one block width, e.g. 32,64,128")
    if attention is None:
        attention = default_attention(widths)
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
    conditional: dict[str, Any] = {}
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) < 2 or len(set(names)) != len(names):
            raise UsageError(f"a class-conditional model needs at least two distinct classes, got {names}")
        conditional = {"num_class_embeds": len(names) + 1, "class_names": names, "null_class": len(names)}
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
        **conditional,
    }


def build_unet(**config: Any):
    """``UNet2DModel(**config)``, random init (the registry passes only UNET_KEYS)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def null_labels(model: Any, n: int, device: Any) -> Any:
    """The null class for ``n`` images of a class-conditional UNet (None for an unconditional one)."""
    import torch

    classes = getattr(model.config, "num_class_embeds", None)
    return None if not classes else torch.full((n,), int(classes) - 1, dtype=torch.long, device=device)


def denoise(model: Any, x: Any, *, timesteps: Any, class_labels: Any = None) -> Any:
    """ε_θ(x, t[, y]): the registered forward of a ``ddpm`` model (diffusers returns an output
    object). A class-conditional model without ``class_labels`` is run on its null class
    (the unconditional branch of classifier-free guidance), so every caller that knows no
    classes (mia, the contract tests) still works."""
    if class_labels is None:
        class_labels = null_labels(model, x.shape[0], x.device)
    return model(x, timesteps, class_labels=class_labels).sample


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
    info_keys=("class_names", "null_class"),
    forward="medtools.synth.models:denoise",
    default_norm={"method": "unit", "model_range": [-1.0, 1.0]},
    task="denoise",
    tiny=(
        {**unet_config(size=16, channels=1, widths=(8, 16), attention=(1,), layers_per_block=1, norm_groups=4)},
        {**unet_config(size=16, channels=3, widths=(8, 16), attention=(), layers_per_block=1, norm_groups=4)},
        {**unet_config(size=16, channels=1, widths=(8, 16), layers_per_block=1, norm_groups=4, class_names=("A", "B"))},
    ),
)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
