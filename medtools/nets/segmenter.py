"""smp segmentation networks (random init) and their pooled bottleneck features.

Architecture names are plain data (``SEG_ARCHS``) so CLI choices and ``info`` need no torch.
"""

from __future__ import annotations

from typing import Any

from medtools.core.errors import UsageError

# name → (smp class, extra kwargs)
SEG_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet": ("Unet", {}),
    "unet-scse": ("Unet", {"decoder_attention_type": "scse"}),
    "unetplusplus": ("UnetPlusPlus", {}),
    "fpn": ("FPN", {}),
    "deeplabv3plus": ("DeepLabV3Plus", {}),
}
SEGMENTER_KEYS = ("arch", "encoder", "in_channels", "classes", "encoder_depth", "normalization")
NORMALIZATIONS = ("batch", "group")


def group_norm(model: Any) -> Any:
    """Every BatchNorm2d of ``model`` replaced in place by GroupNorm (32 groups, or the largest
    divisor of the channels below that), as Opacus' ``ModuleValidator.fix`` does: DP-SGD needs
    per-sample gradients, which BatchNorm mixes across the batch. No random draw."""
    import math

    import torch

    from medtools.nets.layers import Copy

    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            channels = child.num_features
            # the norm's output copied: under Opacus it is the tensor the backward hook returned, which a
            # residual block's in-place `out += identity` may not modify
            norm = torch.nn.Sequential(torch.nn.GroupNorm(math.gcd(32, channels), channels, affine=child.affine), Copy())
            if isinstance(getattr(child, "act", None), torch.nn.Module):  # timm's BatchNormAct2d: norm, dropout, activation
                norm = torch.nn.Sequential(*norm, child.drop, child.act)
            setattr(model, name, norm)
        else:
            group_norm(child)
    return model


def build_segmenter(*, arch: str = "unet", encoder: str = "resnet34", in_channels: int = 1, classes: int = 2, encoder_depth: int = 5, normalization: str = "batch"):
    """An smp model, random init (no download); ``normalization`` "group" swaps BatchNorm for
    GroupNorm and turns in-place activations off (the same function, for Opacus' DP-SGD)."""
    import segmentation_models_pytorch as smp

    if arch not in SEG_ARCHS:
        raise UsageError(f"unknown --arch {arch!r}; choose from {', '.join(SEG_ARCHS)}")
    class_name, extra = SEG_ARCHS[arch]
    kwargs: dict[str, Any] = dict(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes, **extra)
    if class_name in ("Unet", "UnetPlusPlus"):
        kwargs["encoder_depth"] = encoder_depth
        kwargs["decoder_channels"] = [256, 128, 64, 32, 16][:encoder_depth]
    if normalization not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
    try:
        model = getattr(smp, class_name)(**kwargs)
    except KeyError as exc:
        raise UsageError(f"unknown encoder {encoder!r} ({exc})") from None
    if normalization == "group":
        group_norm(model)
        for module in model.modules():  # Opacus' backward hooks refuse in-place activations
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False
    return model


def segmenter_features(model: Any, images: Any) -> Any:
    """Global-average-pooled deepest encoder feature map: (N, D)."""
    return model.encoder(images)[-1].mean(dim=(-2, -1))
