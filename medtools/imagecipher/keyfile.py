"""256-bit key files for the image methods and their public fingerprint.

Same format as ``medtools keys gen-key`` writes (64 hex digits and a newline, or 32 raw
bytes) and the same key id (``SHA-256("medtools key-id/v1\\0" ‖ key)``, first 16 hex
digits) that the secure family prints, so a checkpoint's fingerprint names the key a user
sees in ``keys``. The fingerprint says which key, never the key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medtools.core.errors import UsageError
from medtools.imagecipher.derive import KEY_BYTES


def read_key_file(path: Path | str) -> bytes:
    """A 256-bit key: 32 raw bytes or 64 hex digits (what ``keys gen-key`` writes)."""
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
