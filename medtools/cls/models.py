"""The cls family's model kind: ``cls`` (timm classifier, random init, plain or encrypted input).

Registration is plain data (torch-free); the network is ``medtools.nets.classifier``.
``arch`` is the timm model name (``densenet121``, ``legacy_xception`` for the CLI's
``xception``: Chollet's 2017 Xception as ported to timm). The info keys say which cipher
the model was trained behind: ``encryption`` (none | block | logistic-sine), ``block_size``
and ``key_id`` (the key's public fingerprint; never the key or its path).
"""

from __future__ import annotations

from medtools.core.registry import register_kind
from medtools.nets.classifier import CLASSIFIER_KEYS

register_kind(
    "cls",
    family="cls",
    builder="medtools.nets.classifier:build_classifier",
    trainer="medtools.cls.train:train_classifier",
    description="image classifier (timm) on plain or encrypted images",
    builder_keys=CLASSIFIER_KEYS,
    info_keys=("image_size", "class_names", "positive", "encryption", "block_size", "key_id"),
    archs=("densenet121", "legacy_xception"),
    open_archs=True,
    features="medtools.nets.classifier:classifier_features",
    task="classify",
    tiny=(
        {"arch": "resnet10t", "in_channels": 1, "num_classes": 2, "image_size": 32, "class_names": ["NoTumor", "Tumor"], "encryption": "none"},
        {"arch": "resnet10t", "in_channels": 1, "num_classes": 2, "image_size": 32, "class_names": ["NoTumor", "Tumor"], "encryption": "block", "block_size": 8, "key_id": "0123456789abcdef"},
    ),
)
