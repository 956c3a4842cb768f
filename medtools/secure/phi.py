"""Identifying text in free-text attributes: find it, replace it (Clean Descriptors), report it (phi-scan).

``Identifiers`` holds what identifies one patient, taken from the header before the basic
profile empties it (name parts, IDs, accession number, birth date in the usual spellings), plus
patterns that identify anyone: dates, runs of 6+ digits (record numbers, phone numbers), e-mail
addresses and DICOM person names (``Family^Given``). ``clean`` replaces each match by ``*``.

``scan_*`` are the read-only checks of ``phi-scan``: one finding per residual PHI attribute,
private tag, burned-in text box, or descriptor that still holds a name/ID/date, with the
matched value masked (first character and length), never printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# PS3.15 Table E.1-1: the attributes the Clean Descriptors option keeps, cleaned ("C"),
# instead of removing them.
CLEAN_DESCRIPTORS = frozenset(
    """AcquisitionComments AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription
    AdditionalPatientHistory AdmittingDiagnosesDescription Allergies CommentsOnThePerformedProcedureStep
    DerivationDescription DischargeDiagnosisDescription FrameComments IdentifyingComments ImageComments
    ImagePresentationComments ImagingServiceRequestComments Impressions InterpretationDiagnosisDescription
    InterpretationText MedicalAlerts ModifiedImageDescription PatientComments
    PerformedProcedureStepDescription ProtocolName ReasonForStudy ReasonForTheImagingServiceRequest
    RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription ResultsComments
    ScheduledProcedureStepDescription SeriesDescription ServiceEpisodeDescription StudyComments
    StudyDescription TextComments TextString TopicKeywords TopicSubject TopicTitle VisitComments""".split()
)
SCAN_MIN_CHARS = 3
SCAN_MIN_CONFIDENCE = 50.0
TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC"})
REPLACEMENT = "*"
NOT_FREE_TEXT = frozenset({"DeidentificationMethod", "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning"})  # written by deid itself

PATTERNS: dict[str, re.Pattern[str]] = {
    "date": re.compile(r"\b(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))\b"),
    "number": re.compile(r"\b\d[\d -]{4,}\d\b"),  # 6+ digits, spaces/dashes allowed: IDs, phone numbers
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "person name": re.compile(r"\b[A-Za-z][\w'-]*\^[A-Za-z][\w'-]*(?:\^[\w'-]*)*"),
}


def mask(text: str) -> str:
    return text[:1] + "*" * max(0, len(text) - 1)


def _date_spellings(value: str) -> list[str]:
    if not re.fullmatch(r"\d{8}", value):
        return [value] if value else []
    y, m, d = value[:4], value[4:6], value[6:]
    return [value, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{y}/{m}/{d}"]


@dataclass
class Identifiers:
    """The patient's own values (matched whole, case-insensitive) and the generic patterns."""

    values: list[str] = field(default_factory=list)

    @classmethod
    def from_dataset(cls, ds: Any) -> Identifiers:
        values: list[str] = []
        for keyword in ("PatientName", "PatientBirthName", "PatientMotherBirthName", "OtherPatientNames", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName"):
            for name in _multi(ds.get(keyword)):
                text = str(name)
                values.append(text)
                values.extend(part for part in re.split(r"[\^ ,]+", text) if len(part) >= 2)
        for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName", "StudyID", "MedicalRecordLocator"):
            values.extend(str(v) for v in _multi(ds.get(keyword)) if len(str(v)) >= 2)
        for keyword in ("PatientBirthDate",):
            for v in _multi(ds.get(keyword)):
                values.extend(_date_spellings(str(v)))
        return cls(sorted({v.strip() for v in values if v and v.strip()}, key=len, reverse=True))

    def _own(self) -> re.Pattern[str] | None:
        if not self.values:
            return None
        return re.compile("|".join(rf"(?<![\w]){re.escape(v)}(?![\w])" for v in self.values), re.IGNORECASE)

    def find(self, text: str) -> list[tuple[str, str]]:
        """(kind, matched text) of each identifying part of ``text``."""
        found = []
        own = self._own()
        if own is not None:
            found.extend(("patient value", m.group(0)) for m in own.finditer(text))
        for kind, pattern in PATTERNS.items():
            found.extend((kind, m.group(0)) for m in pattern.finditer(text))
        return found

    def clean(self, text: str) -> tuple[str, list[str]]:
        """``text`` with every identifying part replaced by ``*``; the kinds replaced."""
        kinds = []
        own = self._own()
        if own is not None:
            text, n = own.subn(REPLACEMENT, text)
            kinds += ["patient value"] * n
        for kind, pattern in PATTERNS.items():
            text, n = pattern.subn(REPLACEMENT, text)
            kinds += [kind] * n
        return text, kinds


def _multi(value: Any) -> list[Any]:
    if value in (None, ""):
        return []
    from pydicom.multival import MultiValue

    if not isinstance(value, (list, tuple, MultiValue)):
        return [value]  # a str, a PersonName, a number
    return [v for v in value if v not in (None, "")]


def clean_descriptors(ds: Any, identifiers: Identifiers, *, keywords: Iterable[str] | None = None) -> list[str]:
    """Clean free text in place: the CLEAN_DESCRIPTORS attributes and every other text attribute
    (LO/LT/SH/ST/UT/UC, nested sequences included, private tags excluded); returns the keywords changed."""
    changed: list[str] = []
    for elem in _text_elements(ds):
        value = elem.value
        texts = [str(v) for v in _multi(value)]
        cleaned = [identifiers.clean(t)[0] for t in texts]
        if cleaned != texts:
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
            changed.append(elem.keyword or str(elem.tag))
    return changed


def _text_elements(ds: Any) -> Iterable[Any]:
    for elem in ds:
        if elem.tag.is_private:
            continue
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _text_elements(item)
        elif elem.VR in TEXT_VRS and elem.keyword not in NOT_FREE_TEXT and elem.value not in (None, ""):
            yield elem


# ---------------------------------------------------------------- phi-scan


def scan_dicom_tags(ds: Any) -> list[dict[str, Any]]:
    """Findings in a DICOM header: PHI attributes of the basic profile that still hold a real
    value, private tags, BurnedInAnnotation YES, free text holding names/IDs/dates."""
    from medtools.secure.deid import ACTIONS, DUMMY_NAME, DUMMY_TEXT, PSEUDONYM

    findings: list[dict[str, Any]] = []
    shifted = str(ds.get("LongitudinalTemporalInformationModified", "")).upper() == "MODIFIED"
    identifiers = Identifiers.from_dataset(ds)
    for elem in ds.iterall():
        if elem.tag.is_private:
            findings.append({"kind": "private tag", "where": str(elem.tag)})
            continue
        keyword = elem.keyword
        action = ACTIONS.get(keyword)
        if action is None or elem.VR == "SQ" or elem.value in (None, "", b"", []):
            continue
        text = str(elem.value)
        if text in (DUMMY_NAME, DUMMY_TEXT) or PSEUDONYM.fullmatch(text) or (shifted and elem.VR in ("DA", "DT") and keyword != "PatientBirthDate"):
            continue
        if keyword in CLEAN_DESCRIPTORS and not identifiers.find(text):
            continue  # kept by the Clean Descriptors option and clean
        findings.append({"kind": "phi tag", "where": keyword, "value": mask(text)})
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        findings.append({"kind": "burned-in annotation", "where": "BurnedInAnnotation", "value": "YES"})
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        findings.append({"kind": "not de-identified", "where": "PatientIdentityRemoved", "value": str(ds.get("PatientIdentityRemoved", "")) or "(absent)"})
    reported = {f["where"] for f in findings}
    for elem in _text_elements(ds):
        if elem.keyword in reported:
            continue
        for kind, match in identifiers.find(" ".join(str(v) for v in _multi(elem.value))):
            findings.append({"kind": "descriptor", "where": elem.keyword or str(elem.tag), "value": mask(match), "match": kind})
    return findings


def scan_nifti_header(header: Any) -> list[dict[str, Any]]:
    from medtools.secure.deid import NIFTI_TEXT_FIELDS

    findings = []
    for name in NIFTI_TEXT_FIELDS:
        if name in header:
            value = bytes(header[name]).strip(b"\x00 ").decode("latin-1")
            if value:
                findings.append({"kind": "nifti text", "where": name, "value": mask(value)})
    if getattr(header, "extensions", None):
        findings.append({"kind": "nifti extension", "where": "extensions", "value": f"{len(header.extensions)} extension(s)"})
    return findings


def readable(text: str, confidence: float) -> bool:
    """A word the scanner reports: ``SCAN_MIN_CHARS`` letters/digits read with at least
    ``SCAN_MIN_CONFIDENCE`` (the cleaner fills every box with one; OCR noise on anatomy is
    one or two low-confidence characters)."""
    return sum(c.isalnum() for c in text) >= SCAN_MIN_CHARS and confidence >= SCAN_MIN_CONFIDENCE


def scan_pixels(frames: Sequence[Any], cleaner: Any) -> list[dict[str, Any]]:
    """One finding per readable word the OCR finds in the frames (the string masked)."""
    return [{"kind": "pixel text", **box.record(index)} for index, box in cleaner.boxes(frames) if box.source != "ocr" or readable(box.text, box.confidence)]


def scan_file(path: Path, *, pixels: Any = None) -> list[dict[str, Any]]:
    """All findings of one file (DICOM, NIfTI, PNG/JPG); ``pixels``: a PixelCleaner, or None to skip OCR."""
    import numpy as np

    from medtools.core.errors import InputError
    from medtools.core.io import format_of, read_image

    fmt = format_of(path)
    if fmt == "nifti":
        from medtools.secure.pixels import volume_slices

        image = read_image(path, nan_policy="keep")
        findings = scan_nifti_header(image.meta["header"]) if image.meta.get("header") is not None else []
        if pixels is not None:
            findings += scan_pixels(volume_slices(np.asarray(image.array)), pixels)
        return findings
    if fmt in ("png", "jpeg", "tiff"):
        image = read_image(path, nan_policy="keep")
        return scan_pixels(np.asarray(image.array)[None], pixels) if pixels is not None else []
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(f"cannot read DICOM {path}: {exc}") from None
    findings = scan_dicom_tags(ds)
    if pixels is not None and "PixelData" in ds:
        from medtools.secure.pixels import dicom_frames

        findings += scan_pixels(dicom_frames(ds)[0], pixels)
    return findings
