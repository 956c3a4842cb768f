"""timm image classifiers (random init), and their penultimate features.

Used by re-identification attackers (``reid``), tumour classifiers (``cls``), FID-style
feature extractors and the encrypted index. ``in_channels`` is adapted by timm itself
(1-channel MRI goes in as one channel, not gray copied to RGB).
"""

from __future__ import annotations

from typing import Any

from medtools.core.errors import UsageError

CLASSIFIER_KEYS = ("arch", "in_channels", "num_classes", "drop_rate")


def build_classifier(*, arch: str = "resnet18", in_channels: int = 1, num_classes: int = 2, drop_rate: float = 0.0):
    """``timm.create_model(arch)``, random init, no download."""
    import timm

    if not timm.is_model(arch):
        raise UsageError(f"unknown classifier arch {arch!r} (any timm model name, e.g. resnet18, densenet121, xception41)")
    return timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=num_classes, drop_rate=drop_rate)


def classifier_features(model: Any, images: Any) -> Any:
    """Penultimate (pre-logits) features of a timm classifier: (N, D)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
