"""The run context: the settings of one call, built once and handed down, never process-wide.

A command (``cliutil.command``), a serve request or a Python caller builds one ``RunContext``
and runs its work inside ``use(ctx)``; code below reads ``current()``. The context lives in a
``contextvars.ContextVar`` (PEP 567), so two calls in two threads (two serve requests, two
library callers) each see their own, and nothing a call sets outlives it: ``use`` restores the
previous context on exit. Worker threads started by the batch driver run in a copy of the
caller's context (``contextvars.copy_context``).

The context itself is immutable; ``RunContext.derive(**changes)`` makes a changed copy. The one
mutable part is ``devices``, the per-call record of the devices models actually ran on (what the
``run`` record of ``--json`` reports).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

NAN_POLICIES = ("error", "zero", "clip")


@dataclass(frozen=True)
class RunContext:
    """Settings of one run; every field has the library default."""

    quiet: bool = False  # no logs or progress on stderr
    json: bool = False  # machine output is JSON
    nan_policy: str = "error"  # non-finite voxels: error | zero | clip (core/io/finite.py)
    insecure_permissions: bool = False  # accept private key material open to group/others
    device: str | None = None  # --device (None: MEDTOOLS_DEVICE, then auto)
    precision: str | None = None  # --precision
    seed: int | None = None  # --seed
    workers: int | None = None  # --workers of the batch driver (None: the command's default)
    devices: list[str] = field(default_factory=list, compare=False)  # devices models ran on in this run
    cancel: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)  # set when the run is interrupted

    def derive(self, **changes: Any) -> RunContext:
        """A copy with ``changes``; the copy records devices and cancellation of its own."""
        changes.setdefault("devices", [])
        changes.setdefault("cancel", threading.Event())
        return replace(self, **changes)

    def check_cancelled(self) -> None:
        """Raise Cancelled when the run was interrupted (a worker thread must not publish a file
        after Ctrl-C/SIGTERM reached the main thread)."""
        if self.cancel.is_set():
            raise Cancelled("the run was interrupted")

    def note_device(self, device: Any) -> None:
        name = str(device)
        if name not in self.devices:
            self.devices.append(name)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunContext:
        """The context of a command from its keyword options (unknown keys are ignored).

        CLI names map onto fields: ``json_output`` → json, ``insecure_permissions``,
        ``nan_policy``, ``quiet``, ``device``, ``precision``, ``seed``, ``workers``.
        """
        names = {f.name for f in fields(cls)} - {"devices", "cancel"}
        aliases = {"json_output": "json"}
        values: dict[str, Any] = {}
        for key, value in options.items():
            key = aliases.get(key, key)
            if key in names and value is not None:
                values[key] = value
        if "nan_policy" in values:
            values["nan_policy"] = check_nan_policy(values["nan_policy"])
        return cls(**values)


class Cancelled(KeyboardInterrupt):
    """Raised in a worker thread whose run was interrupted: its output is discarded."""


def check_nan_policy(policy: str) -> str:
    from medtools.core.errors import UsageError

    if policy not in NAN_POLICIES + ("keep",):
        raise UsageError(f"--nan-policy must be one of {', '.join(NAN_POLICIES)}, got {policy!r}")
    return policy


_CURRENT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("medtools_run_context", default=None)


def current() -> RunContext:
    """The context of the running call; outside any call, a default one made on first use in
    this thread's (or task's) own context, so what it records (devices) persists there."""
    ctx = _CURRENT.get()
    if ctx is None:
        ctx = RunContext()
        _CURRENT.set(ctx)
    return ctx


@contextlib.contextmanager
def use(ctx: RunContext | None) -> Iterator[RunContext]:
    """Run the body with ``ctx`` as the current context (``None``: keep the current one)."""
    if ctx is None:
        yield current()
        return
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
