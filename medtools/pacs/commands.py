"""PACS commands: `pacs query`, `pacs pull`, `pacs push` over DICOMweb (QIDO-RS, WADO-RS, STOW-RS).

Thin layer: parse flags, call one plain function. Credentials are never flag values: a token
or a password comes from a file (mode 0600) or the environment (docs/pacs.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import Inputs, ItemWorkers, Json, Overwrite, Quiet, Shard, command

pacs_app = typer.Typer(help="DICOMweb: query, pull and push studies of a PACS (Orthanc, dcm4chee, cloud endpoints).", no_args_is_help=True)

Url = Annotated[str, typer.Argument(help="DICOMweb root, e.g. http://pacs:8042/dicom-web (no credentials in it).", show_default=False)]
TokenFile = Annotated[Optional[Path], typer.Option("--token-file", help="Bearer token in this file (mode 0600); else MEDTOOLS_PACS_TOKEN.")]
User = Annotated[Optional[str], typer.Option("--user", help="HTTP basic user (else MEDTOOLS_PACS_USER); the password from --password-file or MEDTOOLS_PACS_PASSWORD.")]
PasswordFile = Annotated[Optional[Path], typer.Option("--password-file", help="The --user's password, first line of this file (mode 0600).")]
CaFile = Annotated[Optional[Path], typer.Option("--ca-file", help="CA bundle (PEM) that signed the PACS's HTTPS certificate.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait to connect and between bytes of an answer.", min=0.1)]
Retries = Annotated[int, typer.Option("--retries", help="Further attempts after a refused connection or HTTP 429/503/504 (back-off).", min=0, max=10)]
InsecurePermissions = Annotated[bool, typer.Option("--insecure-permissions", help="Accept a token or password file that group/others may read (refused by default: exit 2).")]
StudyUid = Annotated[Optional[str], typer.Option("--study-uid", help="Study Instance UID.")]


def register(app: typer.Typer) -> None:
    app.add_typer(pacs_app, name="pacs")


@pacs_app.command("query")
@command
def query(
    url: Url,
    patient: Annotated[Optional[str], typer.Option("--patient", help="Patient ID (QIDO matching: * and ? wildcards).")] = None,
    study_uid: StudyUid = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="Series modality, e.g. MR, CT, SEG.")] = None,
    date: Annotated[Optional[str], typer.Option("--date", help="Study date YYYYMMDD or range YYYYMMDD-YYYYMMDD (an end may be open).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many series.", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also write a manifest CSV here (image = STUDY/SERIES, the folder `pacs pull -o DIR` writes; put the CSV in DIR).")] = None,
    token_file: TokenFile = None,
    user: User = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    timeout: Timeout = 30.0,
    retries: Retries = 2,
    insecure_permissions: InsecurePermissions = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Series on a PACS (QIDO-RS): a table on stderr; --json: JSON Lines (study_uid, series_uid, patient_id, modality, date, instances)."""
    from medtools.pacs.client import Connection
    from medtools.pacs.query import query_job

    return query_job(Connection(url=url, token_file=token_file, user=user, password_file=password_file, ca_file=ca_file, timeout=timeout, retries=retries), patient_id=patient, study_uid=study_uid, modality=modality, date=date, limit=limit, output=output)


@pacs_app.command("pull")
@command
def pull(
    url: Url,
    uids: Annotated[Optional[list[str]], typer.Argument(help="Study UIDs, or '-': lines of STUDY [SERIES] or `pacs query --json` records on stdin.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder: DIR/<study>/<series>/<sop>.dcm.")] = None,
    study_uid: StudyUid = None,
    series_uid: Annotated[Optional[list[str]], typer.Option("--series-uid", help="Only this series of --study-uid (repeatable).")] = None,
    shard: Shard = None,
    workers: ItemWorkers = None,
    overwrite: Overwrite = False,
    token_file: TokenFile = None,
    user: User = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    timeout: Timeout = 30.0,
    retries: Retries = 2,
    insecure_permissions: InsecurePermissions = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Fetch studies/series (WADO-RS) into DIR/<study>/<series>/<sop>.dcm; reruns fetch only what is missing; series folders on stdout."""
    from medtools.pacs.client import Connection
    from medtools.pacs.pull import pull_job

    return pull_job(Connection(url=url, token_file=token_file, user=user, password_file=password_file, ca_file=ca_file, timeout=timeout, retries=retries), uids or [], output=output, study_uid=study_uid, series_uid=series_uid or [], shard=shard, overwrite=overwrite, workers=workers)


@pacs_app.command("push")
@command
def push(
    url: Url,
    inputs: Inputs,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Instances per STOW-RS request.", min=1)] = 16,
    shard: Shard = None,
    token_file: TokenFile = None,
    user: User = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    timeout: Timeout = 30.0,
    retries: Retries = 2,
    insecure_permissions: InsecurePermissions = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Store DICOM files/folders in a PACS (STOW-RS, bounded batches); each stored SOP Instance UID on stdout."""
    from medtools.pacs.client import Connection
    from medtools.pacs.push import push_job

    return push_job(Connection(url=url, token_file=token_file, user=user, password_file=password_file, ca_file=ca_file, timeout=timeout, retries=retries), inputs, batch_size=batch_size, shard=shard)
