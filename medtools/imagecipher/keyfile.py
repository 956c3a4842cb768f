"""256-bit key files for the image methods and their public fingerprint.

Same format as ``medtools keys gen-key`` writes (64 hex digits and a newline, or 32 raw
bytes) and the same key id (``SHA-256("medtools key-id/v1\\0" ‖ key)``, first 16 hex
digits) that the secure family prints, so a checkpoint's fingerprint names the key a user
sees in ``keys``. The fingerprint says which key, never the key.
"""

from __future__ import annotations

from medtools.core.secrets import key_id, read_key_file  # noqa: F401  (the one implementation, in core)
