"""WADO-RS: studies and series from a PACS into ``DIR/<study>/<series>/<sop>.dcm``.

Each instance is written atomically (``core.io.atomic.atomic_open``: even a pull killed with
SIGKILL leaves no partial ``.dcm``). Before fetching, a QIDO-RS query lists the series' instances, and those already on
disk are skipped, so a rerun fetches only the rest: when a quarter or more is missing the series
is streamed in one multipart response (instances reach the disk one by one, never the whole
series in memory), otherwise the missing instances are fetched one by one. Instances come in the
transfer syntax the PACS holds them in (no transcoding).

Items for the batch driver are studies (``--shard K/N`` splits studies, never a study); the
stdout result of a study is the series folders this run wrote into.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError, UsageError
from medtools.pacs.client import Connection, check_reachable, check_uid, connect, remote

ORIGINAL = (("application/dicom", "*"),)  # the stored transfer syntax, not transcoded
STREAM_FRACTION = 0.25  # stream the whole series when at least this share of it is missing


@dataclass(frozen=True)
class Request:
    """One study, and the series wanted from it (empty: all of them)."""

    study: str
    series: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.study if not self.series else f"{self.study} ({len(self.series)} series)"


def parse_line(line: str) -> tuple[str, str | None] | None:
    """A line of stdin: ``STUDY``, ``STUDY SERIES``, or a JSON object with ``study_uid`` (and
    ``series_uid``), e.g. a line of ``pacs query --json``. Blank and ``#`` lines: None."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"stdin line {text[:60]!r}: not JSON") from None
        study, series = record.get("study_uid"), record.get("series_uid")
        if not study:
            raise UsageError(f"stdin line {text[:60]!r}: no study_uid")
        return check_uid(str(study), "study UID"), check_uid(str(series), "series UID") if series else None
    fields = text.replace(",", " ").split()
    if len(fields) > 2:
        raise UsageError(f"stdin line {text[:60]!r}: need STUDY_UID [SERIES_UID]")
    return check_uid(fields[0], "study UID"), check_uid(fields[1], "series UID") if len(fields) == 2 else None


def requests_from(uids: Sequence[str], *, study_uid: str | None, series_uid: Sequence[str] = (), stdin: Iterable[str] | None = None) -> list[Request]:
    """The studies to pull, in first-seen order, from ``--study-uid``/``--series-uid``, positional
    study UIDs and '-' (lines of stdin)."""
    import sys

    pairs: list[tuple[str, str | None]] = []
    if series_uid and not study_uid:
        raise UsageError("--series-uid needs --study-uid (WADO-RS addresses a series within its study)")
    if study_uid:
        study = check_uid(study_uid, "--study-uid")
        pairs += [(study, check_uid(s, "--series-uid")) for s in series_uid] or [(study, None)]
    for arg in uids:
        if arg == "-":
            for line in stdin if stdin is not None else sys.stdin:
                parsed = parse_line(line)
                if parsed is not None:
                    pairs.append(parsed)
        else:
            pairs.append((check_uid(arg, "study UID"), None))
    if not pairs:
        raise UsageError("nothing to pull: give --study-uid UID, study UIDs, or '-' to read UIDs from stdin")
    studies: dict[str, set[str] | None] = {}
    for study, series in pairs:
        if series is None or studies.get(study, set()) is None:
            studies[study] = None  # the whole study
        else:
            studies.setdefault(study, set()).add(series)  # type: ignore[union-attr]
    return [Request(study, tuple(sorted(series or ()))) for study, series in studies.items()]


def instance_path(output: Path, study: str, series: str, sop: str) -> Path:
    """``output/<study>/<series>/<sop>.dcm``; every name from the PACS stays below ``output``."""
    from medtools.core.paths import safe_part, under

    return under(output, Path(safe_part(study), safe_part(series), safe_part(sop, fallback="instance") + ".dcm"))


def series_folder(output: Path, study: str, series: str) -> Path:
    return instance_path(output, study, series, "x").parent


def write_instance(ds: Any, target: Path) -> None:
    """One dataset as a DICOM file (Part 10: preamble and file meta) through a file that has no
    name until it is complete (``atomic_open``): even SIGKILL leaves no partial ``.dcm``."""
    import pydicom

    from medtools.core.io.atomic import atomic_open
    from medtools.core.io.dicom import pydicom_major

    with atomic_open(target) as handle:
        if pydicom_major() >= 3:
            pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        else:  # pragma: no cover - pydicom 2
            pydicom.dcmwrite(handle, ds, write_like_original=False)


def list_series(client: Any, url: str, study: str) -> list[str]:
    from medtools.pacs.query import TAGS, _value

    with remote(url, f"study {study}"):
        records = client.search_for_series(study, fields=["SeriesInstanceUID"], get_remaining=True)
    return sorted({check_uid(str(_value(r, TAGS["series_uid"])), "series UID from the PACS") for r in records})


def list_instances(client: Any, url: str, study: str, series: str) -> list[str]:
    with remote(url, f"series {series}"):
        records = client.search_for_instances(study, series, fields=["SOPInstanceUID"], get_remaining=True)
    sops = []
    for record in records:
        values = (record.get("00080018") or {}).get("Value") or []
        if values:
            sops.append(check_uid(str(values[0]), "SOP Instance UID from the PACS"))
    return sops


def _datasets(client: Any, url: str, study: str, series: str, missing: Sequence[str], whole: bool) -> Iterator[Any]:
    """The missing instances of a series: one streamed multipart answer, or one request each."""
    from pydicom.errors import InvalidDicomError

    with remote(url, f"series {series}"):
        try:
            if whole:
                yield from client.iter_series(study, series, media_types=ORIGINAL)
            else:
                for sop in missing:
                    yield client.retrieve_instance(study, series, sop, media_types=ORIGINAL)
        except InvalidDicomError as exc:
            raise InputError(f"series {series}: the PACS sent an instance that is not DICOM Part 10 ({exc})") from None


def iter_instances(client: Any, url: str, request: Request) -> Iterator[Any]:
    """The instances of a study (or of its requested series) as datasets, series by series,
    streamed (the in-memory pull of ``medtools.api.pacs_pull``)."""
    series = list(request.series) or list_series(client, url, request.study)
    if not series:
        raise InputError(f"study {request.study}: not on the PACS (no series)")
    for uid in series:
        yield from _datasets(client, url, request.study, uid, (), True)


def pull_series(client: Any, url: str, study: str, series: str, output: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Fetch the instances of one series that ``output`` lacks; counts of fetched and present."""
    sops = list_instances(client, url, study, series)
    wanted = {sop: instance_path(output, study, series, sop) for sop in sops}
    missing = [sop for sop, target in wanted.items() if overwrite or not target.exists()]
    fetched = 0
    if missing:
        whole = len(missing) >= STREAM_FRACTION * len(sops)
        todo = set(missing)
        for ds in _datasets(client, url, study, series, missing, whole):
            sop = check_uid(str(getattr(ds, "SOPInstanceUID", "")), "SOP Instance UID from the PACS")
            if sop not in todo and sop in wanted:
                continue  # already on disk (the series was streamed whole)
            target = wanted.setdefault(sop, instance_path(output, study, series, sop))  # one QIDO did not list
            write_instance(ds, target)
            todo.discard(sop)
            fetched += 1
        if todo:
            raise InputError(f"series {series}: the PACS listed {len(todo)} instance(s) it did not send (first {sorted(todo)[0]})")
    return {"series_uid": series, "folder": str(series_folder(output, study, series)), "instances": len(sops), "fetched": fetched, "present": len(sops) - len(missing)}


def pull_study(client: Any, url: str, request: Request, output: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Every wanted series of one study (all of them when the request names none)."""
    series = list(request.series) or list_series(client, url, request.study)
    if not series:
        raise InputError(f"study {request.study}: not on the PACS (no series)")
    results = [pull_series(client, url, request.study, s, output, overwrite=overwrite) for s in series]
    if not any(r["instances"] for r in results):
        raise InputError(f"study {request.study}: no instances on the PACS")
    written = [r["folder"] for r in results if r["fetched"]]
    return {
        "study_uid": request.study,
        "outputs": written,
        "series": results,
        "fetched": sum(r["fetched"] for r in results),
        "present": sum(r["present"] for r in results),
    }


def pull_job(conn: Connection, uids: Sequence[str], *, output: Path | None, study_uid: str | None = None, series_uid: Sequence[str] = (), shard: str | None = None, overwrite: bool = False, workers: int | None = None) -> int:
    """``pacs pull``: studies on the batch driver (per-study errors, resume, --shard, --workers);
    written series folders on stdout (a JSON line per study under --json). Returns the exit code."""
    from medtools.core import batch
    from medtools.core.inputs import select_shard

    if output is None:
        raise UsageError("pacs pull needs -o DIR (instances go to DIR/<study>/<series>/<sop>.dcm)")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file; pull writes a folder")
    requests = select_shard(requests_from(uids, study_uid=study_uid, series_uid=series_uid), shard, key=lambda r: r.study)
    client = connect(conn)
    check_reachable(client, conn.url)
    totals = {"fetched": 0, "present": 0}
    lock = threading.Lock()

    def work(request: Request) -> Any:
        result = pull_study(client, conn.url, request, output, overwrite=overwrite)
        with lock:
            totals["fetched"] += result["fetched"]
            totals["present"] += result["present"]
        return result if result["fetched"] else batch.SKIPPED

    outcome = batch.run_items(requests, work, emit=batch.emitter(), total=len(requests), description="pull", workers=batch.resolve_workers(workers))
    from medtools.core import report

    report.log(f"pull: {totals['fetched']} instance(s) fetched, {totals['present']} already present, {outcome.failed} stud(ies) failed")
    return outcome.exit_code
