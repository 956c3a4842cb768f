"""Doctors' key store, passwords and key files.

A key store is a JSON file (mode 0600) holding, per user, an X25519 key pair whose
private half is sealed with AES-256-GCM under scrypt(password, per-user salt). Encrypting
to the store needs no password: the file key is wrapped for every user's public key (like
age recipients). Decrypting needs one user's password, which unseals that user's private
key. Removing a user deletes their public key, so files encrypted afterwards are not
wrapped for them. docs/formats.md gives the exact JSON.

Passwords never come from a flag value: ``--password-file``, ``MEDTOOLS_PASSWORD`` (for
scripts) or a TTY prompt (twice when a password is created).

Every change of a store (add-user, remove, passwd) is a read-modify-write under an
exclusive ``fcntl`` lock on ``.<store>.lock`` beside it, ending in an atomic replace: runs at
the same time all land, none is lost. Private key material (a store, a key file) that its
group or others may read or write is refused (UsageError, exit 2) unless the run
context allows it (``--insecure-permissions``), as age and ssh refuse such keys.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError, IntegrityError, UsageError

FORMAT = "medtools-keystore"
VERSION = 1
ENV_PASSWORD = "MEDTOOLS_PASSWORD"
ENV_NEW_PASSWORD = "MEDTOOLS_NEW_PASSWORD"
ENV_SCRYPT_LOG_N = "MEDTOOLS_SCRYPT_LOG_N"
DEFAULT_LOG_N = 18  # 2^18, as age: ~0.3-3 s and 256 MiB per unlock
MIN_LOG_N, MAX_LOG_N = 10, 22
SCRYPT_R, SCRYPT_P = 8, 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY_BYTES = 32


class AccessDenied(IntegrityError):
    """Wrong password or key, or not a recipient (exit 4 like any integrity failure)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, length: int | None = None) -> bytes:
    data = base64.b64decode(text.encode("ascii"), validate=True)
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, found {len(data)}")
    return data


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- permissions

from medtools.core.secrets import check_private_permissions, key_id, read_key_file  # noqa: E402,F401  (re-exported)


# ---------------------------------------------------------------- passwords


def _tty_available() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def read_password(
    *,
    password_file: Path | None = None,
    env: str = ENV_PASSWORD,
    prompt: str = "Password: ",
    confirm: bool = False,
) -> bytes:
    """The password from --password-file, then the environment, then the terminal.

    ``confirm`` asks twice on a terminal (a new password). The first line of the file is
    used without its line ending. Never reads stdin: that may carry the data.
    """
    if password_file is not None:
        try:
            text = Path(password_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read password file {password_file}: {exc.strerror}") from None
        password = text[0] if text else ""
    elif os.environ.get(env):
        password = os.environ[env]
    else:
        if not _tty_available():
            raise UsageError(f"a password is needed: give --password-file FILE or set {env} (no terminal to ask on)")
        import getpass

        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat: ") != password:
            raise UsageError("the two passwords differ")
    if not password:
        raise UsageError("empty password")
    return password.encode("utf-8")


def scrypt_log_n(value: int | None) -> int:
    """The scrypt work factor: flag, then MEDTOOLS_SCRYPT_LOG_N, then 18."""
    if value is None:
        env = os.environ.get(ENV_SCRYPT_LOG_N)
        value = int(env) if env else DEFAULT_LOG_N
    if not MIN_LOG_N <= value <= MAX_LOG_N:
        raise UsageError(f"--scrypt-log-n must be in {MIN_LOG_N}..{MAX_LOG_N} (default {DEFAULT_LOG_N}), got {value}")
    return value


def _kek(password: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    from Crypto.Protocol.KDF import scrypt

    return scrypt(password, salt, KEY_BYTES, N=1 << log_n, r=r, p=p)  # type: ignore[arg-type]


# ---------------------------------------------------------------- key files


def write_private(path: Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write a secret atomically with mode 0600 from the first byte (never world-readable).

    core.io.atomic_path gives outputs the umask mode, which is right for images but not
    for key stores and keys, so secrets ask it for a private (0600) file.
    """
    from medtools.core.io import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    with atomic_path(path, private=True) as tmp:  # the temp file is 0600 from its creation
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def generate_key_file(path: Path, *, overwrite: bool = False) -> Path:
    """32 random bytes as 64 hex digits and a newline, mode 0600."""
    from Crypto.Random import get_random_bytes

    write_private(Path(path), get_random_bytes(KEY_BYTES).hex().encode("ascii") + b"\n", overwrite=overwrite)
    return Path(path)


def generate_signing_key(path: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """An Ed25519 key pair: PATH (private, PKCS#8 PEM, 0600) and PATH.pub (public PEM)."""
    from Crypto.PublicKey import ECC

    key = ECC.generate(curve="ed25519")
    public = Path(str(path) + ".pub")
    if public.exists() and not overwrite:
        raise UsageError(f"{public} exists; pass --overwrite to replace it")
    write_private(Path(path), key.export_key(format="PEM").encode("ascii"), overwrite=overwrite)
    from medtools.core.io import atomic_path

    with atomic_path(public) as tmp:
        tmp.write_text(key.public_key().export_key(format="PEM"))
    return Path(path), public


# ---------------------------------------------------------------- the store


@dataclass
class User:
    name: str
    public_key: bytes
    record: dict[str, Any]

    def fingerprint(self) -> str:
        return key_id(self.public_key)


def _aad(name: str, public_key: bytes) -> bytes:
    return b"medtools-keystore/v1\x00" + name.encode("utf-8") + b"\x00" + public_key


class KeyStore:
    """Load, change and save a key store file; unlock one user's private key."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data

    # -- file
    @classmethod
    def create(cls, path: Path, *, log_n: int | None = None, overwrite: bool = False) -> "KeyStore":
        path = Path(path)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to start a new store there")
        store = cls(path, {"format": FORMAT, "version": VERSION, "created": now_iso(), "scrypt_log_n": scrypt_log_n(log_n), "users": {}})
        with store._lock():
            if path.exists() and not overwrite:
                raise UsageError(f"{path} exists; pass --overwrite to start a new store there")
            store.save()
        return store

    @classmethod
    def load(cls, path: Path) -> "KeyStore":
        path = Path(path)
        check_private_permissions(path, "a key store")
        return cls(path, cls._read(path))

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"no key store at {path} (create one with `medtools keys init {path}`)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not a readable key store: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("users"), dict):
            raise InputError(f"{path} is not a medtools key store")
        if data.get("version") != VERSION:
            raise InputError(f"{path}: key store version {data.get('version')} is not supported (this medtools reads {VERSION})")
        return data

    def save(self) -> None:
        write_private(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    @contextlib.contextmanager
    def _lock(self):
        """Exclusive flock on .<store>.lock beside the store (the store itself is replaced on save)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / f".{self.path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _update(self):
        """Read-modify-write under the lock: reload, let the caller change ``data``, save atomically."""
        with self._lock():
            self.data = self._read(self.path)
            yield self.data
            self.save()

    # -- users
    def users(self) -> list[User]:
        out = []
        for name, record in sorted(self.data["users"].items()):
            try:
                out.append(User(name, unb64(record["public_key"], 32), record))
            except (KeyError, ValueError, TypeError):
                raise InputError(f"{self.path}: the entry of user {name!r} is damaged") from None
        return out

    def user(self, name: str) -> User:
        for user in self.users():
            if user.name == name:
                return user
        known = ", ".join(u.name for u in self.users()) or "none"
        raise AccessDenied(f"no user {name!r} in {self.path} (users: {known})")

    def _seal(self, name: str, password: bytes, private_seed: bytes, public_key: bytes, log_n: int) -> dict[str, Any]:
        from Crypto.Cipher import AES
        from Crypto.Random import get_random_bytes

        salt, nonce = get_random_bytes(16), get_random_bytes(12)
        cipher = AES.new(_kek(password, salt, log_n, SCRYPT_R, SCRYPT_P), AES.MODE_GCM, nonce=nonce)
        cipher.update(_aad(name, public_key))
        sealed, tag = cipher.encrypt_and_digest(private_seed)
        return {
            "kdf": {"name": "scrypt", "log_n": log_n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64(salt)},
            "nonce": b64(nonce),
            "sealed_private_key": b64(sealed + tag),
        }

    def add_user(self, name: str, password: bytes, *, log_n: int | None = None) -> User:
        from Crypto.PublicKey import ECC

        if not NAME_PATTERN.match(name):
            raise UsageError(f"user name {name!r}: use 1-64 letters, digits and . _ @ - (starting with a letter or digit)")
        if name in self.data["users"]:
            raise UsageError(f"user {name!r} is already in {self.path} (use `keys passwd` to change the password)")
        log_n = scrypt_log_n(log_n if log_n is not None else self.data.get("scrypt_log_n"))
        key = ECC.generate(curve="Curve25519")
        public_key = key.public_key().export_key(format="raw")
        record = {"created": now_iso(), "public_key": b64(public_key)}
        record.update(self._seal(name, password, key.seed, public_key, log_n))  # slow (scrypt): outside the lock
        with self._update() as data:
            if name in data["users"]:
                raise UsageError(f"user {name!r} is already in {self.path} (use `keys passwd` to change the password)")
            data["users"][name] = record
        return User(name, public_key, record)

    def remove_user(self, name: str) -> None:
        with self._update() as data:
            if name not in data["users"]:
                raise UsageError(f"no user {name!r} in {self.path}")
            del data["users"][name]

    def unlock(self, name: str, password: bytes):
        """The user's X25519 private key (EccKey); IntegrityError on a wrong password."""
        from Crypto.Cipher import AES
        from Crypto.Protocol.DH import import_x25519_private_key

        user = self.user(name)
        try:
            kdf = user.record["kdf"]
            if kdf.get("name") != "scrypt" or not MIN_LOG_N <= int(kdf["log_n"]) <= 24:
                raise ValueError("unsupported key derivation")
            salt = unb64(kdf["salt"])
            nonce = unb64(user.record["nonce"], 12)
            sealed = unb64(user.record["sealed_private_key"], 48)
            kek = _kek(password, salt, int(kdf["log_n"]), int(kdf["r"]), int(kdf["p"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path}: the entry of user {name!r} is damaged ({exc})") from None
        cipher = AES.new(kek, AES.MODE_GCM, nonce=nonce)
        cipher.update(_aad(name, user.public_key))
        try:
            seed = cipher.decrypt_and_verify(sealed[:32], sealed[32:])
        except ValueError:
            raise AccessDenied(f"wrong password for user {name!r}") from None
        return import_x25519_private_key(seed)

    def change_password(self, name: str, old: bytes, new: bytes, *, log_n: int | None = None) -> None:
        """Re-seal the same private key under a new password (existing files stay readable)."""
        private = self.unlock(name, old)
        user = self.user(name)
        log_n = scrypt_log_n(log_n if log_n is not None else int(user.record["kdf"]["log_n"]))
        sealed = self._seal(name, new, private.seed, user.public_key, log_n)  # slow (scrypt): outside the lock
        with self._update() as data:
            record = data["users"].get(name)
            if record is None or record.get("public_key") != user.record.get("public_key"):
                raise UsageError(f"user {name!r} was removed or replaced in {self.path} meanwhile; nothing changed")
            record.update(sealed)
            record["changed"] = now_iso()

    def describe(self) -> list[dict[str, Any]]:
        """Public facts per user (never the sealed key)."""
        return [
            {
                "user": u.name,
                "created": u.record.get("created"),
                "fingerprint": u.fingerprint(),
                "scrypt_log_n": u.record.get("kdf", {}).get("log_n"),
            }
            for u in self.users()
        ]


def generate_keys(path: Path, *, ed25519: bool = False, overwrite: bool = False) -> list[Path]:
    """``keys gen-key``: a 256-bit key file, or an Ed25519 signing key and PATH.pub; the paths written."""
    if ed25519:
        return list(generate_signing_key(path, overwrite=overwrite))
    return [generate_key_file(path, overwrite=overwrite)]


def render_users(users: list[dict[str, Any]]) -> list[str]:
    """keys list for people: one user name per line."""
    return [user["user"] for user in users]
