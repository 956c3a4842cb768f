"""A DICOMweb connection: the URL checked, credentials from files or the environment, bounded
retries and timeouts, and every failure of the wire as one typed error.

The protocol (QIDO-RS, WADO-RS, STOW-RS and their multipart bodies) is ``dicomweb-client``'s
``DICOMwebClient``; this module only builds its ``requests`` session and maps what goes wrong:

* HTTP 401/403 → ``IntegrityError`` (exit 4): wrong password or token, or no right to do this;
* refused, reset, timed out, HTTP 5xx after the retries → ``RemoteError`` (exit 6);
* any other HTTP 4xx → ``InputError`` (exit 5): the PACS does not have or will not take this.

Credentials never come from argv (other users see it in ``ps``): a bearer token from
``--token-file`` or ``MEDTOOLS_PACS_TOKEN``; HTTP basic with ``--user`` (or ``MEDTOOLS_PACS_USER``)
and a password from ``--password-file`` or ``MEDTOOLS_PACS_PASSWORD``. Secret files open to
group/others are refused (``core.secrets.check_private_permissions``). A URL with
``user:password@`` in it is refused for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medtools.core.errors import InputError, IntegrityError, RemoteError, UsageError

TOKEN_ENV = "MEDTOOLS_PACS_TOKEN"
USER_ENV = "MEDTOOLS_PACS_USER"
PASSWORD_ENV = "MEDTOOLS_PACS_PASSWORD"
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class Connection:
    """Where and how to reach a DICOMweb service (nothing secret is printed by repr)."""

    url: str
    token_file: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0  # seconds to connect and between bytes read
    retries: int = 2  # further attempts after a refused/reset connection or HTTP 429/503/504
    token: str | None = field(default=None, repr=False)  # in memory (Python callers), never from argv
    password: str | None = field(default=None, repr=False)


def check_url(url: str) -> str:
    """The DICOMweb root (``http(s)://host[:port]/path``), without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not a DICOMweb URL: need http(s)://HOST[:PORT]/PATH (Orthanc: http://HOST:8042/dicom-web)")
    if parts.username or parts.password:
        raise UsageError("credentials in the URL are visible to every user of this machine; use --user with --password-file, --token-file or the environment (docs/pacs.md)")
    if parts.query or parts.fragment:
        raise UsageError(f"{url!r}: a DICOMweb root has no query or fragment")
    return url.rstrip("/")


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters); it becomes part of a URL and a path."""
    uid = uid.strip()
    if not UID.match(uid) or len(uid) > 64:
        raise UsageError(f"{what} {uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def _secret(path: Path | None, env: str, what: str) -> str | None:
    from medtools.core.secrets import check_private_permissions

    if path is not None:
        check_private_permissions(path, what)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
        value = text.splitlines()[0].strip() if text.strip() else ""
        if not value:
            raise UsageError(f"{what} {path} is empty")
        return value
    return os.environ.get(env) or None


def session(conn: Connection) -> Any:
    """A ``requests`` session with the credentials, CA bundle and bounded connection retries."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    token = conn.token or _secret(conn.token_file, TOKEN_ENV, "token file")
    user = conn.user or os.environ.get(USER_ENV) or None
    password = conn.password if conn.password is not None else _secret(conn.password_file, PASSWORD_ENV, "password file")
    if token and (user or conn.password_file is not None):
        raise UsageError("give either a token (--token-file, MEDTOOLS_PACS_TOKEN) or --user with a password, not both")
    if conn.password_file is not None and not user:
        raise UsageError("--password-file needs --user (or MEDTOOLS_PACS_USER)")
    if user and password is None:
        raise UsageError(f"--user {user} needs a password: --password-file FILE or {PASSWORD_ENV}")
    if conn.ca_file is not None and not Path(conn.ca_file).is_file():
        raise UsageError(f"--ca-file {conn.ca_file}: no such file")
    http = requests.Session()
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    elif user:
        http.auth = (user, password)
    if conn.ca_file is not None:
        http.verify = str(conn.ca_file)
    # connection errors (refused, reset before a reply) are retried here with back-off; HTTP
    # 429/503/504 by dicomweb-client's own retry (set in connect); reads are never re-sent
    retry = Retry(total=conn.retries, connect=conn.retries, read=0, status=0, redirect=3, backoff_factor=0.2, allowed_methods=None)
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def connect(conn: Connection) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``conn``."""
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError:
        raise UsageError("pacs needs the dicomweb-client package: pip install 'medtools[pacs]'") from None

    url = check_url(conn.url)
    client = DICOMwebClient(url, session=session(conn), timeout=conn.timeout, chunk_size=1 << 20)
    client.set_http_retry_params(retry=conn.retries > 0, max_attempts=conn.retries + 1, wait_exponential_multiplier=200)
    return client


def _reason(response: Any) -> str:
    text = (getattr(response, "reason", "") or "").strip()
    return f"HTTP {response.status_code}" + (f" {text}" if text else "")


@contextlib.contextmanager
def remote(url: str, what: str = "") -> Iterator[None]:
    """Turn what the wire raises inside the body into one typed, one-line error."""
    import requests

    where = f"{what} at {url}" if what else url
    try:
        yield
    except requests.HTTPError as exc:
        response = exc.response
        code = response.status_code if response is not None else 0
        if code in (401, 403):
            raise IntegrityError(f"{url}: {_reason(response)}: authentication refused (check --user/--password-file or --token-file)") from None
        if code >= 500 or code in (408, 429):
            raise RemoteError(f"{where}: {_reason(response)} (after retries)") from None
        raise InputError(f"{where}: {_reason(response)}") from None
    except requests.exceptions.SSLError as exc:
        raise IntegrityError(f"{url}: TLS certificate not trusted ({type(exc).__name__}); give the CA with --ca-file") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RemoteError(f"{url} does not answer ({_cause(exc)})") from None
    except requests.RequestException as exc:
        raise RemoteError(f"{where}: {type(exc).__name__}: {exc}") from None


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests error, short (connection refused, timed out, ...)."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Connection reset", "timed out", "Temporary failure in name resolution"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


def check_reachable(client: Any, url: str) -> None:
    """One small QIDO request: a PACS that does not answer or refuses us fails here, once,
    before any item (exit 6 or 4)."""
    with remote(url, "QIDO-RS"):
        client.search_for_studies(limit=1)
