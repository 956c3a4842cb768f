"""File formats by extension, and the Image that carries an array with its geometry.

numpy-free at import (byte-level commands such as encrypt walk folders through this)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

NIFTI_EXTS = (".nii.gz", ".nii")
RASTER_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTS = (".dcm", ".dicom")
ARRAY_EXTS = (".npy", ".npz")
IMAGE_EXTS = NIFTI_EXTS + RASTER_EXTS + DICOM_EXTS + ARRAY_EXTS
RASTER_FORMATS = ("png", "jpeg", "tiff")
PREAMBLE_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"


def is_dicom_file(path: Path | str) -> bool:
    """True when the file carries the DICM magic after its preamble (extension-less PACS exports)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(PREAMBLE_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def split_ext(path: Path | str) -> tuple[str, str]:
    """('scan', '.nii.gz') for scan.nii.gz: double extensions count as one."""
    name = Path(path).name
    lower = name.lower()
    for ext in (".nii.gz",) + tuple(e for e in IMAGE_EXTS if e != ".nii.gz"):
        if lower.endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot and stem else (name, "")


def format_of(path: Path | str) -> str:
    """'nifti', 'png', 'jpeg', 'tiff', 'dicom', 'npy', 'npz' or 'dicom-series' (a folder)."""
    path = Path(path)
    if path.is_dir():
        return "dicom-series"
    ext = split_ext(path)[1].lower()
    return {
        ".nii.gz": "nifti",
        ".nii": "nifti",
        ".png": "png",
        ".jpg": "jpeg",
        ".jpeg": "jpeg",
        ".tif": "tiff",
        ".tiff": "tiff",
        ".dcm": "dicom",
        ".dicom": "dicom",
        ".npy": "npy",
        ".npz": "npz",
    }.get(ext, "unknown")


@dataclass
class Image:
    """An image or volume with its geometry and the source metadata needed to write it back.

    ``array`` is in (x, y, z) order for volumes as nibabel gives it, (H, W) or (H, W, C)
    for raster images. ``affine`` is the 4×4 voxel→world (RAS) matrix when known.
    ``meta`` keeps format-specific state: the NIfTI header, the DICOM dataset, PNG bit
    depth, the source path.
    """

    array: np.ndarray
    affine: np.ndarray | None = None
    format: str = "npy"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, ...] | None:
        if self.affine is None:
            return None
        ndim = min(3, self.array.ndim)
        import numpy as np

        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :ndim], axis=0))

    @property
    def is_volume(self) -> bool:
        return self.format in ("nifti", "dicom-series") or (self.array.ndim == 3 and self.affine is not None and self.format not in RASTER_FORMATS)

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry and metadata, new voxels (e.g. a label map for this scan)."""
        return replace(self, array=array, meta=dict(self.meta))
