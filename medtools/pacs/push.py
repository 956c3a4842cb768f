"""STOW-RS: DICOM files into a PACS, in bounded batches, each instance's fate read back.

A batch of ``batch_size`` files is one STOW-RS request (dicomweb-client builds the multipart
body). The answer's Referenced SOP Sequence names the stored instances (an instance the PACS
already held is among them, or is a failure with reason 0x0111 "duplicate SOP instance": both
are success); its Failed SOP Sequence names the refused ones with their reason code, and those
are item errors (exit 1 when others were stored). Memory holds one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError
from medtools.pacs.client import Connection, check_reachable, connect, remote

DUPLICATE = 0x0111  # PS3.4 C.4.2.1.4: duplicate SOP instance
REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}


def read_instance(path: Path) -> Any:
    """A DICOM file as a dataset ready to send: Part 10 preamble and file meta present (a PACS
    stores the bytes as sent, and a file without them is one that WADO-RS clients cannot read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise InputError(f"{path}: not a DICOM file ({exc})") from None
    if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        raise InputError(f"{path}: no SOP/Study/Series Instance UID: not an instance a PACS can store")
    return prepare(ds)


def prepare(ds: Any) -> Any:
    """``ds`` with the Part 10 preamble and file meta a PACS should store (in place)."""
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128
    if hasattr(ds, "ensure_file_meta"):
        ds.ensure_file_meta()
    meta = ds.file_meta
    meta.setdefault("MediaStorageSOPClassUID", ds.SOPClassUID)
    meta.setdefault("MediaStorageSOPInstanceUID", ds.SOPInstanceUID)
    if "TransferSyntaxUID" not in meta:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        meta.TransferSyntaxUID = ImplicitVRLittleEndian if getattr(ds, "is_implicit_VR", False) else ExplicitVRLittleEndian
    return ds


def _sequence(answer: Any, keyword: str) -> list[Any]:
    return list(getattr(answer, keyword, None) or [])


def _answer_of(exc: Any) -> Any | None:
    """The STOW-RS answer carried by an HTTP error (409: every instance failed), if any."""
    import pydicom

    response = getattr(exc, "response", None)
    if response is None or response.status_code not in (400, 409) or not response.content:
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except ValueError:
        return None


def store(client: Any, url: str, datasets: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """STOW-RS of ``datasets`` → SOP Instance UID → ("stored", "") or ("failed", reason)."""
    import requests

    try:
        with remote(url, "STOW-RS"):
            try:
                answer = client.store_instances(list(datasets))
            except requests.HTTPError as exc:
                answer = _answer_of(exc)
                if answer is None:
                    raise
    except InputError as exc:  # a 4xx without a per-instance answer: the whole batch was refused
        return {str(ds.SOPInstanceUID): ("failed", str(exc)) for ds in datasets}
    fates: dict[str, tuple[str, str]] = {}
    for item in _sequence(answer, "ReferencedSOPSequence"):
        fates[str(item.ReferencedSOPInstanceUID)] = ("stored", "")
    for item in _sequence(answer, "FailedSOPSequence"):
        code = int(getattr(item, "FailureReason", 0) or 0)
        if code == DUPLICATE:
            fates[str(item.ReferencedSOPInstanceUID)] = ("stored", "")
        else:
            fates.setdefault(str(item.ReferencedSOPInstanceUID), ("failed", f"refused by the PACS: {REASONS.get(code, 'failure')} (0x{code:04X})"))
    return fates


def push_job(conn: Connection, inputs: Sequence[str], *, batch_size: int = 16, shard: str | None = None) -> int:
    """``pacs push``: files, folders or '-' → STOW-RS in batches; each stored SOP Instance UID on
    stdout (a JSON line per instance under --json). Returns the exit code."""
    from medtools.core import batch, report
    from medtools.core.inputs import expand_inputs, select_shard
    from medtools.core.io import DICOM_EXTS

    items = select_shard(expand_inputs(inputs, exts=DICOM_EXTS), shard)
    client = connect(conn)
    check_reachable(client, conn.url)

    def load(item: Any) -> Any:
        return read_instance(item.path)

    def work(loaded: list[tuple[Any, Any]]) -> Iterable[tuple[Any, Any]]:
        fates = store(client, conn.url, [ds for _, ds in loaded])
        for item, ds in loaded:
            sop = str(ds.SOPInstanceUID)
            status, reason = fates.get(sop, ("failed", "not named in the PACS's answer"))
            if status == "stored":
                yield item, {"input": str(item.path), "sop_uid": sop, "study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID), "status": status}
            else:
                yield item, InputError(f"{item.path}: {sop}: {reason}")

    outcome = batch.run_batches(items, load, work, batch_size=batch_size, emit=batch.emitter(paths=lambda r: [r["sop_uid"]]), name=lambda i: str(i.path), description="push")
    report.log(f"push: {outcome.ok} instance(s) stored, {outcome.failed} failed")
    return outcome.exit_code
