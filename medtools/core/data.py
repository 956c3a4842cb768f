"""Datasets built from manifests: 2-D slices of (multi-modal) volumes, 2-D images, patient splits.

Volumes are normalised per volume and modality by ``core.preprocess`` (the one path that
inference uses too); the method is recorded in the checkpoint's ``medtools.norm``.
The slice cache is built once per dataset (arrays in memory, float16 for images); data
sets larger than memory should be sharded by patient.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.io import as_volume, read_image
from medtools.core.preprocess import DEFAULT_NORM, UNIT_NORM, load_image, resize, stack_context, volume_to_slices, volumes_to_slices


def read_volume(path: Path | str, *, volume: int | None = None) -> np.ndarray:
    """A volume (x, y, z) from any image file; an RGB(A) 2-D picture becomes one gray slice
    (mean of the colour channels), not three slices."""
    return image_volume(read_image(path), volume=volume)


def image_volume(image: Any, *, volume: int | None = None) -> np.ndarray:
    """A read image (core.io.Image) as a volume (x, y, z); a colour picture is averaged to gray.

    A 4-D series (x, y, z, t: DWI, perfusion, fMRI, multi-echo) gives its ``volume``-th 3-D
    volume; without ``volume`` (or out of range) it is an InputError naming the shape and the
    fix (``--volume N``), as is any array that is not 2-D, 3-D or 4-D. A single-volume 4-D file
    (t = 1) is a volume.
    """
    from medtools.core.io import RASTER_FORMATS

    array = image.array
    if image.format in RASTER_FORMATS and array.ndim == 3 and array.shape[-1] in (3, 4):
        return array[..., :3].astype(np.float32).mean(axis=-1)[:, :, None]
    shape = "×".join(str(n) for n in array.shape)
    if array.ndim == 4 and array.shape[-1] > 1:
        count = array.shape[-1]
        if volume is None:
            raise InputError(f"a 4-D series ({shape}: {count} volumes of {'×'.join(str(n) for n in array.shape[:3])}); this needs one 3-D volume: segment and explain take --volume N (0 to {count - 1}); for the other commands save one volume of the series first")
        if not -count <= volume < count:
            raise InputError(f"--volume {volume} is out of range for a 4-D series of {count} volumes ({shape}); use 0 to {count - 1}")
        return array[..., volume]
    if array.ndim > 4 or array.ndim < 2 or (array.ndim == 4 and array.shape[-1] < 1):
        raise InputError(f"an array of shape {shape or '()'} is not an image or volume (expected 2-D, 3-D, or 4-D with --volume N)")
    return as_volume(image)


def dataset_geometry(rows: Sequence[dict[str, str]], modality: str) -> dict[str, Any] | None:
    """The training geometry of manifest rows (``core.io.geometry.training_geometry`` over the
    ``modality`` files' headers): most common orientation, median spacing in it, slicing axis.
    None when the files have no affine (pictures)."""
    from medtools.core.io.geometry import file_geometry, training_geometry

    records = []
    for row in rows:
        path = row.get(modality)
        if not path:
            continue
        try:
            found = file_geometry(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"case {row.get('case')}: cannot read {modality} ({exc})") from None
        if found is not None:
            records.append(found)
    return training_geometry(records) if len(records) == len([r for r in rows if r.get(modality)]) else None


def data_provenance(rows: Sequence[dict[str, str]], train_rows: Sequence[dict[str, str]], val_rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """What a checkpoint records of its training data without naming anyone: the SHA-256 of
    the manifest's content (patient, case, visit and file names, sorted; no folders, so the
    same data elsewhere gives the same hash) and counts of cases and patients per part. Never a
    path, a case id or a patient id: ids are often hospital identifiers, and a shared model would
    tell who it was trained on."""
    import hashlib
    import json

    def entry(row: dict[str, str]) -> list[str]:
        return [f"{key}={Path(value).name if key not in ('patient', 'case', 'visit', 'class') else value}" for key, value in sorted(row.items()) if value]

    digest = hashlib.sha256(json.dumps(sorted(entry(r) for r in rows)).encode()).hexdigest()
    return {
        "data_sha256": digest,
        "train_cases": len(train_rows),
        "val_cases": len(val_rows),
        "train_patients": len({r.get("patient", "") for r in train_rows}),
        "val_patients": len({r.get("patient", "") for r in val_rows}),
    }


def data_ids(train_rows: Sequence[dict[str, str]], val_rows: Sequence[dict[str, str]]) -> dict[str, list[str]]:
    """The case and patient ids of each part, for ``TrainOptions.id_provenance`` (which stores
    them only as keyed HMACs, and only with ``--keep-ids``)."""
    return {
        "train_cases": [r.get("case", "") for r in train_rows],
        "val_cases": [r.get("case", "") for r in val_rows],
        "train_patients": [r.get("patient", "") for r in train_rows],
        "val_patients": [r.get("patient", "") for r in val_rows],
    }


class ForegroundBatchSampler:
    """Batches of indices where a fixed share comes from items that contain the target
    (nnU-Net's foreground oversampling, Isensee et al. 2021: 1/3 by default).

    Each batch holds ``n_foreground = max(1, round(share · batch_size))`` items drawn from
    ``foreground`` (placed last in the batch, so a step can centre their crops on the target)
    and the rest drawn uniformly from all items. ``set_epoch`` reseeds, so batches are a
    function of (seed, epoch) and a resumed run sees the same ones; under torchrun each rank
    draws its own (``set_rank``), so an epoch has ``batches`` batches per process.
    """

    def __init__(self, foreground: np.ndarray, batch_size: int, *, share: float = 1 / 3, batches: int | None = None, seed: int = 0):
        if not 0.0 <= share <= 1.0:
            raise UsageError(f"--foreground-share must be in [0, 1], got {share}")
        self.foreground = np.flatnonzero(np.asarray(foreground, dtype=bool))
        self.total = len(foreground)
        self.batch_size = int(batch_size)
        self.n_foreground = 0 if share == 0 or len(self.foreground) == 0 else min(self.batch_size, max(1, int(round(share * self.batch_size))))
        self.batches = batches or max(1, -(-self.total // self.batch_size))
        self.seed = seed
        self.epoch = 0
        self.rank = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int) -> None:
        """Under torchrun each process draws its own batches (another random stream per rank)."""
        self.rank = rank

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        for _ in range(self.batches):
            rest = rng.integers(0, self.total, self.batch_size - self.n_foreground)
            forced = rng.choice(self.foreground, self.n_foreground) if self.n_foreground else np.zeros(0, dtype=np.int64)
            yield [int(i) for i in np.concatenate([rest, forced])]


def split_by_patient(rows: Sequence[dict[str, str]], val_fraction: float, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Patient-wise split: no patient in both parts. At least one patient in each when possible."""
    patients = sorted({r["patient"] for r in rows})
    rng = random.Random(seed)
    rng.shuffle(patients)
    n_val = int(round(len(patients) * val_fraction))
    if val_fraction > 0 and len(patients) > 1:
        n_val = min(max(1, n_val), len(patients) - 1)
    else:
        n_val = 0
    val_patients = set(patients[:n_val])
    train = [r for r in rows if r["patient"] not in val_patients]
    val = [r for r in rows if r["patient"] in val_patients]
    return train, val


@dataclass
class SliceSet:
    """All slices of a list of cases: images (N, C, H, W) float32 [0,1], labels (N, H, W) int64."""

    images: np.ndarray
    labels: np.ndarray | None
    patient_index: np.ndarray  # (N,) index into ``patients``
    case_index: np.ndarray  # (N,) index into ``cases``
    slice_index: np.ndarray  # (N,) z index in the volume
    patients: list[str]
    cases: list[str]
    classes: list[str] = field(default_factory=list)
    class_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> "SliceSet":
        return SliceSet(
            self.images[mask],
            None if self.labels is None else self.labels[mask],
            self.patient_index[mask],
            self.case_index[mask],
            self.slice_index[mask],
            self.patients,
            self.cases,
            self.classes,
            None if self.class_index is None else self.class_index[mask],
        )

    def torch_dataset(self, target: str = "labels"):
        """A TensorDataset of (image, target) with target 'labels', 'patient' or 'class'."""
        import torch
        from torch.utils.data import TensorDataset

        images = torch.from_numpy(np.ascontiguousarray(self.images, dtype=np.float32))
        if target == "labels":
            if self.labels is None:
                raise InputError("these cases have no label maps")
            y = torch.from_numpy(self.labels.astype(np.int64))
        elif target == "patient":
            y = torch.from_numpy(self.patient_index.astype(np.int64))
        elif target == "class":
            if self.class_index is None:
                raise InputError("these items have no class")
            y = torch.from_numpy(self.class_index.astype(np.int64))
        else:
            raise UsageError(f"unknown target {target!r}")
        return TensorDataset(images, y)


def map_labels(label: np.ndarray, label_map: dict[int, int] | None) -> np.ndarray:
    """Map raw label values to class indices (e.g. BraTS 0,1,2,4 → 0..3); unknown values → error."""
    label = np.rint(label).astype(np.int64)
    if not label_map:
        return label
    lut_size = max(max(label_map), int(label.max(initial=0))) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    for raw, cls in label_map.items():
        lut[int(raw)] = cls
    out = lut[np.clip(label, 0, lut_size - 1)]
    if (out < 0).any() or (label < 0).any():
        bad = sorted(set(np.unique(label[out < 0]).tolist()))
        raise InputError(f"label values {bad} are not in the label map {label_map}")
    return out


def load_case_slices(
    row: dict[str, str],
    modalities: Sequence[str],
    *,
    norm: dict[str, Any] = DEFAULT_NORM,
    size: int | None = None,
    label_map: dict[int, int] | None = None,
    need_label: bool = False,
    axis: int = 2,
    context: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One case → (slices (Z, C, H, W) float32, labels (Z, H, W) int64 or None); ``context``
    K stacks K neighbouring slices on each side as channels (C·(2K+1), 2.5-D input)."""
    from medtools.core.preprocess import model_grid

    volumes = []
    grid = None
    for modality in modalities:
        if modality not in row:
            raise InputError(f"case {row.get('case')} has no {modality} (has: {', '.join(k for k in row if k not in ('patient', 'case', 'visit', 'label', 'class'))})")
        image = read_image(row[modality])
        volume = image_volume(image)
        if volumes and volume.shape != volumes[0].shape:
            raise InputError(f"case {row.get('case')}: {modality} shape {volume.shape} differs from {volumes[0].shape}")
        if not volumes:
            grid = model_grid(image, volume.shape, norm)  # into the training geometry, when the norm records one
        volumes.append(volume)
    shape = volumes[0].shape
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    images, _ = volumes_to_slices(volumes, norm, axis=axis)
    labels = None
    if "label" in row:
        label = read_volume(row["label"])
        if label.shape != shape:
            raise InputError(f"case {row.get('case')}: label shape {label.shape} differs from image {shape}")
        label = map_labels(label, label_map)
        if grid is not None:
            label = grid.to_model(label, labels=True)
        labels = volume_to_slices(label, axis)
    elif need_label:
        raise InputError(f"case {row.get('case')} has no label")
    images = stack_context(images, context)
    images = resize(images, size)
    if labels is not None:
        labels = resize(labels, size, labels=True)
    return images.astype(np.float32), labels


def build_slice_set(
    rows: Sequence[dict[str, str]],
    modalities: Sequence[str],
    *,
    norm: dict[str, Any] = DEFAULT_NORM,
    size: int | None = None,
    label_map: dict[int, int] | None = None,
    need_label: bool = False,
    skip_empty: bool = True,
    patients: Sequence[str] | None = None,
    context: int = 0,
) -> SliceSet:
    """Slices of all cases (empty slices, where every channel is constant, dropped)."""
    if not rows:
        raise InputError("no cases to load")
    patient_names = list(patients) if patients is not None else sorted({r["patient"] for r in rows})
    patient_lookup = {p: i for i, p in enumerate(patient_names)}
    images, labels, p_idx, c_idx, z_idx = [], [], [], [], []
    cases = []
    for row in rows:
        slices, label = load_case_slices(row, modalities, norm=norm, size=size, label_map=label_map, need_label=need_label, context=context)
        keep = np.ones(len(slices), dtype=bool)
        if skip_empty:
            flat = slices.reshape(len(slices), -1)
            keep = flat.max(axis=1) - flat.min(axis=1) > 1e-3
        case_number = len(cases)
        cases.append(row.get("case", str(case_number)))
        images.append(slices[keep])
        if label is not None:
            labels.append(label[keep])
        n = int(keep.sum())
        p_idx.append(np.full(n, patient_lookup.get(row["patient"], -1)))
        c_idx.append(np.full(n, case_number))
        z_idx.append(np.nonzero(keep)[0])
    return SliceSet(
        np.concatenate(images),
        np.concatenate(labels) if len(labels) == len(rows) else None,
        np.concatenate(p_idx),
        np.concatenate(c_idx),
        np.concatenate(z_idx),
        patient_names,
        cases,
    )


def build_image_set(rows: Sequence[dict[str, str]], *, size: int | None = None, classes: Sequence[str] | None = None, patients: Sequence[str] | None = None) -> SliceSet:
    """2-D images (manifest rows with ``image``) → SliceSet with one channel."""
    rows = [r for r in rows if "image" in r]
    if not rows:
        raise InputError("no 2-D images in these cases (manifest column 'image' is empty)")
    patient_names = list(patients) if patients is not None else sorted({r["patient"] for r in rows})
    class_names = list(classes) if classes is not None else sorted({r["class"] for r in rows if r.get("class")})
    images = np.stack([load_image(r["image"], size, 1, UNIT_NORM) for r in rows])
    class_lookup = {c: i for i, c in enumerate(class_names)}
    return SliceSet(
        images=images,
        labels=None,
        patient_index=np.array([patient_names.index(r["patient"]) if r["patient"] in patient_names else -1 for r in rows]),
        case_index=np.arange(len(rows)),
        slice_index=np.zeros(len(rows), dtype=np.int64),
        patients=patient_names,
        cases=[r.get("case", Path(r["image"]).stem) for r in rows],
        classes=class_names,
        class_index=np.array([class_lookup.get(r.get("class", ""), -1) for r in rows]) if class_names else None,
    )
