"""DICOM UIDs of derived objects: reproducible 2.25.<hash> UIDs for changed pixels."""

from __future__ import annotations

import hashlib
from typing import Any


def derived_uid(*parts: bytes) -> str:
    """A 2.25 UID (PS3.5 B.2) from a SHA-256 of the parts: the same parts give the same UID."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(b"medtools-derived:" + b":".join(parts)).digest()[:16], "big"))


def mark_derived(ds: Any, pixels: bytes) -> None:
    """Changed pixels make a new object: a PACS must never see two different images under one
    SOPInstanceUID. New UIDs are derived (2.25.<hash>) from the source UID and the new pixels, so a
    rerun reproduces them and all files of one source series land in one new series."""
    if "SOPInstanceUID" in ds:
        ds.SOPInstanceUID = derived_uid(str(ds.SOPInstanceUID).encode(), hashlib.sha256(pixels).digest())
        if "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SeriesInstanceUID" in ds:
        ds.SeriesInstanceUID = derived_uid(str(ds.SeriesInstanceUID).encode())
    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    image_type[0] = "DERIVED"
    ds.ImageType = image_type
