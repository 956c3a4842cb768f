"""read_image and write_image: one entry point per direction for every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.io.atomic import atomic_path
from medtools.core.io.dicom import is_dicom_file, read_dicom_file, read_dicom_series, write_dicom
from medtools.core.io.finite import check_finite
from medtools.core.io.formats import IMAGE_EXTS, RASTER_FORMATS, Image, format_of
from medtools.core.io.nifti import read_nifti, write_nifti
from medtools.core.io.raster import read_raster, write_raster


def read_image(path: Path | str, *, nan_policy: str | None = None) -> Image:
    """Read any supported file (or DICOM series folder) into an Image; InputError if not possible.

    Non-finite voxels follow ``nan_policy`` (default: the process-wide one, ``error``).
    """
    image = _read(Path(path))
    image.array = check_finite(image.array, path, nan_policy)
    return image


def _read(path: Path) -> Image:
    if not path.exists():
        raise InputError(f"no such file: {path}")
    fmt = format_of(path)
    try:
        if fmt == "nifti":
            return read_nifti(path)
        if fmt in RASTER_FORMATS:
            return read_raster(path, fmt)
        if fmt == "dicom":
            return read_dicom_file(path)
        if fmt == "dicom-series":
            return read_dicom_series(path)
        if fmt == "npy":
            return Image(np.load(path, allow_pickle=False), format="npy", meta={"source": str(path)})
        if fmt == "npz":
            return _read_npz(path)
        # Extension-less files are often DICOM (PACS exports).
        if is_dicom_file(path):
            return read_dicom_file(path)
    except InputError:
        raise
    except Exception as exc:  # any library error on a bad file is an input problem
        raise InputError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"unsupported file type: {path} (supported: {', '.join(IMAGE_EXTS)}, DICOM series folders)")


def _read_npz(path: Path) -> Image:
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        key = "array" if "array" in keys else keys[0]
        array = data[key]
        affine = data["affine"] if "affine" in keys else None
    return Image(array, affine=affine, format="npz", meta={"source": str(path)})


def write_image(image: Image, path: Path | str, *, format: str | None = None) -> Path:
    """Write atomically in the format named by ``format`` or the path's extension."""
    path = Path(path)
    fmt = format or format_of(path)
    if fmt == "dicom-series":
        raise UsageError("writing DICOM series is not supported; write NIfTI (or DICOM SEG with --format dicom-seg)")
    with atomic_path(path) as tmp:
        if fmt == "nifti":
            write_nifti(image, tmp)
        elif fmt in RASTER_FORMATS:
            write_raster(image, tmp, fmt)
        elif fmt == "dicom":
            write_dicom(image, tmp)
        elif fmt == "npy":
            with open(tmp, "wb") as handle:
                np.save(handle, image.array)
        elif fmt == "npz":
            arrays = {"array": image.array}
            if image.affine is not None:
                arrays["affine"] = image.affine
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        else:
            raise UsageError(f"cannot write format {fmt!r} ({path})")
    return path
