"""Brain inputs as cases: one or more modality volumes (+ optional label) of one exam.

Positional inputs may be a manifest CSV, folders (cases discovered by
``core.manifest``), single NIfTI/DICOM-series volumes (one-modality cases) or ``-``.
Each case knows where its outputs go, mirroring its folder under ``-o``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.data import image_volume
from medtools.core.preprocess import volumes_to_slices
from medtools.core.errors import InputError
from medtools.core.inputs import expand_inputs
from medtools.core.io import NIFTI_EXTS, RASTER_EXTS, Image, read_image
from medtools.core.manifest import MODALITIES, discover, read_csv
from medtools.core.paths import safe_relpath

SINGLE = "image"  # modality key of a one-file case


@dataclass
class Case:
    case: str
    patient: str
    visit: str
    files: dict[str, Path]  # modality → file
    label: Path | None
    rel_dir: Path  # folder relative to the input root, mirrored under -o
    row: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.case

    def files_for(self, modalities: Sequence[str]) -> list[Path]:
        """Files in the checkpoint's modality order; a one-file case serves a one-channel model."""
        if len(self.files) == 1 and SINGLE in self.files and len(modalities) == 1:
            return [self.files[SINGLE]]
        missing = [m for m in modalities if m not in self.files]
        if missing:
            have = ", ".join(self.files) or "none"
            raise InputError(f"case {self.case}: the model expects modalities {', '.join(modalities)} but the case has {have}")
        return [self.files[m] for m in modalities]


def _case_from_row(row: dict[str, str], root: Path | None) -> Case:
    files = {m: Path(row[m]) for m in MODALITIES if row.get(m)}
    if row.get("image") and not files:
        files = {SINGLE: Path(row["image"])}
    first = next(iter(files.values()))
    folder = first.parent
    try:
        rel = folder.resolve().relative_to(root.resolve()) if root is not None else Path(folder.name)
    except ValueError:
        rel = Path(folder.name)
    rel = safe_relpath(rel, fallback=".")  # mirrored under -o: never '..' or absolute
    return Case(
        case=row.get("case") or first.name,
        patient=row.get("patient", row.get("case", "")),
        visit=row.get("visit", ""),
        files=files,
        label=Path(row["label"]) if row.get("label") else None,
        rel_dir=rel,
        row=dict(row),
    )


def resolve_cases(args: Sequence[str], *, stdin=None) -> list[Case]:
    """Expand arguments into cases (see module docstring); InputError if none."""
    cases: list[Case] = []
    for arg in args:
        if arg == "-":
            lines = [line.strip() for line in (stdin if stdin is not None else sys.stdin) if line.strip()]
            cases.extend(resolve_cases(lines))
            continue
        path = Path(arg)
        if path.suffix.lower() == ".csv" and path.is_file():
            cases.extend(_case_from_row(row, None) for row in read_csv(path))
        elif path.is_dir() and not _is_series(path):
            rows = _discover_or_files(path)
            cases.extend(rows)
        elif path.exists():
            cases.append(_single(path))
        else:
            raise InputError(f"no such file or folder: {arg}")
    if not cases:
        raise InputError(f"no cases found in {' '.join(map(str, args))}")
    return cases


def _is_series(path: Path) -> bool:
    from medtools.core.inputs import _is_series_folder

    return _is_series_folder(path)


def _single(path: Path, root: Path | None = None) -> Case:
    from medtools.core.io import split_ext

    stem = split_ext(path)[0] if path.is_file() else path.name
    rel = path.parent.relative_to(root) if root is not None else Path(".")
    return Case(case=stem, patient=stem, visit="", files={SINGLE: path}, label=None, rel_dir=rel)


def _discover_or_files(folder: Path) -> list[Case]:
    """Cases by the manifest rules; failing that, every volume file is a one-modality case."""
    try:
        return [_case_from_row(row, folder) for row in discover([folder]) if any(row.get(m) for m in (*MODALITIES, SINGLE))]
    except InputError:
        items = expand_inputs([folder], exts=(*NIFTI_EXTS, *RASTER_EXTS), series=True)  # volumes, DICOM series, 2-D pictures
        return [_single(item.path, folder) for item in items]


@dataclass
class LoadedCase:
    """A case in model space: slices (Z, C, H, W) in [0, 1] plus what is needed to write back."""

    case: Case
    images: list[Image]  # raw images per channel (geometry + header for writing)
    windows: list[dict[str, float]]  # per channel normalisation window
    slices: np.ndarray  # (Z, C, H, W) float32
    label: np.ndarray | None  # raw label volume (x, y, z) if the case has one
    grid: Any = None  # core.io.geometry.GridMap into the training geometry (None: slices as stored)


def load_case(case: Case, modalities: Sequence[str], norm: dict[str, Any], *, with_label: bool = False, geometry: bool = False, resample: bool = True, volume: int | None = None) -> LoadedCase:
    """One case in model space through the shared preprocessing (``core.preprocess``).

    ``geometry``: map the volumes into the training geometry the norm records (reorient,
    in-plane resampling unless ``resample`` is False; ``preprocess.model_grid``), kept as
    ``grid`` to map predictions back. ``volume``: which volume of a 4-D series."""
    from medtools.core.preprocess import model_grid

    images, volumes = [], []
    for path in case.files_for(modalities):
        image = read_image(path)
        array = image_volume(image, volume=volume)
        if volumes and array.shape != volumes[0].shape:
            raise InputError(f"case {case.case}: {path.name} has shape {array.shape}, other modalities {volumes[0].shape}")
        images.append(image)
        volumes.append(array)
    grid = model_grid(images[0], volumes[0].shape, norm, resample=resample) if geometry else None
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, windows = volumes_to_slices(volumes, norm)
    label = None
    if with_label and case.label is not None:
        label = np.rint(image_volume(read_image(case.label), volume=volume)).astype(np.int64)
    return LoadedCase(case, images, windows, slices, label, grid)
