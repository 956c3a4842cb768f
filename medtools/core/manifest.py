"""Find cases in folders and describe them as a CSV: patient, case, visit, modalities, label, class.

Patient identity comes from here (folder and file naming rules below), never from guesses
inside training code. Recognised layouts:

* BraTS: ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``; the patient is the case name
  with a trailing visit suffix (``_1``, ``_v2``) removed.
* DeepMedic BraTS 2015: ``<case>/{Flair,T1c,...}_*.nii.gz`` + ``OTMultiClass.nii.gz``
  (``brainmask`` is ignored).
* Per-patient folders with visits: ``<patient>/<Visit>_Scan_<MOD>.nii.gz`` +
  ``<Visit>_Mask.nii.gz`` (TCIA Brain-Tumor-Progression); visits are ``Pre``/``Post``.
* 2-D class folders: ``<root>/<CLASS>/<image>.png|jpg``; the patient is read from a
  ``manifest.csv`` in ``<root>`` (``file``, ``patient_id`` columns) when present, else
  from the file name (``person12_…``, ``IM-0001-…``, ``p0003-…``, NIH ChestX-ray14's
  ``<8-digit patient>_<3-digit follow-up>``, whose follow-up becomes the visit), else the file
  stem. File-name rules also hold outside the source folder (a protected copy keeps its ids).
* 2-D image/mask pairs (segmentation): ``<name>.png`` with ``<name>_mask.png`` (or ``_seg``,
  ``_label``, ``_annotation``) beside it, or in a parallel folder ``masks/`` (``labels/``,
  ``annotations/``, ``gt/``) next to the images' folder, with the same stem or stem + suffix.
  PNG/JPEG/TIFF/DICOM images. The patient comes from a CSV in the images' folder or the one
  above it that has a file column (``filename``, ``file``, ``image``) and an id column
  (``patient_id``, ``patient``, ``exam_id``), else from the file name as above.

Modality aliases (:func:`apply_aliases`, ``manifest --alias t1=t1ce``) rename a column for a
data set whose naming differs, e.g. Brain-Tumor-Progression's ``T1`` is post-contrast, so
``t1=t1ce`` lets it pool with BraTS for a T1c-only model.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from medtools.core.errors import InputError
from medtools.core.io import NIFTI_EXTS, RASTER_EXTS, split_ext
from medtools.core.paths import safe_part

MODALITIES = ("flair", "t1", "t1ce", "t2")
COLUMNS = ("patient", "case", "visit", *MODALITIES, "image", "label", "class")

_ALIASES = {
    "flair": "flair",
    "t1": "t1",
    "t1w": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1post": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "seg": "label",
    "label": "label",
    "labels": "label",
    "mask": "label",
    "otmulticlass": "label",
    "ot": "label",
}
_IGNORED = {"brainmask", "license"}
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_annotation", "_gt")
MASK_FOLDERS = {"masks", "mask", "labels", "label", "annotations", "annotation", "gt", "ground_truth", "segmentations"}
PAIR_EXTS = (*RASTER_EXTS, ".dcm")
_VISIT_RE = re.compile(r"^(?P<patient>.+?)[_-](?P<visit>v?\d{1,2})$", re.IGNORECASE)
_PATIENT_PATTERNS = (
    re.compile(r"^(?P<p>person\d+)_"),
    re.compile(r"^(?P<p>NORMAL2-IM-\d+)-"),
    re.compile(r"^(?P<p>IM-\d+)-"),
    re.compile(r"^(?P<p>p\d+)[-_]"),
)
_NIH_RE = re.compile(r"^(?P<p>\d{8})_(?P<v>\d{3})$")  # NIH ChestX-ray14: 00000001_000


def split_visit(name: str) -> tuple[str, str]:
    """'brats_2013_pat0001_1' → ('brats_2013_pat0001', '1'); no suffix → (name, '1').

    A bare number is a visit only after a name that ends in a digit (``pat0001_1``,
    ``UPENN-GBM-00001_11``); ``Patient_01`` and ``sub-02`` are patients, not visits of
    ``Patient``/``sub`` (that would merge every patient into one). ``_v2`` is always a visit.
    """
    match = _VISIT_RE.match(name)
    if match and (match.group("visit")[0] in "vV" or match.group("patient")[-1].isdigit()):
        return match.group("patient"), match.group("visit")
    return name, "1"


def _role(stem: str) -> tuple[list[str], str | None]:
    """Split a file stem into (prefix tokens, role) where role is a modality, 'label' or None."""
    tokens = stem.split("_")
    for index, token in enumerate(tokens):
        low = token.lower()
        if low in _IGNORED:
            return tokens[:index], None
        if low in _ALIASES:
            prefix = [t for t in tokens[:index] if t.lower() != "scan"]
            return prefix, _ALIASES[low]
    return tokens, None


def _volume_rows(folder: Path, files: Sequence[Path]) -> list[dict[str, str]]:
    cases: dict[str, dict[str, str]] = {}
    for path in files:
        stem = split_ext(path)[0]
        prefix, role = _role(stem)
        if role is None:
            continue
        joined = "_".join(prefix)
        if not prefix or joined == folder.name:
            case = folder.name
            patient, visit = split_visit(folder.name)
        else:
            case = f"{folder.name}_{joined}"
            patient, visit = folder.name, joined
        row = cases.setdefault(case, {"patient": patient, "case": case, "visit": visit})
        if role in row:
            raise InputError(f"{folder}: two files for {role} of case {case}: {row[role]} and {path}")
        row[role] = str(path)
    return [row for row in cases.values() if any(m in row for m in MODALITIES)]


def _patient_from_name(stem: str) -> str:
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group("p")
    return stem


def _class_folder_rows(root: Path, class_dirs: Sequence[Path]) -> list[dict[str, str]]:
    known: dict[str, str] = {}
    listing = root / "manifest.csv"
    if listing.is_file():
        with open(listing, newline="") as handle:
            for record in csv.DictReader(handle):
                if "file" in record and record.get("patient_id"):
                    known[str((root / record["file"]).resolve())] = record["patient_id"]
    rows = []
    for class_dir in class_dirs:
        for path in sorted(class_dir.iterdir()):
            if not path.name.lower().endswith(RASTER_EXTS):
                continue
            stem = split_ext(path)[0]
            nih = _NIH_RE.match(stem)
            patient = known.get(str(path.resolve())) or (nih.group("p") if nih else _patient_from_name(stem))
            rows.append({"patient": patient, "case": stem, "visit": nih.group("v") if nih else "", "image": str(path), "class": class_dir.name})
    return rows


def _patient_table(folders: Sequence[Path]) -> dict[str, str]:
    """file name → patient id from the first CSV in ``folders`` with a file and an id column."""
    for folder in folders:
        for listing in sorted(folder.glob("*.csv")):
            with open(listing, newline="") as handle:
                reader = csv.DictReader(handle)
                fields = reader.fieldnames or []
                file_col = next((c for c in ("filename", "file", "image") if c in fields), None)
                id_col = next((c for c in ("patient_id", "patient", "exam_id") if c in fields), None)
                if file_col and id_col:
                    return {Path(r[file_col]).name: r[id_col] for r in reader if r.get(file_col) and r.get(id_col)}
    return {}


def _mask_stem(stem: str) -> str | None:
    low = stem.lower()
    for suffix in MASK_SUFFIXES:
        if low.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def _pair_rows(folder: Path, files: Sequence[Path], masks: dict[str, Path]) -> list[dict[str, str]]:
    """Image files of ``folder`` paired with ``masks`` (stem → mask path) → rows."""
    table = _patient_table([folder, folder.parent])
    rows = []
    for path in files:
        stem = split_ext(path)[0]
        mask = masks.get(stem)
        if mask is None or mask == path:
            continue
        patient = table.get(path.name) or _patient_from_name(stem)
        rows.append({"patient": patient, "case": stem, "visit": "", "image": str(path), "label": str(mask)})
    return rows


def _image_mask_rows(folder: Path, children: Sequence[Path]) -> tuple[list[dict[str, str]], set[Path]]:
    """2-D image/mask pairs in ``folder`` (masks beside the images, or images/ + masks/ subfolders);
    returns the rows and the subfolders they used (not class folders then)."""
    pictures = [p for p in children if p.is_file() and p.name.lower().endswith(PAIR_EXTS)]
    beside = {}
    for path in pictures:
        base = _mask_stem(split_ext(path)[0])
        if base is not None:
            beside[base] = path
    rows = _pair_rows(folder, [p for p in pictures if p not in beside.values()], beside) if beside else []
    used: set[Path] = set()
    dirs = [p for p in children if p.is_dir()]
    mask_dirs = [d for d in dirs if d.name.lower() in MASK_FOLDERS]
    for mask_dir in mask_dirs:
        masks: dict[str, Path] = {}
        for path in sorted(mask_dir.iterdir()):
            if path.is_file() and path.name.lower().endswith(PAIR_EXTS):
                stem = split_ext(path)[0]
                masks[stem] = path
                base = _mask_stem(stem)
                if base is not None:
                    masks.setdefault(base, path)
        for image_dir in dirs:
            if image_dir in mask_dirs:
                continue
            images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.name.lower().endswith(PAIR_EXTS))
            found = _pair_rows(image_dir, images, masks)
            if found:
                rows.extend(found)
                used |= {image_dir, mask_dir}
    return rows, used


def apply_aliases(rows: Sequence[dict[str, str]], aliases: dict[str, str] | Sequence[str]) -> list[dict[str, str]]:
    """Rename modality columns (``{"t1": "t1ce"}`` or ``["t1=t1ce"]``); a row that already has
    the target modality is refused (two files for one modality)."""
    if not isinstance(aliases, dict):
        parsed = {}
        for text in aliases:
            source, _, target = text.partition("=")
            parsed[source.strip().lower()] = target.strip().lower()
        aliases = parsed
    for source, target in aliases.items():
        if source not in MODALITIES or target not in MODALITIES:
            raise InputError(f"--alias {source}={target}: both sides must be modalities ({', '.join(MODALITIES)})")
    out = []
    for row in rows:
        row = dict(row)
        moved = {target: row.pop(source) for source, target in aliases.items() if row.get(source)}
        clash = [m for m in moved if row.get(m)]
        if clash:
            raise InputError(f"case {row.get('case')}: --alias would give two files for {', '.join(clash)}")
        row.update(moved)
        out.append(row)
    return out


def discover(roots: Iterable[Path | str]) -> list[dict[str, str]]:
    """All cases under the roots, sorted by (patient, case)."""
    rows: list[dict[str, str]] = []
    for root in map(Path, roots):
        if not root.exists():
            raise InputError(f"no such folder: {root}")
        if root.is_file():
            raise InputError(f"{root} is a file; manifest takes folders")
        for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
            if any(part.startswith(".") for part in folder.relative_to(root).parts):
                continue
            children = sorted(folder.iterdir())
            volumes = [p for p in children if p.is_file() and p.name.lower().endswith(NIFTI_EXTS)]
            if volumes:
                rows.extend(_volume_rows(folder, volumes))
            pairs, paired_dirs = _image_mask_rows(folder, children)
            rows.extend(pairs)
            class_dirs = [
                p for p in children if p.is_dir() and p not in paired_dirs and p.name.lower() not in MASK_FOLDERS and any(c.name.lower().endswith(RASTER_EXTS) for c in p.iterdir())
            ]
            if class_dirs:
                rows.extend(_class_folder_rows(folder, class_dirs))
    if not rows:
        raise InputError(f"no cases found in {', '.join(map(str, roots))}")
    rows.sort(key=lambda r: (r["patient"], r["case"], r.get("image", "")))
    return rows


def to_csv(rows: Sequence[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in COLUMNS})
    return buffer.getvalue()


def read_csv(path: Path | str) -> list[dict[str, str]]:
    """Read a manifest; relative paths are taken relative to the CSV's folder when they exist there."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such manifest: {path}")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "patient" not in rows[0]:
        raise InputError(f"{path}: not a medtools manifest (needs columns {', '.join(COLUMNS)})")
    for row in rows:
        for key in (*MODALITIES, "image", "label"):
            value = row.get(key) or ""
            if value and not Path(value).is_absolute() and not Path(value).exists() and (path.parent / value).exists():
                row[key] = str(path.parent / value)
    for row in rows:  # names that become file names under -o: never a path out of it
        if row.get("case"):
            row["case"] = safe_part(row["case"])
    return [{k: v for k, v in row.items() if v not in (None, "")} for row in rows]


def load_rows(data: Path | str | Sequence[Path | str]) -> list[dict[str, str]]:
    """A manifest CSV, or folders to discover."""
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    if sources and all(str(s).lower().endswith(".csv") for s in sources):  # several manifests pool
        return [row for source in sources for row in read_csv(source)]
    return discover(sources)
