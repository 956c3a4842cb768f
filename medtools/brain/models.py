"""The brain family's model kinds: ``seg`` (smp segmenter) and ``reid`` (timm attacker).

Registration is plain data (torch-free); the networks live in ``medtools.nets``.
"""

from __future__ import annotations

from medtools.core.registry import register_kind
from medtools.nets.classifier import CLASSIFIER_KEYS
from medtools.nets.segmenter import SEG_ARCHS, SEGMENTER_KEYS

# BraTS labels → class indices. BraTS 2013/2015 label 3 (non-enhancing core) joins the
# necrotic/non-enhancing core class, as BraTS 2017+ merged them.
BRATS_LABEL_MAP = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
BRATS_CLASS_NAMES = ["background", "core", "edema", "enhancing"]
BRATS_CLASS_TO_LABEL = {0: 0, 1: 1, 2: 2, 3: 4}

register_kind(
    "seg",
    family="brain",
    builder="medtools.nets.segmenter:build_segmenter",
    trainer="medtools.brain.segment:train_segmenter",
    description="tumour segmentation (smp encoder-decoder)",
    builder_keys=SEGMENTER_KEYS,
    info_keys=("modalities", "image_size", "label_values", "class_names", "context"),
    archs=tuple(SEG_ARCHS),
    features="medtools.nets.segmenter:segmenter_features",
    task="segment",
    tiny=(
        {"arch": "unet", "encoder": "tu-test_resnet", "in_channels": 1, "classes": 2, "encoder_depth": 3, "image_size": 32, "label_values": [0, 1]},
        {"arch": "unet-scse", "encoder": "tu-test_resnet", "in_channels": 4, "classes": 4, "encoder_depth": 3, "image_size": 32, "label_values": [0, 1, 2, 4]},
        {"arch": "fpn", "encoder": "tu-test_resnet", "in_channels": 4, "classes": 3, "image_size": 32, "label_values": [0, 1, 2]},
    ),
)

register_kind(
    "reid",
    family="brain",
    builder="medtools.nets.classifier:build_classifier",
    description="re-identification attacker (timm classifier over identities)",
    builder_keys=CLASSIFIER_KEYS,
    info_keys=("image_size", "class_names", "label", "modalities", "defence"),
    open_archs=True,
    features="medtools.nets.classifier:classifier_features",
    task="classify",
    tiny=(
        {"arch": "test_resnet", "in_channels": 1, "num_classes": 3, "image_size": 32, "class_names": ["a", "b", "c"]},
        {"arch": "test_resnet", "in_channels": 4, "num_classes": 2, "image_size": 32, "class_names": ["a", "b"]},
    ),
)
