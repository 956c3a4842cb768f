"""Secret files every family reads the same way: 256-bit key files, their public id, and the
rule that private key material open to group/others is refused (as age and ssh refuse it).

``medtools keys gen-key`` writes the format (64 hex digits and a newline, or 32 raw bytes);
``encrypt``/``decrypt``, the image ciphers, ``cls`` and ``protect --key-file`` read it here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from medtools.core.errors import UsageError

KEY_BYTES = 32


def check_private_permissions(path: Path | str, what: str = "private key material") -> None:
    """UsageError (exit 2) when ``path`` is readable or writable by its group or others
    (unless the run context has ``insecure_permissions``, from --insecure-permissions)."""
    from medtools.core.context import current

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # reading it reports the problem
    if mode & 0o077 and not current().insecure_permissions:
        raise UsageError(f"refusing {path}: {what} with mode {mode:o} is open to group/others; run chmod 600 {path} (or pass --insecure-permissions)")


def read_key_file(path: Path | str) -> bytes:
    """A 256-bit key: 32 raw bytes or 64 hex digits (what ``keys gen-key`` writes)."""
    check_private_permissions(Path(path), "a key file")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    raise UsageError(f"{path} is not a key file: need 32 raw bytes or 64 hex digits (make one with `medtools keys gen-key FILE`)")


def key_id(key: bytes) -> str:
    """A public 16-hex-digit name for a symmetric key (it says which key, not the key)."""
    return hashlib.sha256(b"medtools key-id/v1\x00" + key).hexdigest()[:16]
