"""``slices``: 2-D slices of brain volumes, labelled Tumor / NoTumor from the tumour mask.

For each case (BraTS, TCIA Brain-Tumor-Progression or phantom layout, found by
``core.manifest``) one modality is read, normalised by the percentile window of
``core.preprocess`` (the same as every brain model) and cut into axial slices, written as
8-bit PNG: ``DIR/Tumor/<case>_z<NNN>.png`` when the mask has at least ``min_area`` tumour
pixels in the slice, ``DIR/NoTumor/<case>_z<NNN>.png`` when it has none. Slices in between
(a few tumour pixels) are ambiguous and skipped, as are slices with less than
``min_brain`` of the field of view inside the head. The case name starts with the patient
id, and ``DIR/manifest.csv`` (``file, patient_id, case, slice, tumor_pixels``) records it
exactly, so ``core.manifest`` and every split by patient read it back.

Volumes go through the one geometry step: every case is cut in the data set's geometry (its
most common orientation, median in-plane spacing; ``core.preprocess.model_grid``), so a scan
stored with its axes in another order still gives axial slices.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

TUMOR, NO_TUMOR = "Tumor", "NoTumor"
MANIFEST_FIELDS = ("file", "patient_id", "case", "slice", "tumor_pixels")


def pick_modality(row: dict[str, str], modality: str | None) -> str:
    from medtools.core.manifest import MODALITIES

    if modality:
        if modality not in row:
            raise InputError(f"case {row.get('case')}: no {modality} volume (has {', '.join(m for m in MODALITIES if m in row) or 'none'})")
        return modality
    for name in MODALITIES:
        if name in row:
            return name
    raise InputError(f"case {row.get('case')}: no image volume")


def slice_geometry(rows: Sequence[dict[str, str]], modality: str | None = None) -> dict[str, Any] | None:
    """The data set's geometry (``core.data.dataset_geometry`` over each case's chosen modality:
    most common orientation, median spacing in it): every case is cut in it. None when the files
    have no affine or a case has no usable modality (each case then fails or is cut as stored)."""
    from medtools.core.data import dataset_geometry

    try:
        picked = [{"case": r.get("case", ""), "image": r[pick_modality(r, modality)]} for r in rows]
        return dataset_geometry(picked, "image")
    except InputError:
        return None


def case_slices(row: dict[str, str], *, modality: str | None = None, min_area: int = 20, min_brain: float = 0.1, every: int = 1, size: int | None = None, geometry: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Labelled slices of one case: dicts with levels (H, W) uint8, class, slice, tumor_pixels.

    ``geometry`` (:func:`slice_geometry`): the volume and its mask are first mapped into it
    (``core.preprocess.model_grid``: reoriented, resampled in-plane; the mask by nearest
    neighbour), so a case stored in another array order gives the same axial slices; ``slice``
    then counts along that geometry's slicing axis. A 4-D series is an InputError naming its shape."""
    from medtools.core.data import image_volume
    from medtools.core.io import read_image
    from medtools.core.preprocess import PERCENTILE_NORM, model_grid, normalise, resize

    if "label" not in row:
        raise InputError(f"case {row.get('case')}: no tumour mask, so no Tumor/NoTumor class")
    name = pick_modality(row, modality)
    image = read_image(row[name])
    volume = image_volume(image).astype(np.float32)
    mask = image_volume(read_image(row["label"]))
    if volume.shape != mask.shape:
        raise InputError(f"case {row.get('case')}: image {volume.shape} and mask {mask.shape} differ in shape")
    grid = model_grid(image, volume.shape, {"geometry": geometry}) if geometry else None
    if grid is not None:
        volume, mask = grid.to_model(volume), grid.to_model(np.rint(mask).astype(np.int64), labels=True)
    normed, _ = normalise(volume, PERCENTILE_NORM)
    head = volume > volume.min()
    for z in range(0, volume.shape[2], max(1, every)):
        tumour = int((mask[:, :, z] > 0).sum())
        if head[:, :, z].mean() < min_brain:
            continue
        if tumour >= min_area:
            label = TUMOR
        elif tumour == 0:
            label = NO_TUMOR
        else:
            continue
        image = normed[:, :, z]
        if size:
            image = resize(image[None, None], size)[0, 0]
        levels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        yield {"levels": levels, "class": label, "slice": z, "tumor_pixels": tumour}


def write_slices(
    data: Path | str | Sequence[Path | str],
    output: Path,
    *,
    modality: str | None = None,
    min_area: int = 20,
    min_brain: float = 0.1,
    every: int = 1,
    size: int | None = None,
    overwrite: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Slices of every case under ``data`` → ``output``; yields (case, {case, outputs} | Exception).

    ``output/manifest.csv`` is rewritten at the end with every slice of this run (and the
    rows of an earlier run for cases not seen now).
    """
    from medtools.core.io import Image, atomic_path, write_image
    from medtools.core.manifest import load_rows

    if min_area < 1:
        raise UsageError("--min-area must be at least 1 pixel")
    rows = [r for r in load_rows(data) if any(k in r for k in ("flair", "t1", "t1ce", "t2"))]
    if not rows:
        raise InputError("no brain volumes found")
    output = Path(output)
    listing: dict[str, dict[str, Any]] = {}
    previous = output / "manifest.csv"
    if previous.is_file():
        with open(previous, newline="") as handle:
            listing = {r["file"]: r for r in csv.DictReader(handle)}
    seen_cases = {r["case"] for r in rows}
    listing = {f: r for f, r in listing.items() if r.get("case") not in seen_cases}
    geometry = slice_geometry(rows, modality)
    try:
        for row in rows:
            case = row["case"]
            try:
                written = []
                for item in case_slices(row, modality=modality, min_area=min_area, min_brain=min_brain, every=every, size=size, geometry=geometry):
                    rel = f"{item['class']}/{case}_z{item['slice']:03d}.png"
                    target = output / rel
                    if overwrite or not target.exists():
                        write_image(Image(item["levels"], format="png"), target)
                        written.append(target)
                    listing[rel] = {"file": rel, "patient_id": row["patient"], "case": case, "slice": item["slice"], "tumor_pixels": item["tumor_pixels"]}
                yield case, {"case": case, "outputs": [str(p) for p in written]}
            except (InputError, OSError, ValueError) as exc:
                yield case, exc
    finally:
        if listing:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
            writer.writeheader()
            for rel in sorted(listing):
                writer.writerow({k: listing[rel].get(k, "") for k in MANIFEST_FIELDS})
            output.mkdir(parents=True, exist_ok=True)
            with atomic_path(previous) as tmp:
                Path(tmp).write_text(buffer.getvalue())
