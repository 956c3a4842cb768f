"""Format conversion: DICOM series → NIfTI, volumes → PNG slices or NPY, keeping geometry.

PNG slices cannot hold an affine or float intensities, so each converted volume gets a
``<stem>.json`` sidecar with the affine, the slice axis and the linear intensity mapping
(``value = png * scale + offset``) that undoes the 16-bit quantisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medtools.core.errors import UsageError
from medtools.core.inputs import Item, output_for, skip_existing
from medtools.core.io import IMAGE_EXTS, Image, as_volume, atomic_path, read_image, split_ext, write_image

TARGETS = ("nifti", "png", "npy", "npz")
TARGET_EXTS = {"nifti": (".nii.gz", ".nii"), "npy": (".npy",), "npz": (".npz",), "png": ()}


def check_options(to: str, axis: int) -> None:
    """Reject bad --to/--axis before any file is read (exit 2, not one error per item)."""
    if to not in TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if axis not in (0, 1, 2):
        raise UsageError(f"--axis must be 0, 1 or 2, got {axis}")


def single_file_output(output: Path, to: str, n_items: int) -> bool:
    """Is -o the output file itself? Only for one input and an -o named like the target.

    An -o with another image extension is a mistake (NIfTI bytes in a .npy file); any
    other name (``results.v2``) is a folder.
    """
    ext = split_ext(output)[1].lower()
    if n_items != 1 or output.is_dir() or not ext:
        return False
    if ext in TARGET_EXTS[to]:
        return True
    if ext in IMAGE_EXTS:
        wanted = " or ".join(TARGET_EXTS[to]) or "a folder"
        raise UsageError(f"-o {output} does not match --to {to} (give {wanted})")
    return False


def real_values(image: Image) -> Image:
    """A DICOM file's stored values through RescaleSlope/Intercept (e.g. HU), as dcm2niix gives series."""
    rescale = image.meta.get("rescale")
    if image.format != "dicom" or not rescale:
        return image
    slope, intercept = rescale["slope"], rescale["intercept"]
    values = image.array.astype(np.float64) * slope + intercept
    if slope == 1.0 and float(intercept).is_integer() and -32768 <= values.min(initial=0) and values.max(initial=0) <= 32767:
        values = values.astype(np.int16)
    else:
        values = values.astype(np.float32)
    meta = {k: v for k, v in image.meta.items() if k != "rescale"}
    return Image(values, affine=image.affine, format=image.format, meta=meta)


def looks_like_label(array: np.ndarray, name: str) -> bool:
    """Whole values in 0..255 (exact as 8-bit PNG) and either few of them or a label-like name.

    The name alone is not enough: ``case_seg_prob.nii.gz`` holds probabilities in [0, 1],
    which an 8-bit label PNG would truncate to zeros.
    """
    if array.size == 0 or array.dtype.kind not in "iubf":
        return False
    if array.min() < 0 or array.max() > 255:
        return False
    sample = array.ravel()[:: max(1, array.size // 200_000)]
    if array.dtype.kind == "f" and not np.array_equal(sample, np.rint(sample)):
        return False
    lowered = name.lower()
    if any(token in lowered for token in ("seg", "label", "mask", "otmulticlass")):
        return bool(array.dtype.kind != "f" or np.array_equal(array, np.rint(array)))
    return array.dtype.kind in "iub" and np.unique(sample).size <= 16


def convert(item: Item, output: Path, *, to: str, axis: int = 2, overwrite: bool = False, single: bool = False) -> list[Path]:
    """Convert one input; returns written paths (empty if all outputs existed)."""
    check_options(to, axis)
    ext = {"nifti": ".nii.gz", "npy": ".npy", "npz": ".npz", "png": ""}[to]
    if to == "png":
        folder = output_for(item, output, ext="")
        if skip_existing(folder / "volume.json", overwrite):
            return []
        image = real_values(read_image(item.path))
        return _volume_to_png(image, folder, axis=axis, label=looks_like_label(image.array, item.path.name))
    target = output_for(item, output, ext=ext, single=single)
    if skip_existing(target, overwrite):
        return []
    image = real_values(read_image(item.path))
    if to == "nifti":
        if image.format in ("png", "jpeg", "tiff") and image.affine is None:
            image = Image(image.array, affine=np.eye(4), format="nifti")
        return [write_image(image, target, format="nifti")]
    written = [write_image(image, target, format=to)]
    if to == "npy" and image.affine is not None:
        written.append(_write_json(target.with_name(split_ext(target)[0] + ".json"), {"affine": image.affine.tolist(), "source": str(item.path)}))
    return written


def _write_json(path: Path, data: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return path


def _volume_to_png(image: Image, folder: Path, *, axis: int, label: bool) -> list[Path]:
    volume = as_volume(image)
    slices = np.moveaxis(volume, axis, 0)
    if label:  # whole values in 0..255 (looks_like_label)
        quantised, scale, offset, bits = np.rint(slices).astype(np.uint8), 1.0, 0.0, 8
    else:
        lo, hi = float(slices.min()), float(slices.max())
        integer = slices.dtype.kind in "iu" and hi - lo <= 65535
        scale = 1.0 if integer else (hi - lo) / 65535.0 or 1.0
        offset = lo
        quantised = np.rint((slices.astype(np.float64) - offset) / scale).astype(np.uint16)
        bits = 16
    written: list[Path] = []
    try:
        for index, plane in enumerate(quantised):
            written.append(write_image(Image(plane, format="png"), folder / f"slice_{index:04d}.png"))
    except BaseException:  # Ctrl-C or a write error: no half volume is left behind
        for path in written:
            path.unlink(missing_ok=True)
        raise
    meta = {
        "source": image.meta.get("source"),
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "affine": None if image.affine is None else image.affine.tolist(),
        "axis": axis,
        "label": label,
        "bits": bits,
        "scale": scale,
        "offset": offset,
        "restore": "value = png * scale + offset; slices stacked along axis",
    }
    written.append(_write_json(folder / "volume.json", meta))
    return written
