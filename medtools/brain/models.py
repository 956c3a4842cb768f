"""Model builders for segmentation (smp) and image classification (timm), rebuilt from config.

Architecture names are plain data (``SEG_ARCHS``) so CLI choices and ``info`` need no torch.
Builders take only keyword config and return a ``torch.nn.Module``; a checkpoint's
``medtools.config`` is exactly these keywords.
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

# BraTS labels → class indices. BraTS 2013/2015 label 3 (non-enhancing core) joins the
# necrotic/non-enhancing core class, as BraTS 2017+ merged them.
BRATS_LABEL_MAP = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
BRATS_CLASS_NAMES = ["background", "core", "edema", "enhancing"]
BRATS_CLASS_TO_LABEL = {0: 0, 1: 1, 2: 2, 3: 4}


def build_segmenter(
    *,
    arch: str = "unet",
    encoder: str = "resnet34",
    in_channels: int = 1,
    classes: int = 2,
    encoder_depth: int = 5,
    **_: Any,
):
    """smp model, random init (no download). Extra config keys (class names…) are ignored here."""
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


def build_classifier(*, arch: str = "resnet18", in_channels: int = 1, num_classes: int = 2, drop_rate: float = 0.0, **_: Any):
    """Any timm classifier, random init, ``in_channels`` adapted by timm (no gray→RGB copies)."""
    import timm

    if not timm.is_model(arch):
        raise UsageError(f"unknown classifier arch {arch!r} (any timm model name, e.g. resnet18, densenet121, xception41)")
    return timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=num_classes, drop_rate=drop_rate)


def classifier_features(model, images):
    """Penultimate (pre-logits) features of a timm classifier: (N, D)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
