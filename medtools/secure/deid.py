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
* PatientIdentityRemoved, DeidentificationMethod and its code sequence (113100, 113107)
  record what was done.

Not done (the Clean Pixel Data / Clean Descriptors options): burned-in text in pixels is
left as it is (a warning names files whose BurnedInAnnotation is YES), and free-text
attributes the table does not list are kept.

NIfTI: descrip, aux_file, intent_name and db_name are cleared and header extensions
(dcm2niix can embed the DICOM header there) are dropped; voxels and geometry are kept.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
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
PRIVATE_GROUPS = (0x5000, 0x6000)  # curves and overlays (repeating groups 50xx, 60xx)


@dataclass
class Deidentifier:
    """One run: the keyed UID/pseudonym mapping is consistent across every file it touches."""

    key: bytes
    date_shift: int | None = None
    pseudonymize: bool = False
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
    def dicom(self, ds) -> list[str]:
        """De-identify a pydicom Dataset in place; returns warnings for the user."""
        warnings = []
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            warnings.append("BurnedInAnnotation is YES: text in the pixels is not removed (Clean Pixel Data option not done)")
        patient_id = str(ds.get("PatientID", "") or "")
        patient_name = str(ds.get("PatientName", "") or "")
        ds.remove_private_tags()
        self._dataset(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if self.pseudonymize:
            if patient_id:
                ds.PatientID = self.pseudonym("patient_id", patient_id)
            if patient_name:
                ds.PatientName = self.pseudonym("patient_name", patient_name) if not patient_id else ds.PatientID
        self._mark(ds)
        return warnings

    def _dataset(self, ds) -> None:
        from pydicom._uid_dict import UID_dictionary

        for elem in list(ds):
            group = elem.tag.group
            if group & 0xFF00 in PRIVATE_GROUPS:
                del ds[elem.tag]
                continue
            keyword = elem.keyword
            if elem.VR == "SQ":
                action = ACTIONS.get(keyword)
                if action == X:
                    del ds[elem.tag]
                elif action in (Z, D):
                    elem.value = []
                else:
                    for item in elem.value:
                        self._dataset(item)
                continue
            if self.date_shift is not None and elem.VR in KEEP_DATES_WHEN_SHIFTING and keyword not in ALWAYS_REMOVED:
                elem.value = _shift(elem.value, elem.VR, self.date_shift)
                continue
            action = ACTIONS.get(keyword)
            if action == X:
                del ds[elem.tag]
            elif action == Z:
                elem.value = None if elem.VR not in ("PN",) else ""
            elif action == D:
                elem.value = DUMMY_NAME if elem.VR == "PN" else DUMMY_TEXT if elem.VR in ("LO", "SH", "LT", "ST", "UT") else None
            elif elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                replaced = [str(v) if str(v) in UID_dictionary else self.new_uid(str(v)) for v in values]
                elem.value = replaced if elem.VM > 1 else replaced[0]

    def _mark(self, ds) -> None:
        from pydicom.dataset import Dataset

        ds.PatientIdentityRemoved = "YES"
        method = "medtools: PS3.15 Annex E basic profile"  # LO: at most 64 characters
        codes = [PROFILE_CODE]
        if self.date_shift is not None:
            method += ", dates shifted"  # never the shift itself: it would undo it
            codes.append(MODIFIED_DATES_CODE)
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        ds.DeidentificationMethod = method
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


def deid_dicom(source: Path, target: Path, run: Deidentifier) -> list[str]:
    """Read a DICOM file, de-identify its tags, write it with the pixel data bytes unchanged."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medtools.core.io import atomic_path

    try:
        ds = pydicom.dcmread(str(source))
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(f"cannot read DICOM {source}: {exc}") from None
    warnings = run.dicom(ds)
    with atomic_path(target) as tmp:
        ds.save_as(str(tmp))
    return warnings


NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def deid_nifti(source: Path, target: Path) -> list[str]:
    """Clear the free-text NIfTI header fields and drop extensions; voxels and affine stay."""
    from medtools.core.io import read_image, write_image

    image = read_image(source, nan_policy="keep")  # voxels are copied, not interpreted
    header = image.meta.get("header")
    if header is not None:
        header = header.copy()
        for name in NIFTI_TEXT_FIELDS:
            if name in header:
                header[name] = b""
        if hasattr(header, "extensions"):
            del header.extensions[:]
        image.meta["header"] = header
    write_image(image, target)
    return []


def deidentify(source: Path, target: Path, run: Deidentifier) -> tuple[str, list[str]]:
    """De-identify one DICOM or NIfTI file into ``target``; returns (format, warnings)."""
    from medtools.core.io import format_of

    if format_of(source) == "nifti":
        return "nifti", deid_nifti(source, target)
    return "dicom", deid_dicom(source, target, run)


def make_deidentifier(key: bytes | None, *, date_shift: int | None = None, pseudonymize: bool = False) -> Deidentifier:
    """A Deidentifier with this key (default: a random one, so UIDs are unlinkable across runs)."""
    if key is None:
        from Crypto.Random import get_random_bytes

        key = get_random_bytes(32)
    return Deidentifier(key, date_shift=date_shift, pseudonymize=pseudonymize)


def deid_files(
    inputs: Sequence[str | Path],
    output: Path | None,
    *,
    key_file: Path | None = None,
    date_shift: int | None = None,
    pseudonymize: bool = False,
    mapping: Path | None = None,
    shard: str | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> int:
    """De-identify DICOM/NIfTI files into ``output`` (mirroring the inputs) on the batch driver;
    each result is emitted as written (path, or a JSON line under --json); the mapping table
    goes to ``mapping`` at the end. ``key_file``: the UID/pseudonym key (default: random per run).
    Returns the exit code."""
    from medtools.core import batch, report
    from medtools.core.secrets import read_key_file

    run = make_deidentifier(read_key_file(key_file) if key_file is not None else None, date_shift=date_shift, pseudonymize=pseudonymize)
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, select_shard, skip_existing
    from medtools.core.io import DICOM_EXTS, NIFTI_EXTS

    items = select_shard(expand_inputs(inputs, exts=DICOM_EXTS + NIFTI_EXTS, output=output), shard)
    output = check_output_arg(output, len(items))

    def work(item):
        target = output_for(item, output, single=len(items) == 1)
        if skip_existing(target, overwrite):
            return batch.SKIPPED
        kind, warnings = deidentify(item.path, target, run)
        for message in warnings:
            report.warn(f"{item.path}: {message}")
        return {"input": str(item.path), "output": str(target), "format": kind, "warnings": warnings}

    outcome = batch.run_items(items, work, emit=batch.emitter(), total=len(items), description="deid", workers=batch.resolve_workers(workers))
    if mapping is not None:
        run.write_mapping(mapping)
        report.log(f"mapping written to {mapping} (keep it secret: it re-identifies)")
    return outcome.exit_code
