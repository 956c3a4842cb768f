"""One I/O layer: read and write NIfTI, DICOM, PNG/JPG/TIFF and NPY/NPZ, keeping geometry.

Every family reads through ``read_image`` and writes through ``write_image``; no family
opens NIfTI or DICOM itself. Writes are atomic: a temporary file in the target folder is
renamed into place, so a crash, Ctrl-C or SIGTERM never leaves a half-written output.

By concern: ``formats`` (extensions, Image), ``nifti``, ``raster``, ``dicom`` (files,
series through dcm2niix), ``uids`` (derived DICOM UIDs), ``images`` (read_image,
write_image), ``atomic`` (atomic writes, stale temp clean-up), ``finite`` (NaN/Inf policy).
"""

from __future__ import annotations

import numpy as np

from medtools.core.io.atomic import atomic_open, atomic_path, clean_stale, on_renamed
from medtools.core.io.dicom import dicom_affine as _dicom_affine
from medtools.core.io.dicom import dicom_series_files, is_dicom_file, summarise_tool_output
from medtools.core.io.finite import NAN_POLICIES, check_finite, count_nonfinite, nan_policy
from medtools.core.io.formats import (
    ARRAY_EXTS,
    DICOM_EXTS,
    IMAGE_EXTS,
    NIFTI_EXTS,
    RASTER_EXTS,
    RASTER_FORMATS,
    Image,
    format_of,
    split_ext,
)
from medtools.core.io.images import read_image, write_image

_looks_like_dicom = is_dicom_file  # old private name, still imported by callers

__all__ = [
    "ARRAY_EXTS", "DICOM_EXTS", "IMAGE_EXTS", "NAN_POLICIES", "NIFTI_EXTS", "RASTER_EXTS", "RASTER_FORMATS",
    "Image", "as_volume", "atomic_open", "atomic_path", "check_finite", "clean_stale", "count_nonfinite",
    "dicom_series_files", "format_of", "is_dicom_file", "nan_policy",
    "on_renamed", "read_image", "split_ext", "summarise_tool_output", "write_image",
]


# ---------------------------------------------------------------- helpers for volumes


def as_volume(image: Image) -> np.ndarray:
    """The image as (x, y, z): 2-D images become one slice."""
    array = image.array
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 4 and array.shape[-1] == 1:
        return array[..., 0]
    return array
