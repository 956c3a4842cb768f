"""Classic obfuscation filters: median, mean, max, min (irreversible), negative and shuffle.

They are the baselines the literature compares ciphers against. The four smoothing
filters throw information away (a k×k window over the first two axes, per channel or
slice), so nothing can undo them; ``negative`` (v → M−1−v) and the keyed global pixel
``shuffle`` are exactly reversible but hide little (the histogram survives both).
"""

from __future__ import annotations

import numpy as np

from medtools.imagecipher import IRREVERSIBLE_FILTERS as IRREVERSIBLE
from medtools.imagecipher import REVERSIBLE_FILTERS as REVERSIBLE
from medtools.imagecipher import derive

FILTERS = IRREVERSIBLE + REVERSIBLE


def _window(array: np.ndarray, size: int) -> tuple[int, ...]:
    if size < 1:
        raise ValueError(f"filter window must be >= 1, got {size}")
    return (size, size) + (1,) * (array.ndim - 2)


def smooth(array: np.ndarray, name: str, size: int = 5) -> np.ndarray:
    """Median/mean/max/min over a size×size window; the result keeps the input dtype."""
    from scipy import ndimage

    window = _window(array, size)
    if name == "median":
        return ndimage.median_filter(array, size=window, mode="reflect")
    if name == "max":
        return ndimage.maximum_filter(array, size=window, mode="reflect")
    if name == "min":
        return ndimage.minimum_filter(array, size=window, mode="reflect")
    if name == "mean":
        mean = ndimage.uniform_filter(array.astype(np.float64), size=window, mode="reflect")
        return np.rint(mean).astype(array.dtype) if array.dtype.kind in "iu" else mean.astype(array.dtype)
    raise ValueError(f"unknown filter {name!r} (choose from {', '.join(IRREVERSIBLE)})")


def negative(levels: np.ndarray, bits: int) -> np.ndarray:
    """v → 2^bits − 1 − v (its own inverse)."""
    return levels.dtype.type((1 << bits) - 1) - levels


def shuffle_permutation(key: bytes, shape: tuple[int, ...]) -> np.ndarray:
    positions = shape[0] * shape[1]
    return derive.permutation(key, f"shuffle/{shape[0]}x{shape[1]}", positions)


def shuffle(array: np.ndarray, key: bytes) -> np.ndarray:
    """Permute pixel positions (channels/slices move together) with a key-derived permutation."""
    perm = shuffle_permutation(key, array.shape)
    flat = array.reshape(array.shape[0] * array.shape[1], -1)
    return flat[perm].reshape(array.shape)


def unshuffle(array: np.ndarray, key: bytes) -> np.ndarray:
    perm = shuffle_permutation(key, array.shape)
    flat = array.reshape(array.shape[0] * array.shape[1], -1)
    out = np.empty_like(flat)
    out[perm] = flat
    return out.reshape(array.shape)
