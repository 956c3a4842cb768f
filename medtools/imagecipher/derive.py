"""Key expansion for the image-domain methods: one 256-bit key → labelled sub-keys and streams.

Every derived value is HKDF-SHA256(key, salt="medtools-derive/v1", info=label) (RFC 5869),
stretched when more bytes are needed with SHAKE256 (FIPS 202) seeded by that sub-key.
Labels name the method, purpose and image geometry, so one key serves every method and
size without two uses ever sharing a stream. docs/formats.md documents the labels.
"""

from __future__ import annotations

import numpy as np

SALT = b"medtools-derive/v1"
KEY_BYTES = 32


def subkey(key: bytes, label: str, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``key`` for ``label`` (distinct labels give independent keys)."""
    from Crypto.Hash import SHA256
    from Crypto.Protocol.KDF import HKDF

    return HKDF(key, length, salt=SALT, hashmod=SHA256, context=label.encode())


def stream(key: bytes, label: str, nbytes: int) -> bytes:
    """``nbytes`` pseudo-random bytes: SHAKE256(HKDF(key, label))."""
    from Crypto.Hash import SHAKE256

    return SHAKE256.new(subkey(key, label)).read(nbytes)


def permutation(key: bytes, label: str, n: int) -> np.ndarray:
    """A key-dependent permutation of range(n): stable argsort of n little-endian uint64 draws."""
    draws = np.frombuffer(stream(key, label, 8 * n), dtype="<u8")
    return np.argsort(draws, kind="stable")


def bits(key: bytes, label: str, n: int) -> np.ndarray:
    """n key-dependent booleans (LSB first within each byte)."""
    raw = np.frombuffer(stream(key, label, (n + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def flip_bit(key: bytes, bit: int = 0) -> bytes:
    """The key with one bit flipped (key-sensitivity tests)."""
    data = bytearray(key)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)
