"""Voxel grids: orientation codes, reorientation, in-plane resampling, and the exact way back.

A slice model learns anatomy as it lay in its training volumes: in one orientation (axis codes
such as ``LPS`` or ``RAS``, where each array axis points in the world; nibabel's
``aff2axcodes``) and at one spacing. nnU-Net keeps this as plans (``transpose_forward``,
``spacing``); TotalSegmentator reorients to the closest canonical orientation, resamples,
and maps the result back to the input's grid. Here the training geometry is a small dict
(``medtools.norm``'s ``geometry``: orientation, spacing in that orientation, slicing axis)
and :class:`GridMap` maps one input volume into it and any prediction back:

1. reorient with nibabel's orientation tools (``io_orientation`` → ``ornt_transform`` →
   ``apply_orientation``): a permutation and flips of the array, exact and lossless;
2. resample the two in-plane axes to the training spacing (scikit-image ``resize``:
   linear with antialiasing for images, nearest for label maps); the slicing axis is kept,
   as the model sees one slice at a time;
3. back: resample in-plane to the reoriented shape (linear for probabilities, nearest for
   labels), then the inverse orientation transform, so the result has the input's shape and
   lies on the input's affine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medtools.core.errors import CheckpointError

AXCODES = {"L", "R", "A", "P", "S", "I"}
SPACING_TOLERANCE = 1e-3  # relative: closer than this to the training spacing is not resampled


def axcodes(affine: np.ndarray) -> str:
    """The affine's closest axis codes, e.g. ``'LPS'`` (nibabel ``aff2axcodes``)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Spacing of the three array axes (column norms of the affine's 3×3 part)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_geometry(geometry: Any, where: str = "medtools.norm") -> dict[str, Any]:
    """A recorded geometry in its canonical form; CheckpointError naming what is wrong."""
    if not isinstance(geometry, dict):
        raise CheckpointError(f"{where}: geometry must be an object, got {geometry!r}")
    codes = str(geometry.get("orientation", ""))
    if len(codes) != 3 or not set(codes) <= AXCODES or len({c for c in codes.translate(str.maketrans("LRAPSI", "xxyyzz"))}) != 3:
        raise CheckpointError(f"{where}: geometry orientation must be three axis codes such as RAS or LPS, got {codes!r}")
    spacing = geometry.get("spacing")
    try:
        spacing = [float(v) for v in spacing]
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: geometry spacing must be three numbers, got {spacing!r}") from None
    if len(spacing) != 3 or min(spacing) <= 0:
        raise CheckpointError(f"{where}: geometry spacing must be three positive numbers, got {spacing!r}")
    axis = int(geometry.get("axis", 2))
    if axis != 2:
        raise CheckpointError(f"{where}: geometry axis must be 2 (slices along the last axis of the training orientation), got {axis}")
    return {"orientation": codes, "spacing": spacing, "axis": axis}


def describe(geometry: dict[str, Any]) -> str:
    """``LPS, 0.94×0.94×5 mm, slices along axis 2 (S)``."""
    sizes = "×".join(f"{v:g}" for v in geometry["spacing"])
    return f"{geometry['orientation']}, {sizes} mm, slices along axis {geometry['axis']} ({geometry['orientation'][geometry['axis']]})"


def file_geometry(path: Path | str) -> tuple[str, np.ndarray] | None:
    """(axis codes, spacing) of a volume file from its header alone (NIfTI), or from the read
    image (other formats); None for pictures and arrays without an affine."""
    from medtools.core.io.formats import NIFTI_EXTS

    if str(path).lower().endswith(NIFTI_EXTS):
        import nibabel as nib

        affine = nib.load(str(path)).affine
    else:
        from medtools.core.io.images import read_image

        image = read_image(path)
        if image.affine is None or not image.is_volume:
            return None
        affine = image.affine
    return axcodes(affine), voxel_sizes(affine)


def training_geometry(records: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any] | None:
    """The geometry of a training set from its volumes' (axis codes, spacing): the most common
    orientation (ties: the first seen), the median spacing per axis in that orientation, slices
    along its last axis. None when no volume has an affine."""
    if not records:
        return None
    counts = Counter(codes for codes, _ in records)
    target = max(counts, key=lambda c: (counts[c], -[codes for codes, _ in records].index(c)))
    spacings = [reoriented_spacing(codes, spacing, target) for codes, spacing in records]
    median = np.median(np.stack(spacings), axis=0)
    return {"orientation": target, "spacing": [round(float(v), 6) for v in median], "axis": 2}


def _transform(codes: str, target: str) -> np.ndarray:
    import nibabel.orientations as nio

    return nio.ornt_transform(nio.axcodes2ornt(tuple(codes)), nio.axcodes2ornt(tuple(target)))


def reoriented_spacing(codes: str, spacing: np.ndarray, target: str) -> np.ndarray:
    """A volume's spacing listed in the axis order of the ``target`` orientation."""
    transform = _transform(codes, target)
    out = np.zeros(3)
    for source_axis, (target_axis, _) in enumerate(transform):
        out[int(target_axis)] = spacing[source_axis]
    return out


@dataclass
class GridMap:
    """How one input volume lies in a model's training geometry, and the way back.

    ``shape`` is the input's (x, y, z) shape, ``transform`` the nibabel orientation transform
    from the input's axes to the training orientation, ``oriented`` the shape after it and
    ``model`` the shape after in-plane resampling (what the slices are cut from).
    """

    shape: tuple[int, int, int]
    transform: np.ndarray
    oriented: tuple[int, int, int]
    model: tuple[int, int, int]
    inverse: np.ndarray  # orientation transform from the training orientation back to the input's axes
    source: str  # the input's axis codes, for messages

    @classmethod
    def build(cls, shape: Sequence[int], affine: np.ndarray, geometry: dict[str, Any], *, resample: bool = True) -> "GridMap":
        """The map of an (x, y, z) array with ``affine`` into ``geometry`` (see the module docstring)."""
        import nibabel.orientations as nio

        shape = tuple(int(n) for n in shape)
        affine = np.asarray(affine, dtype=np.float64)
        transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(geometry["orientation"])))
        oriented = [0, 0, 0]
        for source_axis, (target_axis, _) in enumerate(transform):
            oriented[int(target_axis)] = shape[source_axis]
        model = list(oriented)
        if resample:
            spacing = reoriented_spacing(axcodes(affine), voxel_sizes(affine), geometry["orientation"])
            for axis in range(3):
                if axis == int(geometry["axis"]):
                    continue
                ratio = spacing[axis] / float(geometry["spacing"][axis])
                if abs(ratio - 1.0) > SPACING_TOLERANCE:
                    model[axis] = max(1, int(round(oriented[axis] * ratio)))
        inverse = nio.ornt_transform(nio.axcodes2ornt(tuple(geometry["orientation"])), nio.io_orientation(affine))
        return cls(shape, transform, tuple(oriented), tuple(model), inverse, axcodes(affine))

    @property
    def identity(self) -> bool:
        return self.oriented == self.model and bool((self.transform == [[0, 1], [1, 1], [2, 1]]).all())

    def to_model(self, array: np.ndarray, *, labels: bool = False) -> np.ndarray:
        """An (x, y, z) array on the input grid → the model grid (float32, or the labels' dtype)."""
        import nibabel.orientations as nio

        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape} is not the mapped shape {self.shape}")
        out = np.asarray(nio.apply_orientation(array, self.transform))
        return _resize(out, self.model, order=0 if labels else 1, antialias=not labels)

    def from_model(self, array: np.ndarray, *, labels: bool = False) -> np.ndarray:
        """An array on the model grid (x, y, z, optional trailing axes such as classes) → the
        input's grid: in-plane resampling (nearest for ``labels``, linear otherwise), then the
        inverse orientation. The result has the input's (x, y, z) shape."""
        import nibabel.orientations as nio

        if tuple(array.shape[:3]) != self.model:
            raise ValueError(f"array shape {array.shape} is not the model grid {self.model}")
        out = _resize(array, self.oriented, order=0 if labels else 1, antialias=False)
        out = np.asarray(nio.apply_orientation(out, self.inverse))
        if tuple(out.shape[:3]) != self.shape:  # pragma: no cover - the transforms are exact inverses
            raise ValueError(f"mapped back to {out.shape}, expected {self.shape}")
        return np.ascontiguousarray(out)


def _resize(array: np.ndarray, shape: Sequence[int], *, order: int, antialias: bool) -> np.ndarray:
    """The first three axes of ``array`` resized to ``shape`` (scikit-image); unchanged when equal."""
    if tuple(array.shape[:3]) == tuple(shape):
        return array
    from skimage.transform import resize

    target = (*shape, *array.shape[3:])
    dtype = array.dtype
    out = resize(array.astype(np.float32) if order else array, target, order=order, mode="edge", anti_aliasing=antialias and order > 0, preserve_range=True)
    return out.astype(dtype if order == 0 else np.float32)
