"""The .mte container: AES-256-GCM in the STREAM construction, file key wrapped per recipient.

Layout (docs/formats.md gives it byte by byte, with test vectors):

    magic 8 | version 1 | header length 4 (big-endian) | header JSON | header MAC 32 | chunks

The header names the recipients (one stanza per doctor of the key store, or per key
file), the chunk size and the payload salt; it carries the original file name sealed
under the file key. The MAC is HMAC-SHA256 under a key derived from the file key, so the
header can only be checked after a stanza opened: every change to it is detected.

The payload is cut into chunks of ``chunk_size`` plaintext bytes; chunk i is sealed with
AES-256-GCM under the payload key with nonce = i as 11 big-endian bytes ‖ last-chunk flag
(Hoang, Reyhanitabar, Rogaway & Vizár, "Online authenticated-encryption and its
nonce-reuse misuse-resistance", CRYPTO 2015; the same as age). Reordered, dropped,
duplicated or truncated chunks fail authentication; a file cut at a chunk boundary fails
because its final chunk lacks the flag. Memory stays at three reused chunk buffers whatever
the size (no per-chunk allocation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from medtools.core.errors import IntegrityError, UsageError
from medtools.secure.keystore import AccessDenied, b64, key_id, unb64

MAGIC = b"\x89MTE\r\n\x1a\n"
VERSION = 1
PREFIX = struct.Struct(">8sBI")  # magic, version, header length
MAC_BYTES = 32
TAG_BYTES = 16
KEY_BYTES = 32
DEFAULT_CHUNK = 1 << 20  # 1 MiB: pycryptodome's per-chunk set-up costs ~0.1 ms (see docs/results.md)
MIN_CHUNK, MAX_CHUNK = 1 << 10, 1 << 26
MAX_HEADER = 1 << 20
LABEL = b"medtools-mte/v1 "

RandomBytes = Callable[[int], bytes]
# identities to try, fixed or chosen from the file's recipient stanzas
Identities = Sequence["Identity"] | Callable[[list[dict[str, Any]]], Iterable["Identity"]]


def _hkdf(secret: bytes, salt: bytes, info: str) -> bytes:
    from Crypto.Hash import SHA256
    from Crypto.Protocol.KDF import HKDF

    return HKDF(secret, KEY_BYTES, salt=salt, hashmod=SHA256, context=LABEL + info.encode())  # type: ignore[return-value]


def _gcm(key: bytes, nonce: bytes):
    from Crypto.Cipher import AES

    return AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)


ZERO_NONCE = bytes(12)  # only with keys used once (fresh per file or per stanza)


def _seal_once(key: bytes, data: bytes) -> bytes:
    ciphertext, tag = _gcm(key, ZERO_NONCE).encrypt_and_digest(data)
    return ciphertext + tag


def _open_once(key: bytes, sealed: bytes) -> bytes | None:
    if len(sealed) < TAG_BYTES:
        return None
    try:
        return _gcm(key, ZERO_NONCE).decrypt_and_verify(sealed[:-TAG_BYTES], sealed[-TAG_BYTES:])
    except ValueError:
        return None


# ---------------------------------------------------------------- recipients and identities


class Recipient(Protocol):
    def wrap(self, file_key: bytes, random_bytes: RandomBytes) -> dict[str, Any]: ...


class Identity(Protocol):
    name: str

    def unwrap(self, stanza: dict[str, Any]) -> bytes | None: ...


@dataclass
class X25519Recipient:
    """A key-store user: the file key is wrapped for their public key with an ephemeral X25519 key."""

    user: str
    public_key: bytes

    def wrap(self, file_key: bytes, random_bytes: RandomBytes) -> dict[str, Any]:
        from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key, key_agreement

        ephemeral = import_x25519_private_key(random_bytes(32))
        epk = ephemeral.public_key().export_key(format="raw")
        shared = key_agreement(eph_priv=ephemeral, static_pub=import_x25519_public_key(self.public_key), kdf=lambda z: z)
        wrap_key = _hkdf(shared, epk + self.public_key, "x25519")
        return {"type": "x25519", "user": self.user, "epk": b64(epk), "body": b64(_seal_once(wrap_key, file_key))}


@dataclass
class X25519Identity:
    """An unlocked key-store user."""

    name: str
    private_key: Any  # pycryptodome EccKey on Curve25519

    def unwrap(self, stanza: dict[str, Any]) -> bytes | None:
        from Crypto.Protocol.DH import import_x25519_public_key, key_agreement

        if stanza.get("type") != "x25519" or stanza.get("user") != self.name:
            return None
        epk = unb64(stanza["epk"], 32)
        public_key = self.private_key.public_key().export_key(format="raw")
        shared = key_agreement(static_priv=self.private_key, eph_pub=import_x25519_public_key(epk), kdf=lambda z: z)
        return _open_once(_hkdf(shared, epk + public_key, "x25519"), unb64(stanza["body"]))


@dataclass
class KeyRecipient:
    """A 256-bit key file (machine-to-machine): wrap key = HKDF(key, random salt)."""

    key: bytes

    @property
    def name(self) -> str:
        return f"key:{key_id(self.key)}"

    def wrap(self, file_key: bytes, random_bytes: RandomBytes) -> dict[str, Any]:
        salt = random_bytes(16)
        return {"type": "key", "key_id": key_id(self.key), "salt": b64(salt), "body": b64(_seal_once(_hkdf(self.key, salt, "key"), file_key))}

    def unwrap(self, stanza: dict[str, Any]) -> bytes | None:
        if stanza.get("type") != "key" or stanza.get("key_id") != key_id(self.key):
            return None
        return _open_once(_hkdf(self.key, unb64(stanza["salt"], 16), "key"), unb64(stanza["body"]))


# ---------------------------------------------------------------- header


@dataclass
class Header:
    chunk_size: int
    payload_salt: bytes
    sealed_name: bytes
    recipients: list[dict[str, Any]]
    raw: bytes = b""  # the exact bytes the MAC covers (prefix + JSON)

    def to_json(self) -> bytes:
        data = {
            "chunk_size": self.chunk_size,
            "name": b64(self.sealed_name),
            "payload_salt": b64(self.payload_salt),
            "recipients": self.recipients,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def parse(cls, text: bytes) -> "Header":
        data = json.loads(text.decode("utf-8"))
        chunk = data["chunk_size"]
        if not isinstance(chunk, int) or not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise ValueError(f"bad chunk size {chunk!r}")
        recipients = data["recipients"]
        if not isinstance(recipients, list) or not recipients or not all(isinstance(r, dict) for r in recipients):
            raise ValueError("no recipients")
        return cls(chunk, unb64(data["payload_salt"], 16), unb64(data["name"]), recipients)

    def users(self) -> list[str]:
        return [r.get("user") or f"key:{r.get('key_id')}" for r in self.recipients]


@dataclass
class Result:
    """What decrypt (or encrypt) learned: original name, recipients, who opened it, sizes."""

    name: str
    recipients: list[str]
    opened_by: str | None = None
    plaintext_bytes: int = 0
    ciphertext_bytes: int = 0
    ciphertext_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class HashingReader:
    """Reads exactly what was asked (or up to EOF) and, unless told not to, hashes every byte read."""

    def __init__(self, handle: BinaryIO, *, hashing: bool = True):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.hashing = hashing
        self.count = 0

    def read(self, size: int) -> bytes:
        parts, missing = [], size
        while missing > 0:
            block = self.handle.read(missing)
            if not block:
                break
            parts.append(block)
            missing -= len(block)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.hashing:
            self.digest.update(data)
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray) -> int:
        """Fill ``buffer`` (or up to EOF) in place, no copy; returns the byte count."""
        view, filled = memoryview(buffer), 0
        readinto = getattr(self.handle, "readinto", None)
        while filled < len(view):
            if readinto is not None:
                got = readinto(view[filled:])
            else:  # a handle with read() only
                block = self.handle.read(len(view) - filled)
                got = len(block)
                view[filled : filled + got] = block
            if not got:
                break
            filled += got
        if self.hashing:
            self.digest.update(view[:filled])
        self.count += filled
        return filled


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def encrypt_stream(
    source: BinaryIO,
    target: BinaryIO,
    recipients: Sequence[Recipient],
    *,
    name: str = "",
    chunk_size: int = DEFAULT_CHUNK,
    random_bytes: RandomBytes | None = None,
    digest: bool = True,
    threads: int = 1,
) -> Result:
    """Encrypt ``source`` into ``target`` for every recipient; constant memory.

    ``digest`` keeps the SHA-256 of the written ciphertext (for audit logs and --json).
    ``threads`` > 1 seals that many chunks at once (the STREAM chunks are independent: each has
    its own nonce); the bytes written are the same, at most 2 × threads chunks are held.
    """
    if random_bytes is None:
        from Crypto.Random import get_random_bytes as random_bytes  # type: ignore[no-redef]
    if not recipients:
        raise UsageError("no recipients: give --to STORE (with users) and/or --key FILE")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"--chunk-size must be in {MIN_CHUNK}..{MAX_CHUNK} bytes")
    file_key = random_bytes(KEY_BYTES)
    payload_salt = random_bytes(16)
    stanzas = [r.wrap(file_key, random_bytes) for r in recipients]
    header = Header(chunk_size, payload_salt, _seal_once(_hkdf(file_key, b"", "name"), name.encode("utf-8")), stanzas)
    body = header.to_json()
    prefix = PREFIX.pack(MAGIC, VERSION, len(body))
    mac = hmac.new(_hkdf(file_key, b"", "header"), prefix + body, hashlib.sha256).digest()
    out_digest = hashlib.sha256()

    def write(data: bytes) -> None:
        target.write(data)
        if digest:
            out_digest.update(data)

    write(prefix + body + mac)
    payload_key = _hkdf(file_key, payload_salt, "payload")
    reader = HashingReader(source, hashing=False)
    if threads > 1:
        chunks = _seal_chunks_threaded(reader, payload_key, chunk_size, threads, write)
        return Result(name, header.users(), plaintext_bytes=reader.count, ciphertext_sha256=out_digest.hexdigest() if digest else "", extra={"chunks": chunks})
    # three reused buffers (this chunk, the look-ahead one, the sealed output): no per-chunk
    # allocation or copy; one write per chunk (ciphertext ‖ tag)
    current, following, sealed = bytearray(chunk_size), bytearray(chunk_size), bytearray(chunk_size + TAG_BYTES)
    out = memoryview(sealed)
    counter, size = 0, reader.readinto(current)
    while True:
        next_size = reader.readinto(following) if size == chunk_size else 0
        last = next_size == 0
        cipher = _gcm(payload_key, _nonce(counter, last))
        cipher.encrypt(memoryview(current)[:size], output=out[:size])
        out[size : size + TAG_BYTES] = cipher.digest()
        write(out[: size + TAG_BYTES])
        if last:
            break
        counter, size, current, following = counter + 1, next_size, following, current
    return Result(name, header.users(), plaintext_bytes=reader.count, ciphertext_sha256=out_digest.hexdigest() if digest else "", extra={"chunks": counter + 1})


def _seal_chunk(payload_key: bytes, counter: int, last: bool, data: bytes) -> bytes:
    cipher = _gcm(payload_key, _nonce(counter, last))
    return cipher.encrypt(data) + cipher.digest()


def _seal_chunks_threaded(reader: "HashingReader", payload_key: bytes, chunk_size: int, threads: int, write: Callable[[bytes], None]) -> int:
    """The payload of encrypt_stream, ``threads`` chunks sealed at once (AES-GCM releases the
    GIL), written in order; returns the number of chunks."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    counter = 0
    from medtools.core.signals import block_in_this_thread

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="medtools-seal", initializer=block_in_this_thread) as pool:
        current = reader.read(chunk_size)
        while True:
            following = reader.read(chunk_size) if len(current) == chunk_size else b""
            last = not following
            pending.append(pool.submit(_seal_chunk, payload_key, counter, last, current))
            if len(pending) >= 2 * threads:
                write(pending.popleft().result())
            if last:
                break
            counter, current = counter + 1, following
        while pending:
            write(pending.popleft().result())
    return counter + 1


def read_header(reader: HashingReader) -> tuple[Header, bytes]:
    """Parse prefix + JSON + MAC; any damage is an IntegrityError (exit 4)."""
    prefix = reader.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise IntegrityError("not a medtools encrypted file: too short")
    magic, version, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise IntegrityError("not a medtools encrypted file (bad magic) or damaged")
    if version != VERSION:
        raise IntegrityError(f"unsupported or damaged container version {version} (this medtools reads {VERSION})")
    if length > MAX_HEADER:
        raise IntegrityError(f"damaged header: length {length} is over {MAX_HEADER}")
    body = reader.read(length)
    mac = reader.read(MAC_BYTES)
    if len(body) < length or len(mac) < MAC_BYTES:
        raise IntegrityError("truncated header")
    try:
        header = Header.parse(body)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"damaged header ({type(exc).__name__})") from None
    header.raw = prefix + body
    return header, mac


def open_header(header: Header, mac: bytes, identities: Identities) -> tuple[bytes, str]:
    """Unwrap the file key with the first identity that opens a stanza, then check the MAC."""
    file_key, opened_by = None, None
    tried: list[str] = []
    damaged: list[str] = []  # stanzas addressed to a verified identity that do not open
    candidates = identities(header.recipients) if callable(identities) else identities
    for identity in candidates:
        tried.append(identity.name)
        for stanza in header.recipients:
            try:
                file_key = identity.unwrap(stanza)
            except (ValueError, KeyError, TypeError):
                file_key = None  # damaged stanza: try the others
            if file_key is not None:
                opened_by = identity.name
                break
            if identity.name in (stanza.get("user"), f"key:{stanza.get('key_id')}"):
                damaged.append(identity.name)
        if file_key is not None:
            break
    if (file_key is None or opened_by is None) and damaged:
        # the identity is verified (its key id matches, or the store opened with the password),
        # so its own entry failing authentication means the header bytes changed
        raise IntegrityError(f"the header is damaged: the recipient entry for {damaged[0]} fails authentication with its verified key (the file was modified; the password or key is not the problem)")
    if file_key is None or opened_by is None:
        raise AccessDenied(
            f"no recipient stanza opens with the given credentials (tried: {', '.join(tried) or 'none'}; "
            f"recipients: {', '.join(header.users())}); wrong password or key, or not a recipient"
        )
    expected = hmac.new(_hkdf(file_key, b"", "header"), header.raw, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise IntegrityError("the header has been modified (MAC mismatch)")
    return file_key, opened_by


def decrypt_stream(source: BinaryIO | HashingReader, target: BinaryIO, identities: Identities, *, digest: bool = True) -> Result:
    """Decrypt ``source`` into ``target``; IntegrityError on any damage, wrong key or truncation.

    Only authenticated chunks are written; when this raises, the caller must discard what
    was written (files go through an atomic temp path; a pipe consumer must check the exit).
    ``digest`` keeps the SHA-256 of the ciphertext read (for audit logs).
    """
    reader = source if isinstance(source, HashingReader) else HashingReader(source, hashing=digest)
    header, mac = read_header(reader)
    file_key, opened_by = open_header(header, mac, identities)
    name_bytes = _open_once(_hkdf(file_key, b"", "name"), header.sealed_name)
    if name_bytes is None:
        raise IntegrityError("damaged header (sealed name)")
    payload_key = _hkdf(file_key, header.payload_salt, "payload")
    sealed_size = header.chunk_size + TAG_BYTES
    counter, written = 0, 0
    # reused buffers as in encrypt_stream: two sealed chunks (this one, the look-ahead) and the plaintext
    current, following, plain = bytearray(sealed_size), bytearray(sealed_size), bytearray(header.chunk_size)
    out = memoryview(plain)
    size = reader.readinto(current)
    if not size:
        raise IntegrityError("truncated file: no payload")
    while True:
        next_size = reader.readinto(following) if size == sealed_size else 0
        last = next_size == 0
        if size < TAG_BYTES:
            raise IntegrityError(f"truncated file (chunk {counter})")
        view, n = memoryview(current), size - TAG_BYTES
        cipher = _gcm(payload_key, _nonce(counter, last))
        cipher.decrypt(view[:n], output=out[:n])
        try:
            cipher.verify(view[n:size])
        except ValueError:
            what = "truncated or damaged" if last else "damaged"
            raise IntegrityError(f"{what} file: chunk {counter} fails authentication") from None
        target.write(out[:n])  # only authenticated bytes leave this function
        written += n
        if last:
            break
        counter, size, current, following = counter + 1, next_size, following, current
    return Result(
        name_bytes.decode("utf-8", errors="replace"),
        header.users(),
        opened_by=opened_by,
        plaintext_bytes=written,
        ciphertext_bytes=reader.count,
        ciphertext_sha256=reader.digest.hexdigest() if reader.hashing else "",
        extra={"chunks": counter + 1},
    )
