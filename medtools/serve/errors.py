"""Typed errors → HTTP status: one table for every endpoint.

The CLI's exit codes come from the error types (:mod:`medtools.core.errors`); the service maps
the same types onto statuses: unreadable or unfitting upload and tampered ciphertext 422, bad
request 400, failed log-in 401 (no hint which part), not a recipient 403, too many failed
log-ins 429 (with Retry-After), a model problem 500, a PACS that does not answer 502.
"""

from __future__ import annotations

from medtools.core.errors import CheckpointError, InputError, IntegrityError, MedtoolsError, RemoteError, UsageError
from medtools.serve.auth import LoginFailed, TooManyAttempts


def is_denied(exc: BaseException) -> bool:
    """The doctor is not a recipient (or not this file's): 403, audited as ``denied``."""
    from medtools.secure.keystore import AccessDenied

    return isinstance(exc, AccessDenied)


def status_of(exc: MedtoolsError) -> tuple[int, dict[str, str]]:
    """(HTTP status, extra headers) for a typed error."""
    if isinstance(exc, LoginFailed):
        return 401, {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, TooManyAttempts):
        return 429, {"Retry-After": str(exc.retry_after)}
    if is_denied(exc):
        return 403, {}
    if isinstance(exc, (IntegrityError, InputError)):
        return 422, {}
    if isinstance(exc, UsageError):
        return 400, {}
    if isinstance(exc, CheckpointError):
        return 500, {}
    if isinstance(exc, RemoteError):  # the PACS did not answer
        return 502, {}
    return 422, {}
