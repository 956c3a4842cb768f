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
SEGMENTER_KEYS = ("arch", "encoder", "in_channels", "classes", "encoder_depth")


def build_segmenter(*, arch: str = "unet", encoder: str = "resnet34", in_channels: int = 1, classes: int = 2, encoder_depth: int = 5):
    """An smp model, random init (no download)."""
    import segmentation_models_pytorch as smp

    if arch not in SEG_ARCHS:
        raise UsageError(f"unknown --arch {arch!r}; choose from {', '.join(SEG_ARCHS)}")
    class_name, extra = SEG_ARCHS[arch]
    kwargs: dict[str, Any] = dict(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes, **extra)
    if class_name in ("Unet", "UnetPlusPlus"):
        kwargs["encoder_depth"] = encoder_depth
        kwargs["decoder_channels"] = [256, 128, 64, 32, 16][:encoder_depth]
    try:
        return getattr(smp, class_name)(**kwargs)
    except KeyError as exc:
        raise UsageError(f"unknown encoder {encoder!r} ({exc})") from None


def segmenter_features(model: Any, images: Any) -> Any:
    """Global-average-pooled deepest encoder feature map: (N, D)."""
    return model.encoder(images)[-1].mean(dim=(-2, -1))
