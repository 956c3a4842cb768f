"""The one preprocessing path, shared by training and inference.

A checkpoint's ``medtools.norm`` (docs/formats.md, "medtools.norm") says how raw pixels
became model input; training writes it, :class:`medtools.core.predict.Predictor` reads it
back through :func:`canonical_norm`, so both sides run these same functions:

1. **intensity** (:func:`normalise`) per volume and channel, to [0, 1]:
   ``percentile`` (window [p_low, p_high] of the non-background voxels, clipped),
   ``minmax`` (= percentile 0–100), ``unit`` (divide by the bit depth's maximum: 255 for
   8-bit, 65535 for 16-bit, min–max for float images), ``none``;
2. **size** (:func:`resize`): bilinear with antialiasing for images (so shrinking a 240²
   slice to 128² averages instead of aliasing, in training and inference alike), nearest
   for label maps;
3. **model range** (:func:`to_model_range`): [0, 1] mapped to ``model_range`` (the DDPM
   works in [−1, 1]) and then ``(x − mean) / std`` when the norm has them.

Before all of these, volumes are mapped into the training geometry when the norm records one
(``geometry``: orientation codes, spacing, slicing axis; :func:`model_grid` and
``core.io.geometry``), and predictions are mapped back to the input's grid.

Optional steps after the intensity step, per volume or image (recorded as keys of the norm,
so every reader applies them identically): ``strip_background`` (:func:`strip_background`:
threshold, largest connected component, holes filled; outside set to 0) and ``equalize``
(:func:`equalize`: ``hist`` global histogram equalisation, ``clahe`` contrast-limited adaptive,
per 2-D slice; scikit-image).

Older checkpoints wrote ``{}`` (percentile 0.5/99.5), or ``mean``/``std`` without a
method; :func:`canonical_norm` maps every form seen so far onto the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import CheckpointError, InputError

NORM_SCHEMA = 1
METHODS = ("percentile", "minmax", "unit", "none")
PERCENTILE_NORM = {"method": "percentile", "low": 0.5, "high": 99.5}
UNIT_NORM = {"method": "unit"}
DEFAULT_NORM = PERCENTILE_NORM  # what every brain checkpoint before the schema used
EQUALIZE = ("hist", "clahe")


def canonical_norm(norm: dict[str, Any] | None, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """Any recorded ``medtools.norm`` → the schema: method, low, high, model_range, mean, std."""
    norm = dict(norm or {})
    if not norm or set(norm) <= {"schema"}:
        norm = dict(default or DEFAULT_NORM)
    method = norm.get("method", "percentile" if ("low" in norm or "high" in norm) else "unit" if ("mean" in norm or "model_range" in norm) else "percentile")
    if method not in METHODS:
        raise CheckpointError(f"unknown normalisation method {method!r} in medtools.norm (known: {', '.join(METHODS)})")
    out: dict[str, Any] = {"schema": NORM_SCHEMA, "method": method}
    if method == "percentile":
        out["low"], out["high"] = float(norm.get("low", 0.5)), float(norm.get("high", 99.5))
    if "model_range" in norm:
        lo, hi = (float(v) for v in norm["model_range"])
        out["model_range"] = [lo, hi]
    if "mean" in norm or "std" in norm:
        out["mean"], out["std"] = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
        if out["std"] <= 0:
            raise CheckpointError(f"medtools.norm std must be positive, got {out['std']}")
    if norm.get("strip_background") not in (None, False):
        out["strip_background"] = 0.05 if norm["strip_background"] is True else float(norm["strip_background"])
    if norm.get("equalize"):
        if norm["equalize"] not in EQUALIZE:
            raise CheckpointError(f"unknown equalize {norm['equalize']!r} in medtools.norm (known: {', '.join(EQUALIZE)})")
        out["equalize"] = norm["equalize"]
    if norm.get("geometry"):
        from medtools.core.io.geometry import check_geometry

        out["geometry"] = check_geometry(norm["geometry"])
    return out


def with_preprocessing(norm: dict[str, Any], *, strip_background: bool | float = False, equalize: str | None = None) -> dict[str, Any]:
    """``norm`` plus the optional steps (CLI ``--strip-background``, ``--equalize``), canonical."""
    if equalize is not None and equalize not in EQUALIZE:
        raise InputError(f"--equalize must be one of {', '.join(EQUALIZE)}, got {equalize!r}")
    out = dict(norm)
    if strip_background:
        out["strip_background"] = strip_background
    if equalize:
        out["equalize"] = equalize
    return canonical_norm(out)


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (scipy.ndimage); the mask itself
    when it has at most one (``strip_background`` here, ``segment --largest-component``)."""
    from scipy import ndimage

    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def strip_background(x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """[0, 1] image or volume → the same with everything outside the object set to 0: pixels
    above ``threshold``, their largest connected component, holes filled (scipy.ndimage)."""
    from scipy import ndimage

    mask = x > threshold
    if not mask.any():
        return x
    mask = ndimage.binary_fill_holes(largest_component_mask(mask))
    return np.where(mask, x, 0.0).astype(np.float32)


def equalize(x: np.ndarray, method: str) -> np.ndarray:
    """[0, 1] image (H, W) or volume (x, y, z) → equalised [0, 1] float32 (scikit-image):
    ``hist`` over the whole array, ``clahe`` per 2-D slice (last axis of a volume)."""
    from skimage import exposure

    x = np.clip(x.astype(np.float64), 0.0, 1.0)
    if method == "hist":
        return exposure.equalize_hist(x, nbins=256).astype(np.float32)
    if method == "clahe":
        if x.ndim == 2:
            return exposure.equalize_adapthist(x, clip_limit=0.01).astype(np.float32)
        return np.stack([exposure.equalize_adapthist(x[..., k], clip_limit=0.01) for k in range(x.shape[-1])], axis=-1).astype(np.float32)
    raise InputError(f"unknown equalize method {method!r}; choose from {', '.join(EQUALIZE)}")


def apply_optional_steps(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """The norm's optional steps (background stripping, then equalisation) on a [0, 1] array."""
    if norm.get("strip_background") not in (None, False):
        x = strip_background(x, float(norm["strip_background"]))
    if norm.get("equalize"):
        x = equalize(x, norm["equalize"])
        if norm.get("strip_background") not in (None, False):
            x = np.where(x > 0, x, 0.0).astype(np.float32)
    return x


def normalise_intensity(volume: np.ndarray, *, low: float = 0.5, high: float = 99.5, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Percentile window → [0, 1] float32; returns the window so it can be undone exactly.

    The percentiles are taken over the voxels above the volume's minimum (the background of
    a skull-stripped MRI is its minimum) unless ``mask`` says which voxels count.
    """
    values = volume[mask] if mask is not None and mask.any() else volume[volume != volume.min()] if (volume != volume.min()).any() else volume
    lo = float(np.percentile(values, low))
    hi = float(np.percentile(values, high))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((volume.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return out, {"low": lo, "high": hi}


def normalise(array: np.ndarray, norm: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
    """Step 1 for one volume or image channel (any shape) → ([0, 1] float32, window used).

    The window is in raw units: ``raw = low + x · (high − low)`` undoes it (before the
    optional steps, which are applied here too).
    """
    out, window = _normalise(array, norm)
    return apply_optional_steps(out, norm), window


def _normalise(array: np.ndarray, norm: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
    method = norm.get("method", "percentile")
    if method == "percentile":
        return normalise_intensity(array, low=float(norm.get("low", 0.5)), high=float(norm.get("high", 99.5)))
    if method == "minmax":
        return normalise_intensity(array, low=0.0, high=100.0)
    if method == "unit":
        if array.dtype == np.uint8:
            return array.astype(np.float32) / 255.0, {"low": 0.0, "high": 255.0}
        if array.dtype == np.uint16:
            return array.astype(np.float32) / 65535.0, {"low": 0.0, "high": 65535.0}
        return normalise_intensity(array.astype(np.float32), low=0.0, high=100.0)
    if method == "none":
        return array.astype(np.float32), {"low": 0.0, "high": 1.0}
    raise CheckpointError(f"unknown normalisation method {method!r}")


def resize(array: Any, size: int | tuple[int, int] | None, *, labels: bool = False) -> Any:
    """Step 2: (N, C, H, W) or (N, H, W) → size (bilinear + antialias for images, nearest for labels).

    Takes numpy arrays (returns numpy) or torch tensors (returns tensors, differentiable, on
    their device). ``size`` None or equal to the current size returns the input unchanged.
    """
    if size is None:
        return array
    target = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if tuple(array.shape[-2:]) == target:
        return array
    import torch
    import torch.nn.functional as F

    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
    squeeze = tensor.ndim == 3
    if squeeze:
        tensor = tensor[:, None]
    if labels:
        out = F.interpolate(tensor.float(), size=target, mode="nearest").to(tensor.dtype)
    else:
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
        out = F.interpolate(tensor.to(dtype), size=target, mode="bilinear", align_corners=False, antialias=True)
    out = out[:, 0] if squeeze else out
    return out.numpy() if is_numpy else out


def to_model_range(x: Any, norm: dict[str, Any]) -> Any:
    """Step 3: [0, 1] → the range the network was trained on (tensor or array)."""
    if "model_range" in norm:
        lo, hi = norm["model_range"]
        x = x * (hi - lo) + lo
    if "mean" in norm:
        x = (x - norm["mean"]) / norm["std"]
    return x


def from_model_range(x: Any, norm: dict[str, Any]) -> Any:
    """Inverse of :func:`to_model_range` (generated images back to [0, 1])."""
    if "mean" in norm:
        x = x * norm["std"] + norm["mean"]
    if "model_range" in norm:
        lo, hi = norm["model_range"]
        x = (x - lo) / (hi - lo)
    return x


def volume_to_slices(volume: np.ndarray, axis: int = 2) -> np.ndarray:
    """(x, y, z) → (z, x, y) slices along ``axis``."""
    return np.moveaxis(volume, axis, 0)


def stack_context(slices: np.ndarray, context: int) -> np.ndarray:
    """2.5-D input: (Z, C, H, W) slices of one volume → (Z, C·(2K+1), H, W), each slice with
    its K neighbours on either side as extra channels (order: offsets −K … +K, channels within
    each); the first and last slices repeat at the volume's ends."""
    if not context:
        return slices
    z = len(slices)
    index = np.clip(np.arange(z)[:, None] + np.arange(-context, context + 1)[None, :], 0, z - 1)
    stacked = slices[index]  # (Z, 2K+1, C, H, W)
    return stacked.reshape(z, -1, *slices.shape[2:])


def slices_to_volume(slices: np.ndarray, axis: int = 2) -> np.ndarray:
    return np.moveaxis(slices, 0, axis)


def image_channels(image: Any, channels: int, norm: dict[str, Any]) -> np.ndarray:
    """A read 2-D image (core.io.Image) → (channels, H, W) float32 in [0, 1] by ``norm``.

    RGB(A) is averaged to gray for one channel; gray is repeated for three; a volume gives its
    middle slice, taken in the training geometry the norm records (``model_grid``: reoriented,
    resampled in-plane), so the same scan in another storage order gives the same slice; a 4-D
    series is an InputError naming its shape.
    """
    array = image.array
    volume = image.format in ("nifti", "dicom-series") and array.ndim >= 3
    if volume:
        from medtools.core.data import image_volume

        array = image_volume(image)
        grid = model_grid(image, array.shape, norm)
        array = grid.to_model(array) if grid is not None else array
    if not volume and array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if channels == 3:
            normed, _ = normalise(rgb, norm)
            return np.moveaxis(normed, -1, 0).astype(np.float32)
        gray = rgb.astype(np.float32).mean(axis=-1)
        if rgb.dtype in (np.uint8, np.uint16) and norm.get("method") == "unit":
            gray = gray / (255.0 if rgb.dtype == np.uint8 else 65535.0)
            normed = apply_optional_steps(gray, norm)
        else:
            normed, _ = normalise(gray, norm)
    else:
        if array.ndim == 3:
            array = array[:, :, array.shape[2] // 2]
        normed, _ = normalise(array, norm)
    normed = normed.astype(np.float32)[None]
    return np.repeat(normed, channels, axis=0) if channels > 1 else normed


def load_image(path: Any, size: int | None = None, channels: int = 1, norm: dict[str, Any] | None = None) -> np.ndarray:
    """A 2-D image (a file, or an in-memory ``Image``) → (channels, size, size) float32 in [0, 1]
    (``unit`` norm by default)."""
    from medtools.core.io import Image, read_image

    if isinstance(path, Image):
        image = path
    else:
        try:
            image = read_image(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from None
    out = image_channels(image, channels, norm or UNIT_NORM)
    return resize(out[None], size)[0].astype(np.float32)


def model_grid(image: Any, shape: tuple[int, ...], norm: dict[str, Any], *, resample: bool = True) -> Any:
    """Step 0 for volumes: the :class:`medtools.core.io.geometry.GridMap` of an image (its
    ``(x, y, z)`` array ``shape``) into the training geometry the norm records (orientation,
    in-plane spacing, slicing axis), or None when the norm records none (checkpoints from
    before it: slices along the array's last axis as stored), the image has no affine (pictures,
    arrays) or it already lies in that geometry."""
    geometry = norm.get("geometry")
    if not geometry or getattr(image, "affine", None) is None or image.format not in ("nifti", "dicom-series", "dicom"):
        return None
    from medtools.core.io.geometry import GridMap

    grid = GridMap.build(shape[:3], image.affine, geometry, resample=resample)
    return None if grid.identity else grid


def volumes_to_slices(volumes: list[np.ndarray], norm: dict[str, Any], *, axis: int = 2) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The modality volumes (x, y, z) of one case → slices (Z, C, H, W) float32 in [0, 1] and
    the per-channel windows (raw units). Training and inference load cases through this."""
    channels, windows = [], []
    for volume in volumes:
        normed, window = normalise(np.asarray(volume, dtype=np.float32), norm)
        channels.append(volume_to_slices(normed, axis))
        windows.append(window)
    return np.stack(channels, axis=1).astype(np.float32), windows


def denormalise_intensity(normed: np.ndarray, window: dict[str, float]) -> np.ndarray:
    """Undo :func:`normalise` with the window it returned (raw units)."""
    return normed * (window["high"] - window["low"]) + window["low"]
