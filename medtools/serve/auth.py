"""Doctors' log-in for the service: the key store of ``medtools keys``, sessions, rate limits, audit.

Log-in unlocks the doctor's X25519 private key with their password exactly as ``medtools
decrypt`` does (:meth:`medtools.secure.keystore.KeyStore.unlock`, scrypt + AES-GCM): a
wrong password and an unknown user give the same answer after the same work (a dummy
scrypt), so the reply says nothing about which part was wrong. The session keeps the
unlocked key in memory (never the password) under a random token for ``ttl`` seconds; the
server keeps only the token's SHA-256. Every request re-reads the store, so a removed
doctor's session stops working at once.

Failed log-ins are counted per user and per client address in a sliding window; past the
limit further attempts get 429 without trying the password. An attempt takes its place in
the count (checked and counted under one lock) before the scrypt work starts, and gives it
back only if the password was right: concurrent guesses cannot all slip in before the first
of them has failed. The client address is the TCP peer's; proxy headers count only from the
addresses given with ``serve --forwarded-allow-ips``. Every log-in and decrypt
attempt goes to the audit log (time, action, user, client, file SHA-256, result) through
the secure family's ``audit`` function, the one the CLI's ``--audit-log`` uses.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtools.core.errors import IntegrityError

DEFAULT_TTL = 15 * 60
DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW = 5 * 60


class LoginFailed(IntegrityError):
    """401: no hint which part was wrong."""


class TooManyAttempts(IntegrityError):
    """429: the limit of failed log-ins is reached; the password is not tried."""

    def __init__(self, retry_after: int):
        super().__init__("too many failed log-in attempts; try again later")
        self.retry_after = retry_after


@dataclass
class Session:
    user: str
    identity: Any  # medtools.secure.container.X25519Identity (the unlocked private key)
    expires: float
    client: str


class Attempt:
    """One log-in attempt's place in the counts: a failure unless settled as a success."""

    __slots__ = ("time", "pending")

    def __init__(self, when: float, pending: bool):
        self.time = when
        self.pending = pending


class RateLimiter:
    """At most ``max_failures`` failed (or still running) attempts per key in ``window`` seconds."""

    def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES, window: float = DEFAULT_WINDOW):
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[Attempt]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[Attempt]:
        marks = self._failures[key]
        while marks and marks[0].time <= now - self.window:
            marks.popleft()
        return marks

    def _check(self, keys: tuple[str, ...], now: float) -> None:
        """Raise TooManyAttempts if any key is at the limit (the caller holds the lock)."""
        for key in keys:
            marks = self._recent(key, now)
            if not marks:
                del self._failures[key]  # made-up user names do not pile up
            elif len(marks) >= self.max_failures:
                raise TooManyAttempts(max(1, int(marks[0].time + self.window - now) + 1))

    def check(self, *keys: str) -> None:
        with self._lock:
            self._check(keys, time.monotonic())

    def begin(self, *keys: str) -> Attempt:
        """Check the limit and count one attempt against every key, atomically; then try the password."""
        now = time.monotonic()
        with self._lock:
            self._check(keys, now)
            attempt = Attempt(now, pending=True)
            for key in keys:
                self._failures[key].append(attempt)
            return attempt

    def failed(self, attempt: Attempt) -> None:
        """The attempt was wrong: it stays counted for the window."""
        with self._lock:
            attempt.pending = False

    def succeeded(self, attempt: Attempt, *keys: str, clear: tuple[str, ...] = ()) -> None:
        """The attempt was right: it leaves the counts of ``keys``; ``clear`` also forgets their
        earlier failures (not other attempts still running)."""
        with self._lock:
            for key in keys:
                marks = self._failures.get(key)
                if marks is None:
                    continue
                kept = [m for m in marks if m is not attempt and not (key in clear and not m.pending)]
                if kept:
                    self._failures[key] = deque(kept)
                else:
                    del self._failures[key]

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            attempt = Attempt(now, pending=False)
            for key in keys:
                self._recent(key, now).append(attempt)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Authenticator:
    """Log-in against a key store file, token sessions, audit log."""

    def __init__(self, store_path: Path, *, audit_log: Path | None, ttl: float = DEFAULT_TTL, limiter: RateLimiter | None = None, max_parallel_unlocks: int = 2):
        from medtools.secure.keystore import KeyStore

        self.store_path = Path(store_path)
        KeyStore.load(self.store_path)  # fail at start-up, not at the first log-in
        self.audit_log = audit_log
        self.ttl = float(ttl)
        self.limiter = limiter or RateLimiter()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._unlocks = threading.BoundedSemaphore(max_parallel_unlocks)  # scrypt needs 256 MiB each

    def store(self):
        from medtools.secure.keystore import KeyStore

        return KeyStore.load(self.store_path)

    def audit(self, **record: Any) -> None:
        from medtools.secure.crypt import audit

        audit(self.audit_log, **record)

    # -- log-in
    def login(self, user: str, password: str, client: str) -> tuple[str, Session]:
        """(token, session) or LoginFailed / TooManyAttempts; always audited."""
        from medtools.secure import container

        user_key, client_key = f"user:{user}", f"client:{client}"
        try:
            attempt = self.limiter.begin(user_key, client_key)  # counted before the scrypt work
        except TooManyAttempts:
            self.audit(action="login", user=user, client=client, result="rate-limited")
            raise
        ok = False
        try:
            store = self.store()
            known = {u.name for u in store.users()}
            with self._unlocks:
                try:
                    if user not in known:
                        _dummy_unlock(store, password)
                        raise IntegrityError("unknown user")
                    private = store.unlock(user, password.encode("utf-8"))
                except IntegrityError:
                    self.audit(action="login", user=user, client=client, result="denied")
                    raise LoginFailed("login failed") from None
            ok = True
        finally:
            if ok:
                self.limiter.succeeded(attempt, user_key, client_key, clear=(user_key,))
            else:
                self.limiter.failed(attempt)  # any error (a broken store too) counts: no free guesses
        token = secrets.token_urlsafe(32)
        session = Session(user=user, identity=container.X25519Identity(user, private), expires=time.time() + self.ttl, client=client)
        with self._lock:
            self._prune()
            self._sessions[_digest(token)] = session
        self.audit(action="login", user=user, client=client, result="ok")
        return token, session

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(token), None)

    def session(self, token: str | None) -> Session | None:
        """The live session of ``token`` whose user is still in the store, else None."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(_digest(token))
            if session is None or session.expires < time.time():
                self._sessions.pop(_digest(token), None)
                return None
        if session.user not in {u.name for u in self.store().users()}:
            with self._lock:
                self._sessions.pop(_digest(token), None)
            return None
        return session

    def _prune(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _dummy_unlock(store: Any, password: str) -> None:
    """The scrypt work of a real unlock, so an unknown user answers as slowly as a wrong password."""
    from Crypto.Protocol.KDF import scrypt

    from medtools.secure.keystore import KEY_BYTES, SCRYPT_P, SCRYPT_R, scrypt_log_n

    scrypt(password.encode("utf-8"), b"\0" * 16, KEY_BYTES, N=1 << scrypt_log_n(store.data.get("scrypt_log_n")), r=SCRYPT_R, p=SCRYPT_P)  # type: ignore[arg-type]
