"""Image-domain methods on image files: grey levels in, a viewable image of the same size out.

The methods work on unsigned grey levels < 2^bits. Here an image read by core.io is
turned into such levels and back, exactly: 8- and 16-bit PNG/TIFF, integer NPY/NPZ and
NIfTI (signed types are offset by 2^(bits−1)), and DICOM within its BitsStored (signed
when PixelRepresentation is 1). JPEG inputs are written as PNG, since a lossy format would
make decryption impossible. Float images have no grey levels: only the smoothing filters
take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.imagecipher import CIPHERS, IMAGE_METHODS, REVERSIBLE_FILTERS, block, chaos, filters
from medtools.imagecipher import IRREVERSIBLE_FILTERS as IRREVERSIBLE

REVERSIBLE = CIPHERS + REVERSIBLE_FILTERS
KEYED = ("logistic-sine", "block", "shuffle")


@dataclass
class Levels:
    """Unsigned grey levels of an image and the way back to its own dtype."""

    levels: np.ndarray
    bits: int
    offset: int
    dtype: np.dtype

    def restore(self, levels: np.ndarray) -> np.ndarray:
        if self.offset:
            return (levels.astype(np.int64) - self.offset).astype(self.dtype)
        return levels.astype(self.dtype)


def to_levels(array: np.ndarray, *, bits: int | None = None, signed: bool | None = None) -> Levels:
    """Map an integer image onto 0..2^bits−1 exactly (bits default: the dtype's width)."""
    if array.dtype.kind not in "iub":
        raise InputError(f"{array.dtype} images have no grey levels: this method needs an 8- or 16-bit integer image")
    if array.dtype.itemsize > 2:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low >= 0 and high < 65536:
            array = array.astype(np.uint16)  # e.g. 16-bit PNG read as int32
        else:
            raise InputError(f"{array.dtype} values {low}..{high} do not fit in 16 bits")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    width = 8 * array.dtype.itemsize
    bits = width if bits is None else bits
    signed = array.dtype.kind == "i" if signed is None else signed
    offset = 1 << (bits - 1) if signed else 0
    shifted = array.astype(np.int64) + offset
    if shifted.size and (shifted.min() < 0 or shifted.max() >= (1 << bits)):
        raise InputError(f"pixel values {int(array.min())}..{int(array.max())} do not fit in {bits} {'signed' if signed else 'unsigned'} bits")
    levels = shifted.astype(np.uint8 if bits <= 8 else np.uint16)
    return Levels(levels, bits, offset, array.dtype)


def image_levels(image) -> Levels:
    """Levels of a core.io Image; DICOM uses BitsStored and PixelRepresentation."""
    if image.format == "dicom":
        ds = image.meta["dataset"]
        return to_levels(np.asarray(image.array), bits=int(ds.BitsStored), signed=int(getattr(ds, "PixelRepresentation", 0)) == 1)
    return to_levels(np.asarray(image.array))


def check_method(method: str, key: bytes | None, *, decrypting: bool = False) -> None:
    if method not in IMAGE_METHODS:
        raise UsageError(f"unknown method {method!r}; choose from aes-gcm, {', '.join(IMAGE_METHODS)}")
    if decrypting and method in IRREVERSIBLE:
        raise UsageError(f"{method} is an irreversible filter: it discards information, so there is nothing to decrypt")
    if method in KEYED and key is None:
        raise UsageError(f"--method {method} needs --key FILE (a 256-bit key: `medtools keys gen-key FILE`)")


def apply(
    levels: np.ndarray,
    bits: int,
    method: str,
    *,
    key: bytes | None = None,
    block_size: int = 16,
    window: int = 5,
    decrypt: bool = False,
    volume: bool = False,
) -> np.ndarray:
    """Apply (or undo) one method to unsigned grey levels < 2^bits; same shape and dtype out."""
    check_method(method, key, decrypting=decrypt)
    if method in IRREVERSIBLE:
        return filters.smooth(levels, method, window)
    if method == "negative":
        return filters.negative(levels, bits)
    if method == "shuffle":
        if levels.ndim < 2:
            raise InputError("shuffle needs a 2-D image or a volume")
        return (filters.unshuffle if decrypt else filters.shuffle)(levels, key)  # type: ignore[arg-type]
    if method == "logistic-sine":
        return (chaos.decrypt if decrypt else chaos.encrypt)(levels, key, bits)  # type: ignore[arg-type]
    if volume:
        raise InputError("block encryption works on 2-D images; cut volumes into slices first (medtools convert --to png)")
    if block_size < 1:
        raise UsageError(f"--block-size must be at least 1, got {block_size}")
    try:
        return (block.decrypt if decrypt else block.encrypt)(levels, key, bits, block_size)  # type: ignore[arg-type]
    except ValueError as exc:  # this image's shape: one item's error, the other images go on
        raise InputError(str(exc)) from None


def transform(image_or_array, method: str, *, key: bytes | None = None, block_size: int = 16, window: int = 5, decrypt: bool = False) -> np.ndarray:
    """Apply (or undo) one method to a core.io Image or an array; returns the same dtype."""
    array = np.asarray(getattr(image_or_array, "array", image_or_array))
    if method in IRREVERSIBLE and array.dtype.kind == "f":
        check_method(method, key, decrypting=decrypt)
        return filters.smooth(array, method, window)
    levels = image_levels(image_or_array) if hasattr(image_or_array, "array") else to_levels(array)
    volume = bool(getattr(image_or_array, "is_volume", False))
    out = apply(levels.levels, levels.bits, method, key=key, block_size=block_size, window=window, decrypt=decrypt, volume=volume)
    return levels.restore(out)


def output_extension(path: Path) -> str:
    """Lossless extension for the output: JPEG becomes PNG, everything else keeps its own."""
    from medtools.core.io import split_ext

    ext = split_ext(path)[1]
    return ".png" if ext.lower() in (".jpg", ".jpeg") else ext


def process_file(source: Path, target: Path, method: str, *, key: bytes | None, block_size: int, window: int, decrypt: bool) -> Path:
    """Read an image, apply the method, write it atomically in a lossless format."""
    from medtools.core.io import read_image, write_image

    image = read_image(source)
    out = transform(image, method, key=key, block_size=block_size, window=window, decrypt=decrypt)
    return write_image(image.with_array(out), target)
