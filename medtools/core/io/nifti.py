"""NIfTI read/write through nibabel, keeping affine, header and on-disk dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtools.core.io.formats import Image


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    header = img.header.copy()
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = (slope, inter) != (1.0, 0.0)
    # Keep the on-disk dtype unless the header scales it (then float32 values are the truth).
    array = img.get_fdata(dtype=np.float32) if scaled else np.asanyarray(img.dataobj)
    array = np.asarray(array)
    return Image(array, affine=img.affine.copy(), format="nifti", meta={"header": header, "source": str(path)})


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
