"""NIfTI read/write through nibabel, keeping affine, header and on-disk dtype."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError
from medtools.core.io.formats import Image


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read this NIfTI file") from None
    check_claimed_size(path, img.header)
    header = img.header.copy()
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = (slope, inter) != (1.0, 0.0)
    # Keep the on-disk dtype unless the header scales it (then float32 values are the truth).
    array = img.get_fdata(dtype=np.float32) if scaled else np.asanyarray(img.dataobj)
    array = np.asarray(array)
    return Image(array, affine=img.affine.copy(), format="nifti", meta={"header": header, "source": str(path)})


GZIP_MAX_RATIO = 1032  # deflate cannot compress better than about 1032:1


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} PB"  # pragma: no cover


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_claimed_size(path: Path | str, header: Any) -> None:
    """InputError naming the size when the header claims more voxel data than the file can
    hold (a damaged or hostile header) or than this machine's memory: never a bare MemoryError."""
    shape = tuple(int(n) for n in header.get_data_shape())
    voxels = int(np.prod(shape, dtype=np.float64)) if shape else 0
    on_disk = int(header.get_data_dtype().itemsize) * voxels
    in_memory = max(int(header.get_data_dtype().itemsize), 4) * voxels  # scaled data is read as float32
    size = os.path.getsize(path)
    offset = int(header["vox_offset"]) if "vox_offset" in header else 0
    room = size * GZIP_MAX_RATIO if str(path).lower().endswith(".gz") else size - offset
    what = f"the header claims {'x'.join(map(str, shape))} voxels ({_human(on_disk)})"
    if on_disk > max(room, 0):
        raise InputError(f"{path}: {what} but the file holds {_human(size)}: damaged or not a NIfTI volume")
    memory = _memory_bytes()
    if memory is not None and in_memory > memory:
        raise InputError(f"{path}: {what}, more than this machine's memory ({_human(memory)})")


def write_nifti(image: Image, tmp: Path) -> None:
    import nibabel as nib

    array = np.asarray(image.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        array = narrow_int64(array)
    header = image.meta.get("header")
    header = header.copy() if header is not None else None
    affine = image.affine if image.affine is not None else np.eye(4)
    img = nib.Nifti1Image(array, affine, header=header, dtype=array.dtype)
    img.header.set_slope_inter(1.0, 0.0)  # voxels are written as they are
    if header is not None:
        # keep the qform/sform codes of the source
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
    nib.save(img, str(tmp))


def narrow_int64(array: np.ndarray) -> np.ndarray:
    """int64 (torch argmax, numpy defaults) → the smallest NIfTI integer type holding the values.

    nibabel refuses int64 without an explicit dtype and many tools cannot read it.
    """
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    return array
