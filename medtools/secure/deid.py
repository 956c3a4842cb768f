"""De-identification before sharing: DICOM PS3.15 Annex E basic profile, NIfTI header clearing.

DICOM (pydicom, tag level; pixel data bytes are never decoded or touched):

* the attributes of Table E.1-1 get their Basic Profile action: X remove, Z empty,
  D dummy value, U replace UID (table ``ACTIONS`` below, nested sequences included);
* every private tag is removed, and so are curve (50xx) and overlay (60xx) groups;
* every UID that is not a registered DICOM UID (SOP classes, transfer syntaxes) is
  replaced by ``2.25.<128-bit integer>`` from HMAC-SHA256(run key, UID), so references
  between files of one run stay consistent; ``--key FILE`` makes the mapping repeatable
  across runs (and a secret: whoever holds the key can test guesses);
* ``date_shift`` (Retain Longitudinal Temporal Information with Modified Dates option)
  keeps dates shifted by a fixed number of days instead of removing them; the birth date
  is removed regardless;
* ``clean_descriptors`` (Clean Descriptors option): the descriptors of the table's "C" column
  (StudyDescription, SeriesDescription, ImageComments, ProtocolName …; ``phi.CLEAN_DESCRIPTORS``)
  are kept instead of removed, and every free-text attribute (LO/LT/SH/ST/UT/UC) has the
  patient's own names, IDs and birth date (read from the header first) and date, 6+-digit,
  e-mail and ``Family^Given`` patterns replaced by ``*`` (``secure/phi.py``);
* ``pixels`` (Clean Pixel Data option): burned-in text found by OCR, and known device regions,
  are filled with the background value in every frame, or inpainted from their surroundings
  (``fill="inpaint"``; ``secure/pixels.py``); the pixel data is then stored uncompressed and
  BurnedInAnnotation becomes NO; with inpainting, DeidentificationMethod gets a second value
  saying so. A file whose BurnedInAnnotation is
  YES and whose pixels are not cleaned is refused (an item error) unless ``allow_burned_in``;
* PatientIdentityRemoved, DeidentificationMethod and its code sequence (113100, and 113107,
  113101, 113105 for the options) record what was done; ``audit`` lists every change.

NIfTI: descrip, aux_file, intent_name and db_name are cleared and header extensions
(dcm2niix can embed the DICOM header there) are dropped; voxels and geometry are kept (with
``pixels``: text boxes in each slice are filled). PNG/JPG (only with ``pixels``): text boxes are
filled and the file is written again without its metadata (JPEG is re-encoded: lossy).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError

# PS3.15 Table E.1-1, Basic Profile column (where the table offers a choice such as X/Z/D
# the strictest action that keeps the file valid is used).
X, Z, D, U = "X", "Z", "D", "U"
_ACTIONS_BY_ACTION = {
    X: """AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime
        AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription AcquisitionTime
        ActualHumanPerformersSequence AdditionalPatientHistory AddressTrial AdmissionID AdmittingDate
        AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime Allergies Arbitrary
        AuthorObserverSequence BranchOfService CassetteID CommentsOnThePerformedProcedureStep
        ConfidentialityConstraintOnPatientDataDescription ContentCreatorIdentificationCodeSequence
        ContentSequence ContributionDescription CountryOfResidence CurrentPatientLocation
        CustodialOrganizationSequence DataSetTrailingPadding DateOfLastCalibration DateOfSecondaryCapture
        DerivationDescription DetectorID DeviceSerialNumber DigitalSignaturesSequence
        DischargeDiagnosisDescription DistributionAddress DistributionName EthnicGroup FrameComments
        GantryID GeneratorID HumanPerformerName HumanPerformerOrganization IconImageSequence
        IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments
        Impressions InstanceCreationDate InstanceCreationTime InstitutionAddress InstitutionCodeSequence
        InstitutionName InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
        InsurancePlanIdentification IntendedRecipientsOfResultsIdentificationSequence
        InterpretationApproverSequence InterpretationAuthor InterpretationDiagnosisDescription
        InterpretationIDIssuer InterpretationRecorder InterpretationText InterpretationTranscriber
        IssuerOfAdmissionID IssuerOfPatientID IssuerOfServiceEpisodeID LastMenstrualDate MAC
        MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
        ModifiedImageDescription ModifyingDeviceID NameOfPhysiciansReadingStudy
        NamesOfIntendedRecipientsOfResults Occupation OperatorIdentificationSequence OperatorsName
        OrderCallbackPhoneNumber OrderEnteredBy OrderEntererLocation OriginalAttributesSequence
        OtherPatientIDs OtherPatientIDsSequence OtherPatientNames ParticipantSequence PatientAddress
        PatientAge PatientAlternativeCalendar PatientBirthDateInAlternativeCalendar PatientBirthName
        PatientBirthTime PatientComments PatientDeathDateInAlternativeCalendar
        PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName
        PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
        PatientReligiousPreference PatientSexNeutered PatientSize PatientState PatientTelephoneNumbers
        PatientTransportArrangements PatientWeight PerformedLocation PerformedProcedureStepDescription
        PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepID
        PerformedProcedureStepStartDate PerformedProcedureStepStartTime
        PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress
        PersonTelephoneNumbers PhysicianApprovingInterpretation
        PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
        PhysiciansReadingStudyIdentificationSequence PlateID PreMedication PregnancyStatus ProtocolName
        ReasonForStudy ReasonForTheImagingServiceRequest ReferencedDigitalSignatureSequence
        ReferencedPatientAliasSequence ReferencedPatientPhotoSequence ReferencedPatientSequence
        ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceMACSequence ReferencedStudySequence
        ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
        ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence
        RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription
        RequestedProcedureID RequestedProcedureLocation RequestingPhysician RequestingService
        ResponsibleOrganization ResponsiblePerson ResultsComments ResultsDistributionListSequence
        ResultsIDIssuer ReviewerName ScheduledHumanPerformersSequence
        ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
        ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
        ScheduledProcedureStepEndTime ScheduledProcedureStepLocation ScheduledProcedureStepStartDate
        ScheduledProcedureStepStartTime ScheduledStationAETitle
        ScheduledStationGeographicLocationCodeSequence ScheduledStationName
        ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle SeriesDate
        SeriesDescription SeriesTime ServiceEpisodeDescription ServiceEpisodeID SmokingStatus
        SpecialNeeds StationName StudyComments StudyDescription StudyIDIssuer TextComments TextString
        TimeOfLastCalibration TimeOfSecondaryCapture TimezoneOffsetFromUTC TopicAuthor TopicKeywords
        TopicSubject TopicTitle VerifyingOrganization VisitComments""",
    Z: """AccessionNumber ContentCreatorName ContentDate ContentTime FillerOrderNumberImagingServiceRequest
        PatientBirthDate PatientID PatientName PatientSex PlacerOrderNumberImagingServiceRequest
        ReferringPhysicianName StudyDate StudyID StudyTime VerifyingObserverIdentificationCodeSequence""",
    D: """ContrastBolusAgent GraphicAnnotationSequence PersonIdentificationCodeSequence PersonName
        VerifyingObserverName VerifyingObserverSequence""",
}
ACTIONS: dict[str, str] = {keyword: action for action, text in _ACTIONS_BY_ACTION.items() for keyword in text.split()}
KEEP_DATES_WHEN_SHIFTING = frozenset({"DA", "DT"})
ALWAYS_REMOVED = frozenset({"PatientBirthDate", "PatientBirthTime"})
DUMMY_TEXT = "ANONYMIZED"
DUMMY_NAME = "ANONYMOUS"
PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CLEAN_PIXELS_CODE = ("113101", "Clean Pixel Data Option")
CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")
PSEUDONYM = re.compile(r"ANON-[0-9A-F]{12}")
PRIVATE_GROUPS = (0x5000, 0x6000)  # curves and overlays (repeating groups 50xx, 60xx)


@dataclass
class Deidentifier:
    """One run: the keyed UID/pseudonym mapping is consistent across every file it touches."""

    key: bytes
    date_shift: int | None = None
    pseudonymize: bool = False
    clean_descriptors: bool = False
    allow_burned_in: bool = False
    mapping: dict[tuple[str, str], str] = field(default_factory=dict)

    # -- mappings
    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"medtools-deid/v1 {kind}\x00{value}".encode("utf-8"), hashlib.sha256).digest()

    def new_uid(self, uid: str) -> str:
        new = "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))
        self.mapping[("uid", uid)] = new
        return new

    def pseudonym(self, kind: str, value: str) -> str:
        new = "ANON-" + self._mac("patient", value).hex()[:12].upper()
        self.mapping[(kind, value)] = new
        return new

    # -- DICOM
    def dicom(self, ds, *, pixels: Any = None, audit: dict[str, Any] | None = None) -> list[str]:
        """De-identify a pydicom Dataset in place; returns warnings for the user.

        ``pixels``: a ``pixels.PixelCleaner`` (Clean Pixel Data option); ``audit``: a dict that
        receives what changed (``tags``: keyword lists per action; ``pixel_boxes``)."""
        from medtools.secure.phi import Identifiers, clean_descriptors

        warnings = []
        audit = {} if audit is None else audit
        tags: dict[str, list[str]] = audit.setdefault("tags", {})
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and pixels is None:
            if not self.allow_burned_in:
                raise InputError("BurnedInAnnotation is YES: clean the pixels (--clean-pixels) or accept the text in them (--allow-burned-in)")
            warnings.append("BurnedInAnnotation is YES: text in the pixels is not removed (--allow-burned-in)")
        if pixels is not None:
            from medtools.secure.pixels import clean_dicom_pixels

            audit["pixel_boxes"] = clean_dicom_pixels(ds, pixels)
            audit["pixel_fill"] = pixels.fill
        identifiers = Identifiers.from_dataset(ds) if self.clean_descriptors else None
        patient_id = str(ds.get("PatientID", "") or "")
        patient_name = str(ds.get("PatientName", "") or "")
        private = [str(e.tag) for e in ds.iterall() if e.tag.is_private]
        if private:
            tags["private removed"] = private
        ds.remove_private_tags()
        self._dataset(ds, tags)
        if identifiers is not None:
            cleaned = clean_descriptors(ds, identifiers)
            if cleaned:
                tags["descriptors cleaned"] = cleaned
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if self.pseudonymize:
            if patient_id:
                ds.PatientID = self.pseudonym("patient_id", patient_id)
            if patient_name:
                ds.PatientName = self.pseudonym("patient_name", patient_name) if not patient_id else ds.PatientID
        self._mark(ds, pixels=pixels is not None, fill=getattr(pixels, "fill", "background"))
        return warnings

    def _dataset(self, ds, tags: dict[str, list[str]] | None = None) -> None:
        from pydicom._uid_dict import UID_dictionary

        from medtools.secure.phi import CLEAN_DESCRIPTORS

        tags = {} if tags is None else tags

        def note(action: str, name: str) -> None:
            if name not in tags.setdefault(action, []):
                tags[action].append(name)

        for elem in list(ds):
            group = elem.tag.group
            keyword = elem.keyword
            if group & 0xFF00 in PRIVATE_GROUPS:
                del ds[elem.tag]
                note("removed", keyword or str(elem.tag))
                continue
            action = ACTIONS.get(keyword)
            if self.clean_descriptors and keyword in CLEAN_DESCRIPTORS:
                action = None  # kept, then cleaned (Clean Descriptors option)
            if elem.VR == "SQ":
                if action == X:
                    del ds[elem.tag]
                    note("removed", keyword)
                elif action in (Z, D):
                    elem.value = []
                    note("emptied", keyword)
                else:
                    for item in elem.value:
                        self._dataset(item, tags)
                continue
            if self.date_shift is not None and elem.VR in KEEP_DATES_WHEN_SHIFTING and keyword not in ALWAYS_REMOVED:
                elem.value = _shift(elem.value, elem.VR, self.date_shift)
                note("dates shifted", keyword)
                continue
            if action == X:
                del ds[elem.tag]
                note("removed", keyword)
            elif action == Z:
                elem.value = None if elem.VR not in ("PN",) else ""
                note("emptied", keyword)
            elif action == D:
                elem.value = DUMMY_NAME if elem.VR == "PN" else DUMMY_TEXT if elem.VR in ("LO", "SH", "LT", "ST", "UT") else None
                note("dummy", keyword)
            elif elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                replaced = [str(v) if str(v) in UID_dictionary else self.new_uid(str(v)) for v in values]
                elem.value = replaced if elem.VM > 1 else replaced[0]
                if replaced != [str(v) for v in values]:
                    note("uid replaced", keyword)

    def _mark(self, ds, *, pixels: bool = False, fill: str = "background") -> None:
        from pydicom.dataset import Dataset

        ds.PatientIdentityRemoved = "YES"
        method = "medtools: PS3.15 Annex E basic profile"  # LO: at most 64 characters
        codes = [PROFILE_CODE]
        options = []
        if self.date_shift is not None:
            options.append("dates shifted")  # never the shift itself: it would undo it
            codes.append(MODIFIED_DATES_CODE)
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        if pixels:
            options.append("pixels")
            codes.append(CLEAN_PIXELS_CODE)
        if self.clean_descriptors:
            options.append("descriptors")
            codes.append(CLEAN_DESCRIPTORS_CODE)
        if options:
            method = (method if len(options) == 1 else "medtools: PS3.15 E basic") + ", " + ", ".join(options)
        # LO is 64 characters at most: how the pixels were filled is a second value
        ds.DeidentificationMethod = [method, INPAINT_METHOD] if pixels and fill == "inpaint" else method
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items

    # -- mapping file
    def write_mapping(self, path: Path) -> Path:
        """CSV of kind, original, replacement (a secret: it re-identifies)."""
        import io

        from medtools.secure.keystore import write_private

        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["kind", "original", "replacement"])
        for (kind, original), new in sorted(self.mapping.items()):
            writer.writerow([kind, original, new])
        return write_private(Path(path), text.getvalue().encode("utf-8"))


INPAINT_METHOD = "medtools: pixel text boxes inpainted (OpenCV Telea)"


def _shift(value: Any, vr: str, days: int) -> Any:
    """Shift a DA (YYYYMMDD) or DT (YYYYMMDDhhmmss...) value by whole days; keep unparsable ones empty."""
    if value in (None, ""):
        return value
    values = list(value) if not isinstance(value, (str, bytes, date, datetime)) and hasattr(value, "__iter__") else [value]
    out = []
    for v in values:
        text = str(v)
        try:
            day = datetime.strptime(text[:8], "%Y%m%d") + timedelta(days=days)
            out.append(day.strftime("%Y%m%d") + (text[8:] if vr == "DT" else ""))
        except ValueError:
            out.append("")
    return out if len(out) > 1 else out[0]


def deid_dicom(source: Path, target: Path, run: Deidentifier, *, pixels: Any = None, audit: dict[str, Any] | None = None) -> list[str]:
    """Read a DICOM file, de-identify its tags, write it (pixel data bytes unchanged unless ``pixels``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medtools.core.io import atomic_path

    try:
        ds = pydicom.dcmread(str(source))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(f"cannot read DICOM {source}: {exc}") from None
    warnings = run.dicom(ds, pixels=pixels, audit=audit)
    with atomic_path(target) as tmp:
        ds.save_as(str(tmp))
    return warnings


NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def deid_nifti(source: Path, target: Path, *, pixels: Any = None, audit: dict[str, Any] | None = None) -> list[str]:
    """Clear the free-text NIfTI header fields and drop extensions; voxels and affine stay
    (``pixels``: text boxes in each slice filled)."""
    from medtools.core.io import read_image, write_image

    audit = {} if audit is None else audit
    image = read_image(source, nan_policy="keep")  # voxels are copied, not interpreted
    header = image.meta.get("header")
    if header is not None:
        header = header.copy()
        cleared = [name for name in NIFTI_TEXT_FIELDS if name in header and bytes(header[name]).strip(b"\x00 ")]
        for name in NIFTI_TEXT_FIELDS:
            if name in header:
                header[name] = b""
        if hasattr(header, "extensions"):
            if len(header.extensions):
                cleared.append("extensions")
            del header.extensions[:]
        image.meta["header"] = header
        audit.setdefault("tags", {})["emptied"] = cleared
    if pixels is not None:
        from medtools.secure.pixels import clean_volume

        image.array, audit["pixel_boxes"] = clean_volume(image.array, pixels)
        audit["pixel_fill"] = pixels.fill
    write_image(image, target)
    return []


def deid_raster(source: Path, target: Path, *, pixels: Any, audit: dict[str, Any] | None = None) -> list[str]:
    """PNG/JPG/TIFF: text boxes filled; written again from the pixels alone (metadata dropped)."""
    from medtools.core.io import read_image, write_image
    from medtools.secure.pixels import clean_image

    audit = {} if audit is None else audit
    image = read_image(source, nan_policy="keep")
    image.array, audit["pixel_boxes"] = clean_image(image.array, cleaner=pixels)
    audit["pixel_fill"] = pixels.fill
    write_image(image, target)
    return ["JPEG re-encoded: pixels outside the text boxes change slightly"] if image.format == "jpeg" else []


def deidentify(source: Path, target: Path, run: Deidentifier, *, pixels: Any = None, audit: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """De-identify one DICOM, NIfTI (or, with ``pixels``, PNG/JPG/TIFF) file into ``target``;
    returns (format, warnings); ``audit`` receives what changed."""
    from medtools.core.io import RASTER_FORMATS, format_of

    fmt = format_of(source)
    if fmt == "nifti":
        return "nifti", deid_nifti(source, target, pixels=pixels, audit=audit)
    if fmt in RASTER_FORMATS:
        if pixels is None:
            raise InputError(f"{source}: a {fmt.upper()} file is de-identified by cleaning its pixels (--clean-pixels)")
        return fmt, deid_raster(source, target, pixels=pixels, audit=audit)
    return "dicom", deid_dicom(source, target, run, pixels=pixels, audit=audit)


AUDIT_COLUMNS = ("input", "output", "what", "name", "action", "detail")


def audit_rows(record: dict[str, Any]) -> list[list[str]]:
    """CSV rows of one file's changes: a row per tag action and per pixel box."""
    rows = []
    changes = record.get("changes", {})
    for action, names in changes.get("tags", {}).items():
        rows.extend([record["input"], record["output"], "tag", str(name), action, ""] for name in names)
    done = "inpainted" if changes.get("pixel_fill") == "inpaint" else "filled"
    for box in changes.get("pixel_boxes", []):
        where = f"frame {box['frame']}" if "frame" in box else "image"
        detail = " ".join(str(v) for v in box["box"]) + (f" text={box['text']}" if "text" in box else "")
        rows.append([record["input"], record["output"], "pixels", where, f"{done} ({box['source']})", detail])
    return rows


def write_audit(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """The per-file audit as CSV (input, output, what, name, action, detail), written atomically."""
    import io

    from medtools.core.io import atomic_path

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(AUDIT_COLUMNS)
    for record in records:
        writer.writerows(audit_rows(record))
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    return Path(path)


def make_deidentifier(key: bytes | None, *, date_shift: int | None = None, pseudonymize: bool = False, clean_descriptors: bool = False, allow_burned_in: bool = False) -> Deidentifier:
    """A Deidentifier with this key (default: a random one, so UIDs are unlinkable across runs)."""
    if key is None:
        from Crypto.Random import get_random_bytes

        key = get_random_bytes(32)
    return Deidentifier(key, date_shift=date_shift, pseudonymize=pseudonymize, clean_descriptors=clean_descriptors, allow_burned_in=allow_burned_in)


def deid_files(
    inputs: Sequence[str | Path],
    output: Path | None,
    *,
    key_file: Path | None = None,
    date_shift: int | None = None,
    pseudonymize: bool = False,
    mapping: Path | None = None,
    clean_pixels: bool = False,
    ocr: str | None = None,
    pixel_regions: Path | None = None,
    fill: str | None = None,
    clean_descriptors: bool = False,
    allow_burned_in: bool = False,
    audit_csv: Path | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> int:
    """De-identify DICOM/NIfTI (and, with ``clean_pixels``, PNG/JPG/TIFF) files into ``output``
    (mirroring the inputs) on the batch driver; each result is emitted as written (path, or a
    JSON line under --json with the file's ``changes``: tags per action, pixel boxes); the
    mapping table goes to ``mapping`` and the audit CSV to ``audit_csv`` at the end.
    ``key_file``: the UID/pseudonym key (default: random per run). ``fill``: how text boxes are
    filled, background (default) or inpaint (``pixels.FILLS``). Returns the exit code."""
    from medtools.core import batch, report
    from medtools.core.errors import UsageError
    from medtools.core.secrets import read_key_file

    if pixel_regions is not None and not clean_pixels:
        raise UsageError("--pixel-regions is part of --clean-pixels: add --clean-pixels")
    if ocr is not None and not clean_pixels:
        raise UsageError("--ocr is part of --clean-pixels: add --clean-pixels")
    if fill is not None and not clean_pixels:
        raise UsageError("--fill is part of --clean-pixels: add --clean-pixels")
    run = make_deidentifier(read_key_file(key_file) if key_file is not None else None, date_shift=date_shift, pseudonymize=pseudonymize, clean_descriptors=clean_descriptors, allow_burned_in=allow_burned_in)
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, select_shard, skip_existing
    from medtools.core.io import DICOM_EXTS, NIFTI_EXTS, RASTER_EXTS

    exts = DICOM_EXTS + NIFTI_EXTS + (RASTER_EXTS if clean_pixels else ())
    items = select_shard(expand_inputs(inputs, exts=exts, output=output), shard)
    n_workers = batch.resolve_workers(workers)
    pixels = None
    if clean_pixels:
        from medtools.secure.pixels import PixelCleaner

        pixels = PixelCleaner.create(regions=pixel_regions, ocr=ocr, threads=ocr_threads(n_workers, len(items)), fill=fill)
    output = check_output_arg(output, len(items))
    records: list[dict[str, Any]] = []

    def work(item):
        target = output_for(item, output, single=len(items) == 1)
        if skip_existing(target, overwrite):
            return batch.SKIPPED
        changes: dict[str, Any] = {}
        kind, warnings = deidentify(item.path, target, run, pixels=pixels, audit=changes)
        for message in warnings:
            report.warn(f"{item.path}: {message}")
        return {"input": str(item.path), "output": str(target), "format": kind, "warnings": warnings, "changes": changes}

    emit = batch.emitter()

    def emit_and_keep(result):
        if audit_csv is not None:
            records.append(result)
        emit(result)

    outcome = batch.run_items(items, work, emit=emit_and_keep, total=len(items), description="deid", workers=n_workers)
    if mapping is not None:
        run.write_mapping(mapping)
        report.log(f"mapping written to {mapping} (keep it secret: it re-identifies)")
    if audit_csv is not None:
        write_audit(audit_csv, records)
        report.log(f"audit written to {audit_csv}")
    return outcome.exit_code


def ocr_threads(workers: int, items: int) -> int:
    """Threads of one OCR call when ``workers`` threads run ``items`` files: the cores shared out."""
    from medtools.core.batch import default_workers

    return max(1, default_workers() // max(1, min(workers, items)))


def phi_scan_files(inputs: Sequence[str | Path], *, pixels: bool = True, ocr: str | None = None, shard: str | None = None, workers: int | None = None) -> int:
    """Read-only release check: one finding per residual PHI tag, private tag, burned-in text box
    or descriptor holding a name/ID/date (values masked). stdout: a JSON line per finding under
    --json, else the path of each file with findings. Exit 0 when every file is clean,
    EXIT_PHI_FOUND when any is not (unreadable files: the batch driver's codes)."""
    from medtools.core import batch, report
    from medtools.core.context import current
    from medtools.core.errors import EXIT_PHI_FOUND, UsageError
    from medtools.core.inputs import expand_inputs, select_shard
    from medtools.core.io import DICOM_EXTS, NIFTI_EXTS, RASTER_EXTS
    from medtools.secure.phi import scan_file

    if ocr is not None and not pixels:
        raise UsageError("--ocr reads the pixels: drop --no-pixels")
    items = select_shard(expand_inputs(inputs, exts=DICOM_EXTS + NIFTI_EXTS + RASTER_EXTS), shard)
    n_workers = batch.resolve_workers(workers)
    cleaner = None
    if pixels:
        from medtools.secure.pixels import PixelCleaner

        cleaner = PixelCleaner.create(ocr=ocr, threads=ocr_threads(n_workers, len(items)), read=True)
    dirty: list[str] = []

    def work(item):
        return {"input": str(item.path), "findings": scan_file(item.path, pixels=cleaner)}

    def emit(result):
        if not result["findings"]:
            return
        dirty.append(result["input"])
        for finding in result["findings"]:
            report.warn(f"{result['input']}: {finding['kind']} {finding.get('where', finding.get('box', ''))} {finding.get('value', finding.get('text', ''))}".rstrip())
            if current().json:
                report.emit_jsonl({"input": result["input"], **finding})
        if not current().json:
            report.emit_path(result["input"])

    outcome = batch.run_items(items, work, emit=emit, total=len(items), description="phi-scan", workers=n_workers)
    report.log(f"phi-scan: {len(dirty)} of {outcome.ok} file(s) with findings")
    return EXIT_PHI_FOUND if dirty else outcome.exit_code
