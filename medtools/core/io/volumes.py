"""Helpers for volumes."""

from __future__ import annotations

from typing import Any

from medtools.core.io.formats import Image


def as_volume(image: Image) -> Any:
    """The image as (x, y, z): 2-D images become one slice."""
    array = image.array
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 4 and array.shape[-1] == 1:
        return array[..., 0]
    return array
