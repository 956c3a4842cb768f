"""QIDO-RS: the series of a PACS that match a patient, a study, a modality and a date range.

One row per series: ``study_uid``, ``series_uid``, ``patient_id``, ``modality``, ``date``,
``instances`` (and ``description``), from one series-level query with the study-level keys as
filters (DICOM PS3.18 §10.6: relational queries on the ``/series`` resource).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtools.core.errors import UsageError
from medtools.pacs.client import Connection, check_uid, connect, remote

DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality", "StudyDate", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")
CSV_COLUMNS = ("patient", "case", "visit", "image", "study_uid", "series_uid", "modality", "date", "instances")
TAGS = {  # DICOM JSON keys (PS3.18 F.2) of the fields read back
    "study_uid": "0020000D",
    "series_uid": "0020000E",
    "patient_id": "00100020",
    "modality": "00080060",
    "date": "00080020",
    "description": "0008103E",
    "instances": "00201209",
}


def check_date(date: str | None) -> str | None:
    """``YYYYMMDD``, ``A-B``, ``A-`` or ``-B`` (DICOM date range matching); also with dashes inside
    the dates (2024-01-31..2024-02-29 is written 20240131-20240229)."""
    if date is None:
        return None
    text = date.strip()
    if not DATE.match(text) or text in ("", "-"):
        raise UsageError(f"--date {date!r}: need YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left open)")
    return text


def _value(record: dict[str, Any], tag: str) -> Any:
    values = (record.get(tag) or {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):  # a person name
        value = value.get("Alphabetic")
    return value


def series_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {key: _value(record, tag) for key, tag in TAGS.items()}
    row["instances"] = int(row["instances"]) if row["instances"] not in (None, "") else None
    return {key: ("" if value is None and key != "instances" else value) for key, value in row.items()}


def query_series(client: Any, url: str, *, patient_id: str | None = None, study_uid: str | None = None, modality: str | None = None, date: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The matching series as rows (sorted by date, study, series)."""
    filters: dict[str, Any] = {}
    if patient_id:
        filters["PatientID"] = patient_id
    if modality:
        filters["Modality"] = modality.upper()
    if date:
        filters["StudyDate"] = check_date(date)
    study = check_uid(study_uid, "--study-uid") if study_uid else None
    with remote(url, "QIDO-RS"):
        records = client.search_for_series(study, fields=list(FIELDS), search_filters=filters, limit=limit, get_remaining=limit is None)
    rows = [series_row(r) for r in records]
    if study:  # a study-scoped query may leave the study key out of each answer
        for row in rows:
            row["study_uid"] = row["study_uid"] or study
    return sorted(rows, key=lambda r: (str(r["date"]), str(r["study_uid"]), str(r["series_uid"])))


def manifest_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A medtools manifest (patient, case, visit, image, ...): ``image`` is the series folder that
    ``pacs pull -o DIR`` writes, relative to DIR; write the CSV into DIR and its paths resolve."""
    from medtools.core.paths import safe_part

    out = []
    for row in rows:
        study, series = safe_part(str(row["study_uid"])), safe_part(str(row["series_uid"]))
        out.append({"patient": row["patient_id"] or study, "case": series, "visit": row["date"], "image": f"{study}/{series}", **{k: row[k] for k in ("study_uid", "series_uid", "modality", "date", "instances")}})
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import csv

    from medtools.core.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest_rows(rows))


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The human table (stderr)."""
    head = ("date", "patient_id", "modality", "instances", "study_uid", "series_uid", "description")
    cells = [head] + [tuple("" if row.get(k) is None else str(row.get(k)) for k in head) for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    return "\n".join(lines + [f"{len(rows)} series in {len({r['study_uid'] for r in rows})} studies"])


def query_job(conn: Connection, *, patient_id: str | None = None, study_uid: str | None = None, modality: str | None = None, date: str | None = None, limit: int | None = None, output: Path | None = None) -> int:
    """``pacs query``: the table on stderr; JSON Lines on stdout under --json; ``output``: the
    manifest CSV (its path on stdout). Nothing found is exit 5."""
    from medtools.core import report
    from medtools.core.context import current
    from medtools.core.errors import InputError

    check_date(date)
    client = connect(conn)
    rows = query_series(client, conn.url, patient_id=patient_id, study_uid=study_uid, modality=modality, date=date, limit=limit)
    if not rows:
        raise InputError(f"no series on {conn.url} match the query")
    report.log(render_table(rows))
    if output is not None:
        write_csv(rows, output)
    if current().json:
        for row in rows:
            report.emit_jsonl(row)
    elif output is not None:
        report.emit_path(output)
    return 0
