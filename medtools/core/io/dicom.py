"""DICOM: single files through pydicom (tags kept on write), series folders through dcm2niix."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.io.formats import DICOM_EXTS, PREAMBLE_OFFSET, Image, is_dicom_file  # noqa: F401  (re-exported)
from medtools.core.io.nifti import read_nifti
from medtools.core.io.uids import mark_derived

def read_dicom_file(path: Path) -> Image:
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
    affine = dicom_affine(ds) if frames == 1 else None
    return Image(np.asarray(array), affine=affine, format="dicom", meta=meta)


def dicom_affine(ds: Any) -> np.ndarray | None:
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
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix.lower() in DICOM_EXTS or is_dicom_file(p)))


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


_FAILURE_WORDS = ("not large enough", "unable", "failed", "fail ", "corrupt", "invalid", "truncat", "cannot", "not supported", "unsupported", "no valid", "missing")


def summarise_tool_output(text: str, *, limit: int = 200) -> str:
    """One line out of an external tool's log: the line that says why it failed.

    In order: the first error line; the first line naming a failure (a file too small,
    unreadable, corrupt, unsupported: dcm2niix prints these as warnings, after benign ones
    such as "Empty protocol name(s)"); the first warning; the last line. Whole lines only
    (never from mid-token), shortened to ``limit`` characters.
    """
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "no message"
    lower = [line.lower() for line in lines]
    ranked = (
        [line for line, low in zip(lines, lower) if low.startswith("error") or " error" in low],
        [line for line, low in zip(lines, lower) if any(word in low for word in _FAILURE_WORDS)],
        [line for line, low in zip(lines, lower) if low.startswith("warning")],
    )
    line = next((found[0] for found in ranked if found), lines[-1])
    return line if len(line) <= limit else line[: limit - 1] + "…"


def read_dicom_series(folder: Path) -> Image:
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
            if os.environ.get("MEDTOOLS_DEBUG"):
                print(f"dcm2niix output for {folder}:\n{proc.stdout}{proc.stderr}", file=sys.stderr, flush=True)
            summary = summarise_tool_output(proc.stdout + "\n" + proc.stderr)
            # the batch names the item; dcm2niix's line names the file
            raise InputError(f"dcm2niix could not convert the series (exit {proc.returncode}): {summary} (MEDTOOLS_DEBUG=1 shows its full output)")
        if len(outputs) > 1:
            raise InputError(f"{folder}: holds {len(outputs)} series; give one series per folder")
        image = read_nifti(outputs[0])
        image.array = np.array(image.array)  # detach from the temp file before it goes
    image.format = "dicom-series"
    image.meta["source"] = str(folder)
    return image


def write_dicom(image: Image, tmp: Path) -> None:
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
    if pixels != source_pixels(ds):
        mark_derived(ds, pixels)
    ds.PixelData = pixels
    if pydicom_major() >= 3:
        import pydicom

        # dcmwrite (unlike Dataset.save_as) may change a big-endian source to the file meta's little endian
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
    else:  # pragma: no cover
        ds.save_as(str(tmp), write_like_original=False)


def source_pixels(ds: Any) -> bytes | None:
    """The source's pixels in the encoding we write (None when they cannot be decoded)."""
    try:
        array = np.asarray(ds.pixel_array)
    except Exception:
        return None
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def pydicom_major() -> int:
    import pydicom

    return int(pydicom.__version__.split(".")[0])
