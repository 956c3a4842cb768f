"""PNG/JPEG/TIFF read/write through Pillow, keeping bit depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError
from medtools.core.io.formats import Image


def read_raster(path: Path, fmt: str) -> Image:
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


def write_raster(image: Image, tmp: Path, fmt: str) -> None:
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
