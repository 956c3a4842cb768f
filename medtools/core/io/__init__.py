"""One I/O layer: read and write NIfTI, DICOM, PNG/JPG/TIFF and NPY/NPZ, keeping geometry.

Every family reads through ``read_image`` and writes through ``write_image``; no family
opens NIfTI or DICOM itself. Writes are atomic: a temporary file in the target folder is
renamed into place, so a crash, Ctrl-C or SIGTERM never leaves a half-written output.

By concern: ``formats`` (extensions, Image), ``nifti``, ``raster``, ``dicom`` (files,
series through dcm2niix), ``uids`` (derived DICOM UIDs), ``images`` (read_image,
write_image), ``atomic`` (atomic writes, stale temp clean-up), ``finite`` (NaN/Inf policy).
"""

from __future__ import annotations

import importlib
from typing import Any

# numpy-free parts, imported at once (byte-level commands walk folders and write atomically)
from medtools.core.io.atomic import atomic_open, atomic_path, clean_stale, on_renamed
from medtools.core.io.formats import (
    ARRAY_EXTS,
    DICOM_EXTS,
    IMAGE_EXTS,
    NIFTI_EXTS,
    RASTER_EXTS,
    RASTER_FORMATS,
    Image,
    format_of,
    is_dicom_file,
    split_ext,
)

# the rest on first use (PEP 562): they import numpy, nibabel, pydicom
_LAZY = {
    "dicom_series_files": "dicom", "summarise_tool_output": "dicom", "_dicom_affine": ("dicom", "dicom_affine"),
    "NAN_POLICIES": "finite", "check_finite": "finite", "count_nonfinite": "finite", "nan_policy": "finite",
    "read_image": "images", "write_image": "images", "as_volume": "volumes",
}
_looks_like_dicom = is_dicom_file  # old private name, still imported by callers

__all__ = [
    "ARRAY_EXTS", "DICOM_EXTS", "IMAGE_EXTS", "NAN_POLICIES", "NIFTI_EXTS", "RASTER_EXTS", "RASTER_FORMATS",
    "Image", "as_volume", "atomic_open", "atomic_path", "check_finite", "clean_stale", "count_nonfinite",
    "dicom_series_files", "format_of", "is_dicom_file", "nan_policy",
    "on_renamed", "read_image", "split_ext", "summarise_tool_output", "write_image",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = (target, name) if isinstance(target, str) else target
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), attr)
    globals()[name] = value
    return value
