"""What every endpoint is given (FastAPI ``Depends``): the service, the logged-in doctor, and
the request's own run context.

The service (:class:`medtools.serve.app.ServeState`) hangs on ``app.state.medtools``; nothing
is module-level. Per request, :func:`call` checks the session (401 without one) and builds a
fresh :class:`medtools.core.context.RunContext` from the service's settings (device,
precision, quiet and NaN policy given at start-up): the endpoint passes it to the
:mod:`medtools.api` function as ``ctx=``, so a request's settings (and the record of the
devices its models ran on) are its own, whatever other requests run at the same time. The
doctor (user name, unlocked key, client address) travels next to it in the :class:`Call`.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at import time.
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Optional

from fastapi import Depends, HTTPException, Request

from medtools.core.context import RunContext
from medtools.serve.uploads import RequestFiles

COOKIE = "medtools_session"


def service(request: Request) -> Any:
    """The app's ServeState (models, authenticator, index, settings)."""
    return request.app.state.medtools


State = Annotated[Any, Depends(service)]


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def token_of(request: Request) -> Optional[str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


CSRF_HEADER = "X-Medtools-Request"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def doctor(request: Request, state: State) -> Any:
    """The live session of the request's token (Authorization: Bearer, or the page's cookie); 401 without.

    A state-changing request that rides on the cookie alone must also carry the
    ``X-Medtools-Request`` header (the page's script sends it): another site's form or script
    cannot set a custom header on a request to this origin without a CORS preflight, which the
    service never grants, so a forged cross-site POST is 403 even where a browser would send the
    cookie (SameSite=Strict already keeps it off such requests in current browsers)."""
    session = state.auth.session(token_of(request))
    if session is None:
        raise HTTPException(status_code=401, detail="not logged in", headers={"WWW-Authenticate": "Bearer"})
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    if request.method not in SAFE_METHODS and not bearer and CSRF_HEADER.lower() not in request.headers:
        raise HTTPException(status_code=403, detail=f"a request authenticated by the session cookie needs the {CSRF_HEADER} header (the page sends it)")
    return session


Doctor = Annotated[Any, Depends(doctor)]


@dataclass(frozen=True)
class Call:
    """One authenticated request: who asks, from where, and the run context of the work."""

    user: str
    session: Any  # medtools.serve.auth.Session (holds the unlocked key)
    client: str
    ctx: RunContext


def request_context(state: Any) -> RunContext:
    """A fresh context from the service's settings (its own device record)."""
    return state.settings.derive()


def call(request: Request, state: State, session: Doctor) -> Call:
    return Call(user=session.user, session=session, client=client_of(request), ctx=request_context(state))


Caller = Annotated[Call, Depends(call)]


def request_files(state: State) -> Iterator[RequestFiles]:
    """The request's uploads/outputs; its private folder (if one was needed) is removed when the
    endpoint returns, before the answer is sent (FastAPI >= 0.121; older ones right after)."""
    files = RequestFiles(state.tmp_root)
    try:
        yield files
    finally:
        files.close()


_BEFORE_ANSWER = {"scope": "function"} if "scope" in inspect.signature(Depends).parameters else {}
Files = Annotated[RequestFiles, Depends(request_files, **_BEFORE_ANSWER)]
