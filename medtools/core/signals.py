"""One signal policy for every command: SIGTERM and SIGHUP are handled like SIGINT.

Each raises ``Interrupted`` (a KeyboardInterrupt) in the main thread, so the same
clean-up runs for all three: atomic writes remove their temporary files, nothing partial
is left, and the command exits 128 + the signal number (130 SIGINT, 143 SIGTERM, 129
SIGHUP), as a shell reports a process killed by that signal. A signal that the parent
ignores (``nohup``, a background job without job control) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

HANDLED = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP (or SIGINT) arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal number: 130 for a plain KeyboardInterrupt (Ctrl-C)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _raise(signum: int, frame: Any) -> None:
    # Further signals during clean-up are ignored: clean-up is short and must finish.
    for name in HANDLED:
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
    raise Interrupted(signum)


def block_in_this_thread() -> None:
    """Keep SIGINT, SIGTERM and SIGHUP away from a worker thread (a ThreadPoolExecutor
    ``initializer``): the kernel then delivers them to the main thread, whose blocking wait is
    interrupted at once, so it can cancel the run before a worker publishes another file.
    (Delivered to a worker, a signal would wait until the main thread next ran bytecode.)"""
    mask = {getattr(signal, name) for name in HANDLED if hasattr(signal, name)}
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    except (AttributeError, OSError, ValueError):  # pragma: no cover (no POSIX threads)
        pass


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP by raising Interrupted (main thread only; idempotent)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in HANDLED:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:
            continue  # ignored by whoever started us: keep it so
        if current in (signal.SIG_DFL, signal.default_int_handler, None) or current is _raise:
            signal.signal(sig, _raise)
