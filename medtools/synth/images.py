"""2-D image sets for synthesis, FID and MIA: paths with patient ids, loaded to a fixed size.

Patient identity comes from ``core.manifest`` (a manifest CSV, class folders with a
``manifest.csv`` or the file-name rules), or from ``--patient-regex`` applied to the file
name. A flat folder of files the manifest rules do not know (e.g. generated samples) gives
one "patient" per file stem.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.io import DICOM_EXTS, RASTER_EXTS, split_ext

IMAGE_2D_EXTS = RASTER_EXTS + DICOM_EXTS


@dataclass(frozen=True)
class ImageRef:
    path: Path
    patient: str
    label: str | None = None  # the class, when asked for (--label COLUMN / --classes-from DIR)


def _from_manifest(source: str, label: str | None = None) -> list[ImageRef]:
    from medtools.core.manifest import load_rows

    rows = load_rows(source)
    return [ImageRef(Path(r["image"]), r["patient"], r.get(label) if label else None) for r in rows if r.get("image")]


def _from_files(source: str) -> list[ImageRef]:
    from medtools.core.inputs import expand_inputs
    from medtools.core.manifest import _patient_from_name

    return [ImageRef(item.path, _patient_from_name(split_ext(item.path)[0])) for item in expand_inputs([source], exts=IMAGE_2D_EXTS)]


def collect_images(
    sources: Sequence[str | Path],
    *,
    patient_regex: str | None = None,
    label: str | None = None,
    classes_from: str | Path | None = None,
) -> list[ImageRef]:
    """Images of folders / manifest CSVs / files / globs, each with its patient id, sorted by path.

    ``label``: each image's class is that manifest column (``class`` for class folders);
    ``classes_from``: its class is the first folder below that folder (``DIR/NORMAL/x.png`` →
    NORMAL). Either way an image without a class is an InputError naming it.
    """
    refs: list[ImageRef] = []
    for source in map(str, sources):
        path = Path(source)
        if path.suffix.lower() == ".csv" or path.is_dir():
            try:
                found = _from_manifest(source, label)
            except InputError:
                found = []
            # class folders / manifests first; a flat folder of images falls back to file names
            refs.extend(found or _from_files(source))
        else:
            refs.extend(_from_files(source))
    if not refs:
        raise InputError(f"no 2-D images found in {' '.join(map(str, sources))} (supported: {', '.join(IMAGE_2D_EXTS)})")
    if patient_regex:
        refs = [ImageRef(r.path, patient_from_regex(r.path, patient_regex), r.label) for r in refs]
    if classes_from is not None:
        refs = [ImageRef(r.path, r.patient, class_below(r.path, Path(classes_from))) for r in refs]
    if label or classes_from is not None:
        missing = [r.path for r in refs if not r.label]
        if missing:
            how = f"--label {label}" if label else f"--classes-from {classes_from}"
            raise InputError(f"{len(missing)} image(s) have no class ({how}), e.g. {missing[0]}")
    unique = {r.path.resolve(): r for r in refs}
    return sorted(unique.values(), key=lambda r: str(r.path))


def class_below(path: Path, root: Path) -> str | None:
    """The first folder of ``path`` below ``root`` (its class), None if it lies directly in or outside root."""
    try:
        parts = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def patient_from_regex(path: Path, pattern: str) -> str:
    """The patient id matched in the file name: group 'patient', else group 1, else the whole match."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--patient-regex {pattern!r} is not a valid regular expression ({exc})") from None
    match = regex.search(path.name)
    if match is None:
        raise InputError(f"--patient-regex {pattern!r} does not match the file name {path.name}")
    if "patient" in regex.groupindex:
        return match.group("patient")
    return match.group(1) if regex.groups else match.group(0)


def check_disjoint_patients(first: Sequence[ImageRef], second: Sequence[ImageRef], flags: tuple[str, str], advice: str) -> None:
    """InputError (exit 5) when a patient has images in both sets (``flags`` name them in the
    message, ``advice`` says what the second set must hold)."""
    overlap = sorted({r.patient for r in first} & {r.patient for r in second})
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        raise InputError(f"{len(overlap)} patient(s) are in both {flags[0]} and {flags[1]}: {shown}; {advice}")


def data_fingerprint(refs: Sequence[ImageRef]) -> str:
    """SHA-256 over (patient, file name, size): identifies a training set without reading every byte."""
    digest = hashlib.sha256()
    for ref in refs:
        digest.update(f"{ref.patient}\t{ref.path.name}\t{ref.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_image(path: Path | str, size: int | None, channels: int = 1) -> np.ndarray:
    """One image → (C, size, size) float32 in [0, 1] (scaled by bit depth; gray copied for 3
    channels): ``core.preprocess.load_image`` with the ``unit`` normalisation. ``size`` None
    keeps the native size."""
    from medtools.core.preprocess import UNIT_NORM
    from medtools.core.preprocess import load_image as load

    return load(path, size, channels, UNIT_NORM)


def load_images(refs: Sequence[ImageRef], size: int | None, channels: int = 1) -> np.ndarray:
    """(N, C, size, size) float32 in [0, 1]; an unreadable file is an InputError naming it."""
    arrays = []
    for ref in refs:
        try:
            arrays.append(load_image(ref.path, size, channels))
        except (OSError, ValueError) as exc:
            raise InputError(f"{ref.path}: cannot read image ({exc})") from None
    return np.stack(arrays)
