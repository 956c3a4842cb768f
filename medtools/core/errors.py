"""Exit codes (shared/DESIGN.md) and the typed errors that map onto them.

The meaning of a number never changes: scripts branch on it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # some items failed, the others were written
EXIT_USAGE = 2  # bad flag, missing argument, impossible request
EXIT_CHECKPOINT = 3  # model/checkpoint missing, corrupt, wrong kind, incompatible
EXIT_INTEGRITY = 4  # wrong password, tampered ciphertext, Merkle mismatch
EXIT_NO_INPUT = 5  # nothing found, unreadable or invalid data
EXIT_REMOTE = 6  # a remote service (a PACS) did not answer, or failed, after bounded retries
EXIT_PHI_FOUND = 7  # a release check (phi-scan) found identifying data
EXIT_SIGNAL_BASE = 128  # killed by signal n: 128 + n (core/signals.py)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_HANGUP = 129  # SIGHUP
EXIT_TERMINATED = 143  # SIGTERM (kill, Slurm preemption, timeout)

EXIT_TABLE = {
    EXIT_OK: "success",
    EXIT_PARTIAL: "some items failed (the others were written)",
    EXIT_USAGE: "usage error (bad flag, missing argument)",
    EXIT_CHECKPOINT: "model/checkpoint problem: missing, corrupt, wrong kind, incompatible config",
    EXIT_INTEGRITY: "authentication or integrity failure: wrong password, tampered ciphertext, Merkle mismatch",
    EXIT_NO_INPUT: "no usable input: nothing found, unreadable or invalid data",
    EXIT_REMOTE: "remote unavailable: a PACS or other service did not answer or failed (after bounded retries)",
    EXIT_PHI_FOUND: "identifying data found: phi-scan flagged a tag, descriptor or burned-in text (the release is not clean)",
    EXIT_HANGUP: "hung up (SIGHUP); partial outputs are removed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT); partial outputs are removed",
    EXIT_TERMINATED: "terminated (SIGTERM); partial outputs are removed",
}


class MedtoolsError(Exception):
    """A user-facing error: printed as one line, no traceback, mapped to an exit code."""

    exit_code = EXIT_PARTIAL


class UsageError(MedtoolsError):
    exit_code = EXIT_USAGE


class CheckpointError(MedtoolsError):
    exit_code = EXIT_CHECKPOINT


class IntegrityError(MedtoolsError):
    exit_code = EXIT_INTEGRITY


class RemoteError(MedtoolsError):
    """A remote service did not answer (refused, timed out) or failed (HTTP 5xx) after retries."""

    exit_code = EXIT_REMOTE


class InputError(MedtoolsError):
    """This input cannot be used (unreadable, wrong format, wrong shape)."""

    exit_code = EXIT_NO_INPUT
