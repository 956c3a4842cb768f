"""Non-finite voxels (NaN, ±Inf): an input error unless a policy says how to replace them.

A NaN in a volume poisons percentile windows and softmaxes: an all-zero segmentation, an
all-NaN protected modality, blank PNGs. So reading refuses such data by default (one line
naming the file and the count) and ``--nan-policy zero|clip`` replaces the values instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtools.core.context import NAN_POLICIES
from medtools.core.errors import InputError
KEEP = "keep"  # internal: read as stored (``info`` counts, never fails)


def nan_policy() -> str:
    """The policy of ``read_image`` in the current run context (--nan-policy)."""
    from medtools.core.context import current

    return current().nan_policy


def check_policy(policy: str) -> str:
    from medtools.core.context import check_nan_policy

    return check_nan_policy(policy)


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN/±Inf values (0 for integer data, without scanning it)."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_finite(array: np.ndarray, path: Path | str, policy: str | None = None) -> np.ndarray:
    """``array`` unchanged when finite; else by ``policy`` (default: the run context's):

    error: InputError "<path>: N non-finite voxels (NaN/Inf) of M"; zero: NaN and ±Inf
    become 0; clip: ±Inf become the largest/smallest finite value, NaN the smallest.
    """
    policy = check_policy(policy or nan_policy())
    if policy == KEEP:
        return array
    bad = count_nonfinite(array)
    if not bad:
        return array
    if policy == "error":
        raise InputError(f"{path}: {bad} non-finite voxels (NaN/Inf) of {np.asarray(array).size}; --nan-policy zero|clip replaces them")
    array = np.array(array, copy=True)
    finite = np.isfinite(array)
    if policy == "zero" or not finite.any():
        return np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = array[finite].min(), array[finite].max()
    return np.nan_to_num(array, nan=low, posinf=high, neginf=low)
