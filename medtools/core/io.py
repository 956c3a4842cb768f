"""One I/O layer: read and write NIfTI, DICOM, PNG/JPG/TIFF and NPY/NPZ, keeping geometry.

Every family reads through ``read_image`` and writes through ``write_image``; no family
opens NIfTI or DICOM itself. Writes are atomic: a temporary file in the target folder is
renamed into place, so a crash or Ctrl-C never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

NIFTI_EXTS = (".nii.gz", ".nii")
RASTER_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTS = (".dcm", ".dicom")
ARRAY_EXTS = (".npy", ".npz")
IMAGE_EXTS = NIFTI_EXTS + RASTER_EXTS + DICOM_EXTS + ARRAY_EXTS


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
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :ndim], axis=0))

    @property
    def is_volume(self) -> bool:
        return self.format in ("nifti", "dicom-series") or (self.array.ndim == 3 and self.affine is not None and self.format not in RASTER_FORMATS)

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry and metadata, new voxels (e.g. a label map for this scan)."""
        return replace(self, array=array, meta=dict(self.meta))


RASTER_FORMATS = ("png", "jpeg", "tiff")


# ---------------------------------------------------------------- reading


def read_image(path: Path | str) -> Image:
    """Read any supported file (or DICOM series folder) into an Image; InputError if not possible."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    fmt = format_of(path)
    try:
        if fmt == "nifti":
            return _read_nifti(path)
        if fmt in RASTER_FORMATS:
            return _read_raster(path, fmt)
        if fmt == "dicom":
            return _read_dicom_file(path)
        if fmt == "dicom-series":
            return _read_dicom_series(path)
        if fmt == "npy":
            return Image(np.load(path, allow_pickle=False), format="npy", meta={"source": str(path)})
        if fmt == "npz":
            return _read_npz(path)
        # Extension-less files are often DICOM (PACS exports).
        if _looks_like_dicom(path):
            return _read_dicom_file(path)
    except InputError:
        raise
    except Exception as exc:  # any library error on a bad file is an input problem
        raise InputError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"unsupported file type: {path} (supported: {', '.join(IMAGE_EXTS)}, DICOM series folders)")


def _read_nifti(path: Path) -> Image:
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


def _read_raster(path: Path, fmt: str) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as pil:
        mode = pil.mode
        if mode in ("I;16", "I;16B", "I;16L"):
            array = np.array(pil, dtype=np.uint16)
            bits = 16
        elif mode == "I":
            array = np.array(pil).astype(np.int32)
            bits = 16 if array.max(initial=0) < 65536 and array.min(initial=0) >= 0 else 32
            if bits == 16:
                array = array.astype(np.uint16)
        elif mode == "F":
            array = np.array(pil, dtype=np.float32)
            bits = 32
        elif mode in ("L", "1", "P"):
            array = np.array(pil.convert("L"), dtype=np.uint8)
            bits = 8
        else:
            rgb = np.array(pil.convert("RGB"), dtype=np.uint8)
            # Grayscale stored as RGB (common for exported X-rays): keep one channel.
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                array, mode = rgb[..., 0].copy(), mode + "->L"
            else:
                array = rgb
            bits = 8
    return Image(array, format=fmt, meta={"bits": bits, "mode": mode, "source": str(path)})


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_file(path: Path) -> Image:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data")
    array = ds.pixel_array
    meta: dict[str, Any] = {"dataset": ds, "source": str(path)}
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        meta["rescale"] = {"slope": slope, "intercept": intercept}  # stored values → e.g. HU
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    affine = _dicom_affine(ds) if frames == 1 else None
    return Image(np.asarray(array), affine=affine, format="dicom", meta=meta)


def _dicom_affine(ds: Any) -> np.ndarray | None:
    """RAS affine of a single-frame DICOM for array index (row, column[, 0]).

    DICOM (PS3.3 C.7.6.2): position = IPP + row·ΔR·(column cosines) + column·ΔC·(row cosines),
    with PixelSpacing = [ΔR between rows, ΔC between columns] and IOP = [row cosines,
    column cosines], in LPS; x and y are negated for RAS as in NIfTI.
    """
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if not spacing:
        return None
    delta_row, delta_col = (float(v) for v in spacing)
    orientation = ds.get("ImageOrientationPatient")
    if orientation and len(orientation) == 6:
        row_cos = np.array([float(v) for v in orientation[:3]])
        col_cos = np.array([float(v) for v in orientation[3:]])
    else:
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_cos, col_cos)
    thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
    position = ds.get("ImagePositionPatient")
    affine = np.eye(4)
    affine[:3, 0] = col_cos * delta_row
    affine[:3, 1] = row_cos * delta_col
    affine[:3, 2] = normal * thickness
    if position and len(position) == 3:
        affine[:3, 3] = [float(v) for v in position]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def dicom_series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix.lower() in DICOM_EXTS or _looks_like_dicom(p)))


def _dcm2niix_binary() -> str:
    found = shutil.which("dcm2niix")
    if found:
        return found
    try:  # the PyPI package ships the binary inside the module
        import dcm2niix  # type: ignore

        candidate = Path(dcm2niix.__file__).parent / "dcm2niix"
        if candidate.exists():
            return str(candidate)
        binary = getattr(dcm2niix, "bin", None)
        if binary:
            return str(binary)
    except ImportError:
        pass
    raise InputError("DICOM series need dcm2niix: pip install dcm2niix (or put dcm2niix on PATH)")


def _read_dicom_series(folder: Path) -> Image:
    """A DICOM series folder → volume through dcm2niix (slice order, oblique, mosaics, compression)."""
    if not dicom_series_files(folder):
        raise InputError(f"{folder}: folder holds no DICOM files")
    binary = _dcm2niix_binary()
    with tempfile.TemporaryDirectory(prefix="medtools-dcm2niix-") as tmp:
        proc = subprocess.run(
            [binary, "-z", "n", "-b", "n", "-f", "volume", "-o", tmp, str(folder)],
            capture_output=True,
            text=True,
        )
        outputs = sorted(Path(tmp).glob("*.nii"))
        if proc.returncode != 0 or not outputs:
            raise InputError(f"{folder}: dcm2niix could not convert the series: {proc.stdout[-300:]} {proc.stderr[-300:]}")
        if len(outputs) > 1:
            raise InputError(f"{folder}: holds {len(outputs)} series; give one series per folder")
        image = _read_nifti(outputs[0])
        image.array = np.array(image.array)  # detach from the temp file before it goes
    image.format = "dicom-series"
    image.meta["source"] = str(folder)
    return image


def _read_npz(path: Path) -> Image:
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        key = "array" if "array" in keys else keys[0]
        array = data[key]
        affine = data["affine"] if "affine" in keys else None
    return Image(array, affine=affine, format="npz", meta={"source": str(path)})


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it into place only on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and the
    target is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = split_ext(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{ext}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); an output gets the usual umask mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_image(image: Image, path: Path | str, *, format: str | None = None) -> Path:
    """Write atomically in the format named by ``format`` or the path's extension."""
    path = Path(path)
    fmt = format or format_of(path)
    if fmt == "dicom-series":
        raise UsageError("writing DICOM series is not supported; write NIfTI (or DICOM SEG with --format dicom-seg)")
    with atomic_path(path) as tmp:
        if fmt == "nifti":
            _write_nifti(image, tmp)
        elif fmt in RASTER_FORMATS:
            _write_raster(image, tmp, fmt)
        elif fmt == "dicom":
            _write_dicom(image, tmp)
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


def _write_nifti(image: Image, tmp: Path) -> None:
    import nibabel as nib

    array = np.asarray(image.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        array = _narrow_int64(array)
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


def _narrow_int64(array: np.ndarray) -> np.ndarray:
    """int64 (torch argmax, numpy defaults) → the smallest NIfTI integer type holding the values.

    nibabel refuses int64 without an explicit dtype and many tools cannot read it.
    """
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    return array


def _write_raster(image: Image, tmp: Path, fmt: str) -> None:
    from PIL import Image as PILImage

    array = np.asarray(image.array)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise InputError(f"a {fmt.upper()} holds a 2-D gray, RGB or RGBA image, not shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        raise InputError("float images cannot be written as PNG/JPEG/TIFF without scaling; convert to uint8/uint16 first")
    if fmt == "jpeg" and array.dtype != np.uint8:
        raise InputError("JPEG holds only 8-bit images")
    if array.dtype not in (np.uint8, np.uint16):
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise InputError(f"values {array.min()}..{array.max()} do not fit in a 16-bit image")
        array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    if array.ndim == 3 and array.dtype == np.uint16:
        raise InputError("16-bit colour images are not supported")
    pil = PILImage.fromarray(array) if array.dtype == np.uint8 else PILImage.fromarray(array.astype(np.uint16))
    kwargs: dict[str, Any] = {"quality": 95} if fmt == "jpeg" else {}
    pil.save(tmp, format={"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}[fmt], **kwargs)


def _write_dicom(image: Image, tmp: Path) -> None:
    ds = image.meta.get("dataset")
    if ds is None:
        raise UsageError("writing DICOM needs a DICOM source to copy tags from")
    ds = copy.deepcopy(ds)
    array = np.asarray(image.array)
    bits = int(ds.BitsAllocated)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    if array.dtype != dtype:
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max).astype(dtype)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed or not syntax.is_little_endian:
        # the pixels are written raw, little-endian (the tags are kept, only their encoding changes)
        from pydicom.uid import ExplicitVRLittleEndian

        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:  # colour: numpy (…, rows, columns, samples) is interleaved RGB
        ds.Rows, ds.Columns = array.shape[-3:-1]
        ds.PlanarConfiguration = 0
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom decoded YBR to RGB
    else:
        ds.Rows, ds.Columns = array.shape[-2:] if array.ndim >= 2 else (1, array.shape[0])
    pixels = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    if pixels != _source_pixels(ds):
        _mark_derived(ds, pixels)
    ds.PixelData = pixels
    if _pydicom_major() >= 3:
        import pydicom

        # dcmwrite (unlike Dataset.save_as) may change a big-endian source to the file meta's little endian
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
    else:  # pragma: no cover
        ds.save_as(str(tmp), write_like_original=False)


def _source_pixels(ds: Any) -> bytes | None:
    """The source's pixels in the encoding we write (None when they cannot be decoded)."""
    try:
        array = np.asarray(ds.pixel_array)
    except Exception:
        return None
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _mark_derived(ds: Any, pixels: bytes) -> None:
    """Changed pixels make a new object: a PACS must never see two different images under one
    SOPInstanceUID. New UIDs are derived (2.25.<hash>) from the source UID and the new pixels, so a
    rerun reproduces them and all files of one source series land in one new series."""
    import hashlib

    def derived_uid(*parts: bytes) -> str:
        return "2.25." + str(int.from_bytes(hashlib.sha256(b"medtools-derived:" + b":".join(parts)).digest()[:16], "big"))

    if "SOPInstanceUID" in ds:
        ds.SOPInstanceUID = derived_uid(str(ds.SOPInstanceUID).encode(), hashlib.sha256(pixels).digest())
        if "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SeriesInstanceUID" in ds:
        ds.SeriesInstanceUID = derived_uid(str(ds.SeriesInstanceUID).encode())
    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    image_type[0] = "DERIVED"
    ds.ImageType = image_type


def _pydicom_major() -> int:
    import pydicom

    return int(pydicom.__version__.split(".")[0])


# ---------------------------------------------------------------- helpers for volumes


def as_volume(image: Image) -> np.ndarray:
    """The image as (x, y, z): 2-D images become one slice."""
    array = image.array
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 4 and array.shape[-1] == 1:
        return array[..., 0]
    return array


def normalise_intensity(volume: np.ndarray, *, low: float = 0.5, high: float = 99.5, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Percentile window → [0, 1] float32; returns the window so it can be undone exactly."""
    values = volume[mask] if mask is not None and mask.any() else volume[volume != volume.min()] if (volume != volume.min()).any() else volume
    lo = float(np.percentile(values, low))
    hi = float(np.percentile(values, high))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((volume.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return out, {"low": lo, "high": hi}


def denormalise_intensity(normed: np.ndarray, window: dict[str, float]) -> np.ndarray:
    return normed * (window["high"] - window["low"]) + window["low"]
