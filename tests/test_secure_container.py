"""The .mte container at API level: round trips, every flipped byte, every truncation, reordering, vectors."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest

from medtools.core.errors import IntegrityError
from medtools.secure import container
from medtools.secure.keystore import AccessDenied, KeyStore

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))
CHUNK = 1024


def deterministic_random(seed: bytes):
    """The test-vector 'randomness': consecutive SHAKE256(seed) bytes (docs/formats.md)."""
    from Crypto.Hash import SHAKE256

    xof = SHAKE256.new(seed)
    return lambda n: xof.read(n)


def seal(data: bytes, recipients, **kwargs) -> bytes:
    out = io.BytesIO()
    container.encrypt_stream(io.BytesIO(data), out, recipients, **kwargs)
    return out.getvalue()


def unseal(blob: bytes, identities) -> bytes:
    out = io.BytesIO()
    container.decrypt_stream(io.BytesIO(blob), out, identities)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_round_trip_sizes(size):
    data = bytes((i * 7 + 3) % 251 for i in range(size))
    blob = seal(data, [container.KeyRecipient(KEY)], name="scan.dcm", chunk_size=CHUNK)
    chunks = max(1, -(-size // CHUNK))
    header_end = 13 + int.from_bytes(blob[9:13], "big") + container.MAC_BYTES
    assert len(blob) == header_end + size + 16 * chunks
    out = io.BytesIO()
    result = container.decrypt_stream(io.BytesIO(blob), out, [container.KeyRecipient(KEY)])
    assert out.getvalue() == data
    assert result.name == "scan.dcm" and result.extra["chunks"] == chunks


@pytest.mark.parametrize("size", [0, CHUNK - 1, CHUNK, 9 * CHUNK + 5])
def test_threaded_sealing_writes_the_same_bytes(size):
    """Sealing chunks on threads changes nothing in the file, only how fast it is made."""
    data = bytes((i * 13 + 1) % 251 for i in range(size))
    one = seal(data, [container.KeyRecipient(KEY)], chunk_size=CHUNK, random_bytes=deterministic_random(b"t"))
    three = seal(data, [container.KeyRecipient(KEY)], chunk_size=CHUNK, random_bytes=deterministic_random(b"t"), threads=3)
    assert three == one
    assert unseal(three, [container.KeyRecipient(KEY)]) == data


def test_flipped_bytes_and_truncations_fail():
    """Every header byte and every 7th payload byte flipped, every header cut and many payload cuts."""
    data = bytes(range(256)) * 9  # 2304 bytes: 3 chunks, the last one short
    blob = seal(data, [container.KeyRecipient(KEY)], chunk_size=CHUNK)
    identities = [container.KeyRecipient(KEY)]
    assert unseal(blob, identities) == data
    header_end = 13 + int.from_bytes(blob[9:13], "big") + container.MAC_BYTES
    boundaries = {header_end + k * (CHUNK + 16) + d for k in range(4) for d in (-1, 0, 1)}
    flips = list(range(header_end)) + list(range(header_end, len(blob), 7)) + [len(blob) - 1]
    for position in flips:
        damaged = bytearray(blob)
        damaged[position] ^= 0x01 << (position % 8)
        with pytest.raises(IntegrityError):
            unseal(bytes(damaged), identities)
    cuts = set(range(header_end + 1)) | set(range(header_end, len(blob), 13)) | {c for c in boundaries if c < len(blob)}
    for length in sorted(cuts):
        with pytest.raises(IntegrityError):
            unseal(blob[:length], identities)
    with pytest.raises(IntegrityError):
        unseal(blob + b"\x00", identities)


def _chunks(blob: bytes, chunk: int) -> tuple[bytes, list[bytes]]:
    length = int.from_bytes(blob[9:13], "big")
    start = 13 + length + container.MAC_BYTES
    body = blob[start:]
    step = chunk + 16
    return blob[:start], [body[i : i + step] for i in range(0, len(body), step)]


def test_reordered_dropped_and_duplicated_chunks_fail():
    data = bytes(range(256)) * 16  # exactly 4 full chunks: the last full chunk carries the flag
    blob = seal(data, [container.KeyRecipient(KEY)], chunk_size=CHUNK)
    head, chunks = _chunks(blob, CHUNK)
    assert len(chunks) == 4
    identities = [container.KeyRecipient(KEY)]
    for variant in (
        [chunks[1], chunks[0], chunks[2], chunks[3]],  # reordered
        [chunks[0], chunks[2], chunks[3]],  # dropped
        [chunks[0], chunks[1], chunks[1], chunks[2], chunks[3]],  # duplicated
        chunks[:3],  # cut at a chunk boundary: chunk 2 lacks the last flag
    ):
        with pytest.raises(IntegrityError):
            unseal(head + b"".join(variant), identities)


def test_header_of_another_file_does_not_open_this_payload():
    first = seal(b"a" * 3000, [container.KeyRecipient(KEY)], chunk_size=CHUNK)
    second = seal(b"b" * 3000, [container.KeyRecipient(KEY)], chunk_size=CHUNK)
    head_first, _ = _chunks(first, CHUNK)
    _, body_second = _chunks(second, CHUNK)
    with pytest.raises(IntegrityError):
        unseal(head_first + b"".join(body_second), [container.KeyRecipient(KEY)])


def test_store_users_each_open_and_others_are_denied(tmp_path):
    store = KeyStore.create(tmp_path / "store.json", log_n=10)
    store.add_user("alice", b"alice-pw")
    store.add_user("bob", b"bob-pw")
    recipients = [container.X25519Recipient(u.name, u.public_key) for u in store.users()]
    blob = seal(b"pixel data" * 500, recipients, chunk_size=CHUNK)
    for name, password in (("alice", b"alice-pw"), ("bob", b"bob-pw")):
        identity = container.X25519Identity(name, store.unlock(name, password))
        assert unseal(blob, [identity]) == b"pixel data" * 500
    with pytest.raises(AccessDenied):
        store.unlock("alice", b"bob-pw")
    with pytest.raises(AccessDenied):
        unseal(blob, [container.KeyRecipient(KEY)])
    # a sample of flipped positions with the X25519 stanzas (the exhaustive loop above uses a key)
    identity = container.X25519Identity("bob", store.unlock("bob", b"bob-pw"))
    for position in range(0, len(blob), max(1, len(blob) // 97)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x04
        with pytest.raises(IntegrityError):
            unseal(bytes(damaged), [identity])


def test_stanza_swapped_between_users_fails(tmp_path):
    """Renaming bob's stanza to alice must not let alice's key open it."""
    store = KeyStore.create(tmp_path / "store.json", log_n=10)
    store.add_user("alice", b"a")
    store.add_user("bob", b"b")
    bob = store.user("bob")
    blob = seal(b"x" * 100, [container.X25519Recipient("bob", bob.public_key)], chunk_size=CHUNK)
    forged = blob.replace(b'"user":"bob"', b'"user":"alice"')
    assert forged != blob
    alice = container.X25519Identity("alice", store.unlock("alice", b"a"))
    with pytest.raises(IntegrityError):
        unseal(forged, [alice])


def _vector() -> bytes:
    return seal(
        b"medtools test vector\n",
        [container.KeyRecipient(KEY)],
        name="hello.txt",
        chunk_size=CHUNK,
        random_bytes=deterministic_random(b"medtools-mte test vector 1"),
    )


def test_vector_matches_docs():
    """docs/formats.md holds the full hex of this vector; it must decrypt and match the code."""
    text = (ROOT / "docs" / "formats.md").read_text()
    match = re.search(r"<!-- vector-1 -->\s*```\s*([0-9a-f\s]+?)```", text)
    assert match, "docs/formats.md lacks the vector-1 hex block"
    documented = bytes.fromhex("".join(match.group(1).split()))
    assert documented == _vector()
    assert unseal(documented, [container.KeyRecipient(KEY)]) == b"medtools test vector\n"
    digest = re.search(r"vector-1 SHA-256: `([0-9a-f]{64})`", text)
    assert digest and digest.group(1) == hashlib.sha256(documented).hexdigest()


def test_x25519_vector_matches_docs():
    from Crypto.Protocol.DH import import_x25519_private_key

    private = import_x25519_private_key(bytes(range(32, 64)))
    public = private.public_key().export_key(format="raw")
    blob = seal(
        b"medtools test vector\n",
        [container.X25519Recipient("alice", public)],
        name="hello.txt",
        chunk_size=CHUNK,
        random_bytes=deterministic_random(b"medtools-mte test vector 2"),
    )
    text = (ROOT / "docs" / "formats.md").read_text()
    assert public.hex() in text
    assert f"vector-2 SHA-256:\n`{hashlib.sha256(blob).hexdigest()}`" in text
    assert unseal(blob, [container.X25519Identity("alice", private)]) == b"medtools test vector\n"


def test_bad_chunk_size_and_no_recipients_are_usage_errors():
    from medtools.core.errors import UsageError

    with pytest.raises(UsageError):
        seal(b"x", [container.KeyRecipient(KEY)], chunk_size=10)
    with pytest.raises(UsageError):
        seal(b"x", [])
