"""Run the service: load once, bind (loopback by default), print the address, stop cleanly.

The socket is bound before uvicorn starts, so ``--port 0`` picks a free port and the
address printed on stderr is the real one. SIGTERM and Ctrl-C (SIGINT) both ask uvicorn
to shut down gracefully (in-flight requests finish, the temporary folder is removed) and
``serve`` returns 0: the process exits 0, not 143/130. A second Ctrl-C forces the exit.

The client address (log-in limits, audit log) is the TCP peer's. ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are read only from the proxies named with ``--forwarded-allow-ips``;
without it they are ignored from everyone, loopback included (uvicorn would otherwise trust
them from 127.0.0.1, so any local client could pose as any address).
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from pathlib import Path

from medtools.core import report
from medtools.core.errors import UsageError

LOOPBACK = "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forwarded_allow_ips(value: str | None) -> list[str] | None:
    """The proxies trusted to set X-Forwarded-For: addresses or networks, comma-separated, or
    ``*`` (anyone: only when nothing but the proxy can reach the port); None: trust no one."""
    if value is None:
        return None
    entries = [item.strip() for item in value.split(",") if item.strip()]
    if not entries:
        raise UsageError("--forwarded-allow-ips needs at least one address (e.g. 127.0.0.1 for a proxy on this machine)")
    if "*" in entries:
        return ["*"]
    out = []
    for entry in entries:
        try:
            out.append(str(ipaddress.ip_network(entry, strict=False)) if "/" in entry else str(ipaddress.ip_address(entry)))
        except ValueError:
            raise UsageError(f"--forwarded-allow-ips: {entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8, ::1, or *)") from None
    return out


def uvicorn_options(trusted_proxies: list[str] | None) -> dict:
    """uvicorn.Config's proxy settings: proxy headers only from ``trusted_proxies``."""
    if not trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(trusted_proxies)}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    *,
    models: Path,
    store: Path,
    host: str = LOOPBACK,
    port: int = 8000,
    index: Path | None = None,
    public: Path | None = None,
    index_secret: Path | None = None,
    audit_log: Path | None = None,
    token_ttl: float | None = None,
    max_failures: int | None = None,
    max_upload_mb: float | None = None,
    trusted_proxies: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    allow_identifying: bool = False,
    pacs: str | None = None,
    pacs_user: str | None = None,
    pacs_password_file: Path | None = None,
    pacs_token_file: Path | None = None,
    pacs_ca_file: Path | None = None,
) -> int:
    """Load the models and the key store, then serve until SIGTERM/Ctrl-C; returns 0.
    ``allow_identifying``: load checkpoints that name their training data (refused otherwise).
    ``pacs``: a DICOMweb root the page lists and opens studies from, with the service's account."""
    from medtools.core.errors import UsageError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UsageError(f"medtools serve needs {exc.name}: pip install 'medtools[serve]'") from None
    import uvicorn

    from medtools.serve.app import build

    proxies = forwarded_allow_ips(trusted_proxies)  # a bad value: exit 2 before anything loads
    from medtools.serve.backends import PacsService

    if pacs is None and any(v is not None for v in (pacs_user, pacs_password_file, pacs_token_file, pacs_ca_file)):
        raise UsageError("--pacs-user, --pacs-password-file, --pacs-token-file and --pacs-ca-file go with --pacs URL")
    pacs_service = PacsService(pacs, user=pacs_user, password_file=pacs_password_file, token_file=pacs_token_file, ca_file=pacs_ca_file) if pacs else None

    audit_log = audit_log if audit_log is not None else Path(store).with_name(Path(store).name + ".audit.jsonl")
    app, state = build(
        models, store, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"] if _is_loopback(host) else None, index=index, public=public, index_secret=index_secret, audit_log=audit_log, ttl=token_ttl, max_failures=max_failures,
        max_upload=int(max_upload_mb * 1024 * 1024) if max_upload_mb else None, device=device, precision=precision,
        allow_identifying=allow_identifying, pacs=pacs_service,
    )
    try:
        sock = bind(host, port)
        actual = sock.getsockname()[1]
        if not _is_loopback(host):
            report.warn(f"listening on {host}, not loopback: other machines can reach this plain-HTTP service; put it behind TLS")
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join(f"{m.name} ({m.kind})" for m in state.models.values())
        report.log(f"medtools serve: {len(state.models)} model(s) loaded: {names}; audit log {audit_log}")
        if proxies:
            report.log(f"medtools serve: client addresses from X-Forwarded-For sent by {', '.join(proxies)}")
        if state.index is not None:
            if state.index.secret is not None:
                report.log(f"medtools serve: encrypted index {index}; with --index-secret the service searches it for the page (it sees the query images)")
            else:
                report.log(f"medtools serve: encrypted index {index} (scores only; the secret context stays with the client)")
        if pacs_service is not None:
            report.log(f"medtools serve: studies from the PACS at {pacs_service.url}")
        # the address is printed even with -q: scripts read it (e.g. with --port 0)
        print(f"medtools serve: listening on http://{shown}:{actual} (API docs at http://{shown}:{actual}/docs)", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=10, **uvicorn_options(proxies))
        server = _make_server(config)
        server.run(sockets=[sock])
        if server.stopped_by is not None:
            report.log(f"medtools serve: stopped ({signal.Signals(server.stopped_by).name})")
    finally:
        state.close()
    return 0


def _make_server(config):
    """A uvicorn.Server whose signal handlers stop it without re-raising the signal afterwards.

    (uvicorn >= 0.29 re-raises the captured signal after shutdown, so the process would die
    of SIGTERM or KeyboardInterrupt; a clean stop exits 0.)
    """
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig, frame):  # noqa: ANN001
            self.stopped_by = sig
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)
