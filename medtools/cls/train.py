"""``cls-train``: a timm classifier (random init) on plain or encrypted 2-D images.

Data: class folders (``ROOT/<CLASS>/*.png``, patients from ``ROOT/manifest.csv`` or the
file names, see ``core.manifest``) or a manifest CSV. Validation holds out whole patients
(``core.data.split_by_patient``). The classes are balanced by weighting the cross-entropy
with n / (K · n_k). Images are loaded once through ``core.preprocess.load_image`` at the
training size and kept as 8-bit levels; each training item is augmented with block-aligned
moves (``cls.cipher.augment``) and then encrypted with the user's key when ``--encryption``
is set, so the model only ever sees cipher images. The validation images are encrypted once.
The loop is ``core.train.fit``; validation runs through ``Predictor.from_model``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.cls.cipher import Encryption, augment, quantise
from medtools.core.errors import InputError, UsageError
from medtools.core.train import TrainOptions

NORM = {"method": "unit", "mean": 0.5, "std": 0.25}
TRAIN_DEFAULTS = TrainOptions(epochs=10, batch_size=16, lr=1e-3)  # cls-train's


def resolve_arch(arch: str) -> str:
    """CLI name (densenet121, xception) or any timm model name → timm name."""
    from medtools.cls import ARCHS

    return ARCHS.get(arch, arch)


def image_rows(data: Path | str | Sequence[Path | str]) -> list[dict[str, str]]:
    """Rows with an image, a class and a patient (class folders or a manifest CSV)."""
    from medtools.core.manifest import load_rows

    rows = [r for r in load_rows(data) if r.get("image") and r.get("class")]
    if not rows:
        raise InputError("no labelled 2-D images: give class folders (ROOT/<CLASS>/*.png) or a manifest with image and class columns")
    return rows


def load_levels(rows: Sequence[dict[str, str]], size: int) -> np.ndarray:
    """(N, H, W) uint8 levels of the images at size×size (the one preprocessing path)."""
    from medtools.core.preprocess import UNIT_NORM, load_image

    return np.stack([quantise(load_image(r["image"], size, 1, UNIT_NORM))[0] for r in rows])


class EncryptedImages:
    """Map-style dataset: plain levels → augment → encrypt → ([0, 1] tensor (1, H, W), class).

    ``item_seeds``: the training loop hands each draw ``(index, seed)``, the seed a function
    of (run seed, epoch, position), so the augmentation is the same whichever loader worker
    draws the item, and a resumed run draws the same."""

    item_seeds = True

    def __init__(self, levels: np.ndarray, labels: np.ndarray, encryption: Encryption, *, augment_block: int | None, seed: int):
        self.levels, self.labels, self.encryption = levels, labels, encryption
        self.augment_block, self.seed = augment_block, seed

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, key: int | tuple[int, int]):
        import torch

        index, item_seed = key if isinstance(key, tuple) else (key, None)
        levels = self.levels[index]
        if self.augment_block:
            rng = np.random.default_rng([self.seed, index] if item_seed is None else item_seed)
            levels = augment(levels, rng, self.augment_block)
        cipher = self.encryption.encrypt_levels(levels)
        x = torch.from_numpy(cipher.astype(np.float32) / 255.0)[None]
        return x, int(self.labels[index])


def train_classifier(
    data: Path | str | Sequence[Path | str],
    output: Path,
    *,
    arch: str = "densenet121",
    size: int = 128,
    encryption: str = "none",
    key: bytes | None = None,
    block_size: int = 16,
    augment_images: bool = True,
    val_fraction: float = 0.2,
    drop_rate: float = 0.0,
    options: TrainOptions | None = None,
    loop: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train and write ``output``; returns the training summary (history, validation metrics).
    ``options`` (or single shared settings such as ``epochs=3``): ``core.train.TrainOptions``,
    defaults ``TRAIN_DEFAULTS``. ``loop`` replaces ``core.train.fit`` with a loop of the same
    signature (federated training, ``medtools.fl``)."""
    import torch

    from medtools.core.metrics import evaluate, positive_class
    from medtools.core.data import split_by_patient
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import canonical_norm, to_model_range
    from medtools.core.train import fit, initial_weights, train_options
    from medtools.nets.classifier import build_classifier

    options = train_options(options, TRAIN_DEFAULTS, **settings)
    seed, batch_size = options.seed, options.batch_size

    enc = Encryption(encryption, key, block_size)
    enc.check_size(size)
    block = block_size if size % block_size == 0 else None
    if augment_images and block is None:
        raise UsageError(f"augmentation moves whole {block_size}×{block_size} blocks: pick --size divisible by {block_size} or --no-augment")
    rows = image_rows(data)
    classes = sorted({r["class"] for r in rows})
    if len(classes) < 2:
        raise InputError(f"need at least two classes, found {classes}")
    train_rows, val_rows = split_by_patient(rows, val_fraction, seed)
    overlap = {r["patient"] for r in train_rows} & {r["patient"] for r in val_rows}
    assert not overlap, overlap
    lookup = {c: i for i, c in enumerate(classes)}
    train_y = np.array([lookup[r["class"]] for r in train_rows])
    counts = np.bincount(train_y, minlength=len(classes))
    if (counts == 0).any():
        raise InputError(f"class {classes[int(np.argmin(counts))]!r} has no training image after the patient split")
    weights = torch.tensor(len(train_y) / (len(classes) * counts), dtype=torch.float32)

    timm_name = resolve_arch(arch)
    with initial_weights(seed):
        model = build_classifier(arch=timm_name, in_channels=1, num_classes=len(classes), drop_rate=drop_rate)
    config = {"arch": timm_name, "in_channels": 1, "num_classes": len(classes), "drop_rate": drop_rate, "image_size": size, "class_names": classes, "positive": positive_class(classes), **enc.config()}
    norm = canonical_norm(NORM)
    train_set = EncryptedImages(load_levels(train_rows, size), train_y, enc, augment_block=block if augment_images else None, seed=seed)
    val_x = enc.encrypt_batch(load_levels(val_rows, size)[:, None].astype(np.float32) / 255.0) if val_rows else None

    def step(net, batch):
        x, y = batch
        logits = net(to_model_range(x, norm))
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=weights.to(logits.device))

    def validate(net) -> dict[str, float]:
        probs = Predictor.from_model(net, kind="cls", config=config, norm=norm, batch_size=max(batch_size, 32)).predict(val_x, softmax=True)
        result = evaluate([r["class"] for r in val_rows], probs, classes, bootstrap=0)
        return {"val_accuracy": result["accuracy"], "val_balanced_accuracy": result["balanced_accuracy"] or 0.0, **({"val_auc": result["auc"]} if result["auc"] is not None else {})}

    manifest_hash = hashlib.sha256("\n".join(f"{r['patient']},{r['class']},{Path(r['image']).name}" for r in rows).encode()).hexdigest()
    provenance = {
        "data_sha256": manifest_hash,  # never a key or its path
        "train_patients": len({r["patient"] for r in train_rows}),
        "val_patients": len({r["patient"] for r in val_rows}),
        "train_images": len(train_rows),
        "val_images": len(val_rows),
        "class_counts": {c: int(n) for c, n in zip(classes, counts)},
        "augment": "block-aligned shift ±1 block + block-grid mirror" if augment_images else "none",
        **options.id_provenance(
            train_patients=[r["patient"] for r in train_rows], val_patients=[r["patient"] for r in val_rows],
            train_images=[Path(r["image"]).name for r in train_rows], val_images=[Path(r["image"]).name for r in val_rows],
        ),
    }
    spec = options.spec(
        output=Path(output), kind="cls", config=config, norm=norm, provenance=provenance, monitor="val_balanced_accuracy" if val_rows else None,
        drop_last=len(train_rows) > batch_size,
    )
    # BatchNorm recalibration must see what step() feeds the network (model range, not [0, 1])
    result = (loop or fit)(model, train_set, step, spec, validate=validate if val_rows else None, model_inputs=lambda b: to_model_range(b[0], norm))
    result.update({k: provenance[k] for k in ("train_patients", "val_patients", "train_images", "val_images")})
    result["encryption"] = enc.config()
    return result
