"""The one batch driver: items → work → per-item result or typed error → stdout → exit code.

Every per-item command runs through here, so every command walks, skips, reports and exits
the same way:

- ``run_items(items, work, ...)``: ``work(item)`` per item, optionally on ``workers`` threads
  (model-free commands: encrypt, decrypt, deid, convert; results are still emitted in input
  order, and at most ``2 × workers`` items are in flight, so memory stays bounded);
- ``run_batches(items, load, work, batch_size=...)``: per-item loading, then ``work`` on a
  batch of loaded items (model commands: one forward pass for many items);
- ``run_pairs(pairs, ...)``: a stream of ``(item, result | exception)`` that an algorithm
  produced itself (segment, protect: slices of several volumes share batches).

Outcomes: ``work`` returns a result (emitted by ``emit``), ``SKIPPED`` (already done: the batch
resumes), or raises. A ``UsageError`` is about the command line, not the item: it stops the
batch (exit 2). Any other ``MedtoolsError`` is an item error with the exit code of its type;
``OSError``/``ValueError``/``RuntimeError``/``MemoryError`` from a library are item errors with
exit 5. Anything else is a bug and propagates. ``Outcome.exit_code`` is the only place that
turns item errors into the command's exit code (see its docstring). KeyboardInterrupt (SIGINT,
SIGTERM, SIGHUP via core.signals) stops the batch; items in flight on worker threads finish or
fail, pending ones are cancelled, and atomic writes leave no partial file.
"""

from __future__ import annotations

import contextvars
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medtools.core.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_INPUT,
    EXIT_OK,
    EXIT_PARTIAL,
    MedtoolsError,
    UsageError,
)

T = TypeVar("T")
SKIPPED = "skipped"
ITEM_ERRORS = (OSError, ValueError, RuntimeError, MemoryError)  # library failures that concern one item


def error_code(exc: BaseException, *, strict: bool = True) -> int:
    """The exit code of an item error, from its type alone; re-raises what is not an item error
    (``strict=False``: any Exception an algorithm already caught per item counts as exit 5)."""
    if isinstance(exc, UsageError) or isinstance(exc, BrokenPipeError):
        raise exc
    if isinstance(exc, MedtoolsError):
        return exc.exit_code
    if isinstance(exc, ITEM_ERRORS) or (not strict and isinstance(exc, Exception)):
        return EXIT_NO_INPUT
    raise exc


def error_message(exc: BaseException) -> str:
    if isinstance(exc, MedtoolsError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory for this item (MemoryError)"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)  # exit code of each failure
    strict: bool = True  # False: a caught Exception of any type is an item error (run_pairs)
    totals: dict[str, Any] = field(default_factory=dict)  # a command's sums over the items (bytes written, ...)

    def summary(self) -> dict[str, Any]:
        """The closing JSON line's counts: ok, failed, skipped and the command's totals."""
        return {"ok": self.ok, "failed": self.failed, "skipped": self.skipped, **self.totals}

    @property
    def exit_code(self) -> int:
        """0 all fine; 4 when any item failed authentication or integrity (tampering is never
        reported as a partial success); 1 some failed, others written or already done; when
        nothing succeeded, the failures' shared code (3 every checkpoint bad) or else 5."""
        if self.failed == 0:
            return EXIT_OK
        if EXIT_INTEGRITY in self.codes:
            return EXIT_INTEGRITY
        if self.ok or self.skipped:
            return EXIT_PARTIAL
        if len(set(self.codes)) == 1 and self.codes[0] not in (EXIT_OK, EXIT_PARTIAL):
            return self.codes[0]
        return EXIT_NO_INPUT

    def fail(self, name: str, exc: BaseException) -> None:
        """Record an item error (re-raising what is not one) and report it on stderr."""
        from medtools.core import report

        code = error_code(exc, strict=self.strict)
        message = error_message(exc)
        self.failed += 1
        self.failures.append((name, message))
        self.codes.append(code)
        report.error(message if message.startswith(f"{name}: ") else f"{name}: {message}")  # the item named once
        if os.environ.get("MEDTOOLS_DEBUG") and not isinstance(exc, MedtoolsError):
            raise exc

    def settle(self, name: str, result: Any, emit: Callable[[Any], None] | None) -> None:
        """Count one item's result: an exception is an item error, SKIPPED a skip, else emitted."""
        if isinstance(result, BaseException):
            self.fail(name, result)
        elif isinstance(result, str) and result == SKIPPED:
            self.skipped += 1
        else:
            self.ok += 1
            if emit is not None:
                emit(result)


def default_workers() -> int:
    """Worker threads for model-free commands when --workers is not given: the usable cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """--workers N → N threads (0 or 1: in the calling thread); None → the run context's, else the cores."""
    if workers is None:
        from medtools.core.context import current

        workers = current().workers
    return default_workers() if workers is None else workers


def _attempt(work: Callable[[T], Any], item: T, name: Callable[[T], str] = str) -> Any:
    """``work(item)``, or the item error it raised; a UsageError names the item and stops the batch."""
    try:
        return work(item)
    except UsageError as exc:
        raise UsageError(f"{name(item)}: {exc}") from None
    except BrokenPipeError:
        raise
    except (MedtoolsError, *ITEM_ERRORS) as exc:
        return exc


def _attempt_any(work: Callable[[T], Any], item: T) -> Any:
    """``work(item)`` or whatever Exception it raised (the caller settles it per item)."""
    try:
        return work(item)
    except Exception as exc:  # noqa: BLE001 - reported per item by run_pairs
        return exc


def _threaded(items: Iterable[T], work: Callable[[T], Any], workers: int, name: Callable[[T], str], attempt: Callable[..., Any] | None = None) -> Iterator[tuple[T, Any]]:
    """(item, result | item error) in input order, ``work`` on ``workers`` threads, each in a
    copy of the caller's run context; at most 2 × workers items in flight."""
    from concurrent.futures import ThreadPoolExecutor

    from medtools.core.signals import block_in_this_thread

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medtools-item", initializer=block_in_this_thread)
    pending: deque = deque()
    try:
        for item in items:
            args = (_attempt, work, item, name) if attempt is None else (attempt, work, item)
            pending.append((item, pool.submit(contextvars.copy_context().run, *args)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    except KeyboardInterrupt:  # SIGINT, SIGTERM, SIGHUP: workers publish nothing more
        from medtools.core.context import current

        current().cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prefetch(items: Iterable[T], work: Callable[[T], Any], workers: int) -> Iterator[tuple[T, Any]]:
    """(item, work(item) or the Exception it raised), in input order, computed ahead on
    ``workers`` threads in the caller's run context (0: in this thread, one at a time).
    For loaders whose results a model then consumes in batches; settle them with run_pairs."""
    if workers <= 0:
        return ((item, _attempt_any(work, item)) for item in items)
    return _threaded(items, work, workers, str, attempt=_attempt_any)


def run_items(
    items: Iterable[T],
    work: Callable[[T], Any],
    *,
    emit: Callable[[Any], None] | None = None,
    name: Callable[[T], str] = str,
    total: int | None = None,
    description: str = "",
    workers: int = 0,
) -> Outcome:
    """``work`` on each item (on ``workers`` threads when > 1); a failing item is reported and the batch goes on."""
    from medtools.core import report

    outcome = Outcome()
    if workers > 1:
        pairs: Iterable[tuple[T, Any]] = _threaded(items, work, workers, name)
    else:
        pairs = ((item, _attempt(work, item, name)) for item in items)
    for item, result in report.progress(pairs, total=total, description=description):
        outcome.settle(name(item), result, emit)
    return outcome


def run_pairs(
    pairs: Iterable[tuple[T, Any]],
    *,
    emit: Callable[[Any], None] | None = None,
    name: Callable[[T], str] = str,
    total: int | None = None,
    description: str = "",
) -> Outcome:
    """Settle a stream of ``(item, result | exception)`` that an algorithm produced itself
    (it caught each item's exception; a UsageError among them still stops the batch)."""
    from medtools.core import report

    outcome = Outcome(strict=False)
    for item, result in report.progress(pairs, total=total, description=description):
        outcome.settle(name(item), result, emit)
    return outcome


def run_batches(
    items: Sequence[T],
    load: Callable[[T], Any],
    work: Callable[[list[tuple[T, Any]]], Iterable[tuple[T, Any]]],
    *,
    batch_size: int,
    emit: Callable[[Any], None] | None = None,
    name: Callable[[T], str] = str,
    description: str = "",
) -> Outcome:
    """Per-item ``load`` (value or SKIPPED) with per-item errors, then ``work`` on each batch of
    loaded items, yielding ``(item, result | exception)``. Bounded memory: one batch.
    An item error raised by ``work`` itself fails every item of that batch."""
    from medtools.core import report

    outcome = Outcome()

    def flush(batch: list[tuple[T, Any]]) -> None:
        try:
            results = list(work(batch))
        except (MedtoolsError, *ITEM_ERRORS) as exc:
            if isinstance(exc, (UsageError, BrokenPipeError)):
                raise
            for item, _ in batch:
                outcome.fail(name(item), exc)
            return
        for item, result in results:
            outcome.settle(name(item), result, emit)

    batch: list[tuple[T, Any]] = []
    for item in report.progress(items, total=len(items), description=description):
        value = _attempt(load, item, name)
        if isinstance(value, BaseException) or (isinstance(value, str) and value == SKIPPED):
            outcome.settle(name(item), value, None)
            continue
        batch.append((item, value))
        if len(batch) >= batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return outcome


def emitter(*, paths: Callable[[Any], Iterable[Any]] | None = None) -> Callable[[Any], None]:
    """The stdout contract for a result dict: with --json (run context) one JSON line, else the
    written paths, one per line (``paths(result)``; default: ``result["output"]`` or ``["outputs"]``)."""
    from medtools.core import report
    from medtools.core.context import current

    def default_paths(result: Any) -> Iterable[Any]:
        if isinstance(result, dict):
            if "outputs" in result:
                return result["outputs"]
            if result.get("output") is not None:
                return [result["output"]]
            return []
        return [result]

    pick = paths or default_paths

    def emit(result: Any) -> None:
        if current().json:
            report.emit_jsonl(result)
        else:
            for path in pick(result):
                report.emit_path(path)

    return emit
