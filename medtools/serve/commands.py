"""`medtools serve`: thin Typer layer over :func:`medtools.serve.server.serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import Device, Precision, Quiet, command


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


@command
def serve(
    models: Annotated[Path, typer.Option("--models", help="Folder of checkpoints (.safetensors), each loaded once at start-up; its kind comes from its metadata.")],
    store: Annotated[Path, typer.Option("--store", help="Key store of `medtools keys`: its doctors log in with their passwords.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind (default loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: a free one; the address is printed on stderr).", min=0, max=65535)] = 8000,
    index: Annotated[Optional[Path], typer.Option("--index", help="An encrypted index folder (`medtools index build`): /v1/index/score scores encrypted queries on it.")] = None,
    public: Annotated[Optional[Path], typer.Option("--public", help="The index's public CKKS context (ctx/public; a secret context is refused).")] = None,
    index_secret: Annotated[Optional[Path], typer.Option("--index-secret", help="The index's secret CKKS context (ctx/secret): the page searches similar cases by image; the service then sees the query images.")] = None,
    audit_log: Annotated[Optional[Path], typer.Option("--audit-log", help="JSON Lines audit of log-ins, encrypts and decrypts (default STORE.audit.jsonl).")] = None,
    token_ttl: Annotated[Optional[float], typer.Option("--token-ttl", help="Session lifetime in seconds (default 900).", min=1)] = None,
    max_failures: Annotated[Optional[int], typer.Option("--max-failures", help="Failed log-ins per user and per client in 5 minutes before 429 (default 5).", min=1)] = None,
    max_upload_mb: Annotated[Optional[float], typer.Option("--max-upload-mb", help="Largest request body in MiB (default 512); larger → 413.", min=0.001)] = None,
    forwarded_allow_ips: Annotated[Optional[str], typer.Option("--forwarded-allow-ips", help="Proxies (IPs or networks, comma-separated, or *) whose X-Forwarded-For gives the client address; default none: headers ignored, even from loopback.")] = None,
    allow_identifying_checkpoints: Annotated[bool, typer.Option("--allow-identifying-checkpoints", help="Load checkpoints whose metadata names their training data (clear case/patient ids, paths); refused by default (exit 3): serve a `medtools ckpt strip` copy instead.")] = False,
    pacs: Annotated[Optional[str], typer.Option("--pacs", help="DICOMweb root of a PACS (e.g. http://pacs:8042/dicom-web): the page lists its series and opens one to segment.")] = None,
    pacs_user: Annotated[Optional[str], typer.Option("--pacs-user", help="The service's HTTP basic user on the PACS (password from --pacs-password-file or MEDTOOLS_PACS_PASSWORD).")] = None,
    pacs_password_file: Annotated[Optional[Path], typer.Option("--pacs-password-file", help="The --pacs-user's password, first line of this file (mode 0600).")] = None,
    pacs_token_file: Annotated[Optional[Path], typer.Option("--pacs-token-file", help="A bearer token for the PACS in this file (mode 0600).")] = None,
    pacs_ca_file: Annotated[Optional[Path], typer.Option("--pacs-ca-file", help="CA bundle (PEM) that signed the PACS's HTTPS certificate.")] = None,
    device: Device = None,
    precision: Precision = None,
    quiet: Quiet = False,
) -> int:
    """A local REST API (/v1, OpenAPI at /docs) and the doctor's web page over the same functions.

    Stops cleanly on SIGTERM or Ctrl-C (exit 0). Needs the serve extra: pip install 'medtools\\[serve]'.
    """
    from medtools.serve.server import serve as run

    return run(models=models, store=store, host=host, port=port, index=index, public=public, index_secret=index_secret, audit_log=audit_log, token_ttl=token_ttl, max_failures=max_failures, max_upload_mb=max_upload_mb, trusted_proxies=forwarded_allow_ips, device=device, precision=precision, allow_identifying=allow_identifying_checkpoints, pacs=pacs, pacs_user=pacs_user, pacs_password_file=pacs_password_file, pacs_token_file=pacs_token_file, pacs_ca_file=pacs_ca_file)
