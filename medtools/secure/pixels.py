"""Burned-in text in pixel data: find it with OCR, replace each text box by the background value
(or fill it from its surroundings).

The PS3.15 Clean Pixel Data option. Each frame is scaled to 8 bits (min..max; RGB: the
brightest channel) and handed to an OCR engine (``secure/ocr.py``: RapidOCR by default,
Tesseract as an option), which finds words in its white top-hat. Each box grows by the engine's
margin and is filled (``fill``) with the frame's background value: its most frequent value (per
channel), which is the black of the border on ultrasound and X-ray exports; or, with
``fill="inpaint"``, from the pixels around it by OpenCV's Telea inpainting (per frame and
channel, in the frame's dtype and range; pixels outside the boxes are not touched), so that a
model does not see black boxes where the text was. Known text regions of a device (a CSV of
boxes, optionally restricted to a Manufacturer/model/size) are filled whatever OCR finds.

Recall is what redaction needs; the recognised string only feeds the report (masked there).
Bright text (white, grey, coloured) is searched; dark text on a bright background is not.
Measured recall, precision and speed of both engines: docs/results.md.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

REGION_COLUMNS = ("x", "y", "width", "height")
REGION_MATCH = ("Manufacturer", "ManufacturerModelName", "Rows", "Columns")
FILLS = ("background", "inpaint")
INPAINT_RADIUS = 5  # px around each missing pixel that Telea's method averages


@dataclass(frozen=True)
class Box:
    """A text box in pixel coordinates of its frame: [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str = ""
    confidence: float = -1.0
    source: str = "ocr"  # ocr | region

    def grown(self, margin: int, shape: tuple[int, int], margin_y: int | None = None) -> Box:
        """The box with ``margin`` px left and right, ``margin_y`` (default: the same) up and down, within the frame."""
        h, w = shape
        my = margin if margin_y is None else margin_y
        return Box(max(0, self.x0 - margin), max(0, self.y0 - my), min(w, self.x1 + margin), min(h, self.y1 + my), self.text, self.confidence, self.source)

    def record(self, frame: int | None = None) -> dict[str, Any]:
        """The box for a report: coordinates and the masked string (never the string itself)."""
        out: dict[str, Any] = {"box": [self.x0, self.y0, self.x1, self.y1], "source": self.source}
        if frame is not None:
            out["frame"] = frame
        if self.source == "ocr" and self.confidence >= 0:  # detection alone has neither
            out["text"] = mask(self.text)
            out["confidence"] = round(self.confidence, 1)
        return out


def mask(text: str) -> str:
    """``DOE^JOHN`` → ``D*******``: the length and first character, nothing that identifies."""
    return text[:1] + "*" * max(0, len(text) - 1)


# ---------------------------------------------------------------- detection


def to_gray8(frame: np.ndarray) -> np.ndarray:
    """A 2-D (or H×W×C) frame as uint8 gray, min..max; colour: the brightest channel."""
    array = np.asarray(frame)
    if array.ndim == 3:
        array = array.max(axis=-1)
    array = array.astype(np.float32)
    lo, hi = float(array.min(initial=0)), float(array.max(initial=0))
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def find_text(frame: np.ndarray, *, engine: Any = None, read: bool = True) -> list[Box]:
    """Word boxes (not grown) of bright burned-in text in one frame (2-D, or H×W×C colour);
    ``read``: with the recognised text (RapidOCR detects without reading when False)."""
    from medtools.secure import ocr

    engine = engine or ocr.create()
    gray = to_gray8(frame)
    if gray.size == 0 or gray.max() == 0:
        return []
    return [Box(x0, y0, x1, y1, text, conf) for text, conf, x0, y0, x1, y1 in engine.words(gray, read=read) if x1 > x0 and y1 > y0]


# ---------------------------------------------------------------- known regions


@dataclass(frozen=True)
class Region:
    box: Box
    match: dict[str, str] = field(default_factory=dict)

    def applies(self, attributes: dict[str, str]) -> bool:
        return all(str(attributes.get(key, "")).strip() == value for key, value in self.match.items())


def read_regions(path: Path | str) -> list[Region]:
    """Known text regions of devices: CSV with x,y,width,height and optional Manufacturer,
    ManufacturerModelName, Rows, Columns (a region applies to a file whose values equal every
    non-empty one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --pixel-regions {path}: {exc}") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or any(column not in rows[0] for column in REGION_COLUMNS):
        raise UsageError(f"--pixel-regions {path}: a CSV with columns {','.join(REGION_COLUMNS)} (and optionally {','.join(REGION_MATCH)}) is expected")
    regions = []
    for number, row in enumerate(rows, start=2):
        try:
            x, y, w, h = (int(row[c]) for c in REGION_COLUMNS)
        except (TypeError, ValueError):
            raise UsageError(f"--pixel-regions {path} line {number}: x, y, width, height must be integers") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise UsageError(f"--pixel-regions {path} line {number}: a box needs x, y >= 0 and width, height > 0")
        match = {key: str(row[key]).strip() for key in REGION_MATCH if row.get(key) not in (None, "")}
        regions.append(Region(Box(x, y, x + w, y + h, source="region"), match))
    return regions


# ---------------------------------------------------------------- cleaning


def background_value(frame: np.ndarray) -> np.ndarray:
    """The most frequent value of a frame (per channel for colour)."""
    array = np.asarray(frame)
    flat = array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array.reshape(-1, 1)
    out = []
    for channel in flat.T:
        values, counts = np.unique(channel, return_counts=True)
        out.append(values[np.argmax(counts)])
    return np.asarray(out, dtype=array.dtype) if array.ndim == 3 else np.asarray(out[0], dtype=array.dtype)


def check_fill(fill: str | None) -> str:
    """The fill of the boxes (``FILLS``; None: background); inpainting needs OpenCV (cv2)."""
    fill = fill or "background"
    if fill not in FILLS:
        raise UsageError(f"--fill {fill}: one of {' | '.join(FILLS)}")
    if fill == "inpaint":
        import importlib.util

        if importlib.util.find_spec("cv2") is None:
            raise UsageError("--fill inpaint needs OpenCV: pip install 'medtools[deid]' (rapidocr-onnxruntime brings opencv-python)")
    return fill


def inpaint_frame(frame: np.ndarray, boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """One frame (H×W or H×W×C) with each box (x0, y0, x1, y1) filled from its surroundings by
    OpenCV's Telea inpainting, channel by channel in float32, then rounded and clipped back to
    the frame's dtype and min..max. Pixels outside the boxes are returned unchanged."""
    import cv2

    array = np.asarray(frame)
    holes = np.zeros(array.shape[:2], np.uint8)
    for x0, y0, x1, y1 in boxes:
        holes[y0:y1, x0:x1] = 1
    if not holes.any():
        return array.copy()
    if holes.all():  # nothing to fill from
        return np.full_like(array, background_value(array))
    channels = array[..., None] if array.ndim == 2 else array
    out = array.copy()
    inside = holes.astype(bool)
    for c in range(channels.shape[-1]):
        known = channels[..., c][~inside].astype(np.float64)
        known = known[np.isfinite(known)]
        lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 0.0)
        channel = np.nan_to_num(np.asarray(channels[..., c], dtype=np.float32), nan=lo, posinf=hi, neginf=lo)
        filled = np.clip(cv2.inpaint(channel, holes, INPAINT_RADIUS, cv2.INPAINT_TELEA), lo, hi)
        if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            filled = np.rint(filled)
        target = out if array.ndim == 2 else out[..., c]
        target[inside] = filled[inside].astype(array.dtype)
    return out


@dataclass
class PixelCleaner:
    """Clean Pixel Data settings of one run: the OCR engine (None: known regions only), known
    regions, how the boxes are filled (``FILLS``)."""

    engine: Any = None
    regions: Sequence[Region] = ()
    read: bool = False
    fill: str = "background"

    @classmethod
    def create(cls, *, regions: Path | str | None = None, ocr: str | None = None, use_ocr: bool = True, threads: int | None = None, read: bool = False, fill: str | None = None) -> PixelCleaner:
        """``ocr``: the engine name (``ocr.ENGINES``; default RapidOCR); an engine that is not
        installed is a UsageError naming what to install. ``threads``: per OCR call (RapidOCR).
        ``read``: recognise the text in each box as well (phi-scan's report needs it; cleaning
        only needs the boxes). ``fill``: background (default; the frame's most frequent value)
        or inpaint (from the surroundings, OpenCV Telea)."""
        from medtools.secure import ocr as engines

        fill = check_fill(fill)
        return cls(engine=engines.create(ocr, threads=threads) if use_ocr else None, regions=read_regions(regions) if regions is not None else (), read=read, fill=fill)

    def boxes(self, frames: Iterable[np.ndarray], attributes: dict[str, str] | None = None) -> list[tuple[int, Box]]:
        """(frame index, grown box) of every text box found (OCR) or known (regions)."""
        found: list[tuple[int, Box]] = []
        attributes = attributes or {}
        for index, frame in enumerate(frames):
            shape = frame.shape[:2]
            if self.engine is not None:
                for box in find_text(frame, engine=self.engine, read=self.read):
                    margin_x, margin_y = self.engine.margins(box.y1 - box.y0)
                    found.append((index, box.grown(margin_x, shape, margin_y)))
            found.extend((index, region.box.grown(0, shape)) for region in self.regions if region.applies({"Rows": str(shape[0]), "Columns": str(shape[1]), **attributes}))
        return found

    def clean_frames(self, frames: np.ndarray, attributes: dict[str, str] | None = None, *, union: bool = True) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Clean a stack of frames (N×H×W or N×H×W×C), returning a copy and the box records.

        ``union``: a box found in one frame is filled in every frame (burned-in text stays put
        while the anatomy moves, and OCR may miss it in some frames). Each frame is filled on
        its own (``fill``: background value, or inpainted from that frame's pixels)."""
        frames = np.asarray(frames)
        found = self.boxes(frames, attributes)
        out = frames.copy()
        targets = sorted({(box.x0, box.y0, box.x1, box.y1) for _, box in found}) if union else None
        for index in range(out.shape[0]):
            boxes = targets if union else [(b.x0, b.y0, b.x1, b.y1) for i, b in found if i == index]
            if not boxes:
                continue
            if self.fill == "inpaint":
                out[index] = inpaint_frame(out[index], boxes)
                continue
            fill = background_value(out[index])
            for x0, y0, x1, y1 in boxes:
                out[index, y0:y1, x0:x1] = fill
        return out, [box.record(index) for index, box in found]


def clean_image(array: np.ndarray, *, cleaner: PixelCleaner | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Clean one 2-D image (H×W or H×W×C): (cleaned copy, box records)."""
    cleaner = cleaner or PixelCleaner.create()
    array = np.asarray(array)
    cleaned, records = cleaner.clean_frames(array[None], union=False)
    for record in records:
        record.pop("frame", None)
    return cleaned[0], records


# ---------------------------------------------------------------- per format


def dicom_frames(ds: Any) -> tuple[np.ndarray, bool]:
    """The pixel data of a Dataset as N×H×W(×C) and whether it has colour samples; the
    dataset is decompressed in place (written back as Explicit VR Little Endian)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:  # noqa: BLE001 - no handler for this syntax
            raise InputError(f"cannot decode the compressed pixel data ({ds.file_meta.TransferSyntaxUID.name}): {exc}") from None
    array = ds.pixel_array
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        array = array[None]
    colour = samples > 1
    if colour and str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        from pydicom.pixels import convert_color_space

        array = np.stack([convert_color_space(f, str(ds.PhotometricInterpretation), "RGB") for f in array])
        ds.PhotometricInterpretation = "RGB"
    return array, colour


def clean_dicom_pixels(ds: Any, cleaner: PixelCleaner) -> list[dict[str, Any]]:
    """Clean the pixel data of a pydicom Dataset in place; BurnedInAnnotation becomes NO."""
    if "PixelData" not in ds:
        return []
    frames, colour = dicom_frames(ds)
    attributes = {key: str(ds.get(key, "") or "") for key in REGION_MATCH}
    cleaned, records = cleaner.clean_frames(frames, attributes)
    if colour:
        ds.PlanarConfiguration = 0  # pixel_array is H×W×C: samples interleaved
    data = cleaned.astype(frames.dtype, copy=False).tobytes()
    ds.PixelData = data + (b"\x00" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    ds.BurnedInAnnotation = "NO"
    return records


def volume_slices(array: np.ndarray) -> np.ndarray:
    """NIfTI (x, y, z, ...) as slices in display order: N × rows (y, top first) × columns (x)."""
    if array.ndim < 2:
        raise InputError(f"a volume of shape {array.shape} has no slices")
    flat = array.reshape(array.shape[0], array.shape[1], -1)
    return np.flip(np.transpose(flat, (2, 1, 0)), axis=1)  # RAS: y grows upward on screen


def volume_from_slices(slices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.transpose(np.flip(slices, axis=1), (2, 1, 0)).reshape(shape)


def clean_volume(array: np.ndarray, cleaner: PixelCleaner) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Clean each 2-D slice of a NIfTI volume (boxes per slice; the frame index is the slice)."""
    slices = volume_slices(np.asarray(array))
    cleaned, records = cleaner.clean_frames(slices, union=False)
    return volume_from_slices(cleaned, array.shape), records
