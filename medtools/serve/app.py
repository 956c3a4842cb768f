"""The FastAPI app: the /v1 routers (one per family, :mod:`medtools.serve.routers`) and the
doctor's page at /.

Each endpoint is a thin adapter over a :mod:`medtools.api` function: it takes the upload
(decoded in memory where the reader can, :mod:`medtools.serve.uploads`), calls the function by
keyword with the request's own run context (``ctx=``, built per request from the service's
settings, :mod:`medtools.serve.deps`) and answers with the result. Errors are the CLI's
one-line reasons with the status of their type (:mod:`medtools.serve.errors`): unreadable or
unsupported upload 422, bad request 400, not logged in or wrong password 401 (no hint which
part), not a recipient 403, body over the limit 413, too many failed log-ins 429.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from medtools.core.context import RunContext
from medtools.core.errors import UsageError
from medtools.serve import backends
from medtools.serve.auth import Authenticator
from medtools.serve.routers import API  # noqa: F401  (re-exported)
from medtools.serve.uploads import private_root, safe_name  # noqa: F401  (re-exported)

STATIC = Path(__file__).with_name("static")
# The page's policy: its own script and style only (no inline script, nothing from elsewhere),
# pictures from itself and from the blob: URLs it makes of answers, no framing, forms only to itself.
PAGE_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024


@dataclass
class ServeState:
    """Everything loaded once at start-up and shared by the requests.

    ``settings`` is the service's run context (device, precision, quiet, NaN policy of the
    ``serve`` command); each request gets a fresh copy of it (:func:`medtools.serve.deps.call`).
    """

    models: dict[str, backends.LoadedModel]
    auth: Authenticator
    index: Optional[backends.IndexService] = None
    pacs: Optional[backends.PacsService] = None
    max_upload: int = DEFAULT_MAX_UPLOAD
    tmp_root: Path = field(default_factory=lambda: private_root())
    settings: RunContext = field(default_factory=RunContext)

    def close(self) -> None:
        shutil.rmtree(self.tmp_root, ignore_errors=True)


# ---------------------------------------------------------------- request size limit


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, declared (Content-Length) or
    streamed (chunked). Once a streamed body passes the limit, reading it fails and whatever
    the app answers to that (FastAPI: 400 "error parsing the body"; Starlette: 500) is
    replaced by the 413."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_413(send, self.limit)
        seen = 0
        over = False
        started = False

        async def counting_receive() -> dict:
            nonlocal seen, over
            if over:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body: the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _send_413(send, self.limit)


async def _send_413(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes (--max-upload-mb)"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the app


def create_app(state: ServeState):
    """The FastAPI app over ``state`` (models and key store loaded once)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    import medtools
    from medtools.core.errors import MedtoolsError
    from medtools.serve import routers
    from medtools.serve.errors import status_of

    try:  # /docs from files in the package (fastapi-offline), not from a CDN: hospitals are often offline
        from fastapi_offline import FastAPIOffline as make_app
    except ModuleNotFoundError:
        make_app = FastAPI
    app = make_app(
        title="medtools",
        version=medtools.__version__,
        description="The medtools command-line functions as a local REST service (PACS/HIS integration) and the doctor's page. Log in at /v1/login; send the token as `Authorization: Bearer TOKEN`.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.medtools = state

    @app.exception_handler(MedtoolsError)
    async def medtools_error(request: Request, exc: MedtoolsError):
        status, headers = status_of(exc)
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    routers.include(app, state)

    @app.get("/", include_in_schema=False)
    def page() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def build(models_dir: Path, store: Path, *, allowed_hosts: list[str] | None = None, index: Path | None = None, public: Path | None = None, index_secret: Path | None = None, pacs: Any = None, audit_log: Path | None = None, ttl: float | None = None, max_failures: int | None = None, max_upload: int | None = None, device: str | None = None, precision: str | None = None, settings: RunContext | None = None, allow_identifying: bool = False):
    """Load models and key store once → (ASGI app with the body limit, state). ``settings``:
    the service's run context (default: the caller's, e.g. the ``serve`` command's), with
    ``device`` and ``precision`` set. A checkpoint naming its training data is refused (exit 3)
    unless ``allow_identifying`` (``backends.load_models``). ``pacs``: a
    :class:`medtools.serve.backends.PacsService` to open studies from."""
    from medtools.core import context
    from medtools.serve.auth import DEFAULT_MAX_FAILURES, DEFAULT_TTL, RateLimiter

    auth = Authenticator(store, audit_log=audit_log, ttl=ttl or DEFAULT_TTL, limiter=RateLimiter(max_failures or DEFAULT_MAX_FAILURES))  # cheap: first
    if (index is None) != (public is None):
        raise UsageError("--index DIR and --public CTX go together (the index and its public CKKS context)")
    base = settings if settings is not None else context.current()
    settings = base.derive(device=device if device is not None else base.device, precision=precision if precision is not None else base.precision)
    if index_secret is not None and index is None:
        raise UsageError("--index-secret goes with --index DIR --public CTX")
    index_service = backends.IndexService.open(index, public, index_secret) if index is not None else None
    models = backends.load_models(models_dir, device=settings.device, precision=settings.precision, allow_identifying=allow_identifying)
    state = ServeState(models=models, auth=auth, index=index_service, pacs=pacs, max_upload=max_upload or DEFAULT_MAX_UPLOAD, tmp_root=private_root(), settings=settings)
    app = create_app(state)
    if allowed_hosts:  # Host header check: a web page that rebinds its DNS name to 127.0.0.1 gets 400
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return BodyLimit(app, state.max_upload), state
