"""POST /v1/login, /v1/logout, GET /v1/me: sessions over the key store (medtools.serve.auth)."""

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from medtools.core.errors import UsageError
from medtools.serve.deps import COOKIE, Doctor, State, client_of, token_of

router = APIRouter(tags=["auth"])

LOGIN_SCHEMA = {"requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["user", "password"], "properties": {"user": {"type": "string"}, "password": {"type": "string", "format": "password"}}}}, "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"user": {"type": "string"}, "password": {"type": "string"}}}}}, "required": True}}


@router.post("/login", openapi_extra=LOGIN_SCHEMA)
async def login(request: Request, state: State) -> Any:
    """Key-store password → a short-lived token (JSON, for `Authorization: Bearer`) and an HttpOnly cookie (the page)."""
    from starlette.concurrency import run_in_threadpool

    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise UsageError("the body is not JSON") from None
    else:
        body = dict(await request.form())
    user, password = (body or {}).get("user"), (body or {}).get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
        raise UsageError('log in with {"user": ..., "password": ...}')
    token, session = await run_in_threadpool(state.auth.login, user, password, client_of(request))
    ttl = int(state.auth.ttl)
    response = JSONResponse({"token": token, "token_type": "bearer", "user": session.user, "expires_in": ttl})
    response.set_cookie(COOKIE, token, max_age=ttl, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request, state: State) -> Any:
    """Forget the session (its unlocked key leaves the server's memory)."""
    token = token_of(request)
    if token:
        state.auth.logout(token)
    response = JSONResponse({"status": "logged out"})
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/me")
def me(session: Doctor) -> dict[str, Any]:
    """Who the token belongs to, and when it expires (epoch seconds, and seconds from now)."""
    return {"user": session.user, "expires": int(session.expires), "expires_in": max(0, int(session.expires - time.time()))}
