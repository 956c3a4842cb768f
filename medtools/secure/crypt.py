"""encrypt/decrypt on files, folders and stdin: recipients, credentials, outputs, audit log.

This is the plain-function layer under ``medtools encrypt`` and ``medtools decrypt``:
``aes-gcm`` goes through the .mte container (any file, or ``-`` for a stdin→stdout stream
in constant memory), the image-domain methods through ``methods.py``. Outputs mirror the
inputs under ``-o``, are written atomically (a failed or tampered decryption leaves no
file) and existing outputs are skipped unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import IntegrityError, UsageError
from medtools.secure import AES_GCM, ALL_METHODS, container
from medtools.secure.keystore import AccessDenied, KeyStore, now_iso, read_key_file, read_password

STDIO = "-"


# ---------------------------------------------------------------- audit log


def audit(log_path: Path | None, **record: Any) -> None:
    """Append one JSON line (time, action, user, input, sha256, result): never a password or key."""
    if log_path is None:
        return
    line = json.dumps({"time": now_iso(), **record}, sort_keys=True) + "\n"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


# ---------------------------------------------------------------- credentials


@dataclass
class Keyring:
    """Credentials for decryption: a key file and/or a store user whose password is asked once.

    Without ``user``, every store user named in a file's stanzas is tried with the
    password; unlocking (scrypt) happens at most once per user per process.
    """

    store: KeyStore | None = None
    user: str | None = None
    key: bytes | None = None
    password_file: Path | None = None
    _password: bytes | None = None
    _unlocked: dict[str, Any] = field(default_factory=dict)
    _failed: set[str] = field(default_factory=set)
    _lock: Any = field(default_factory=lambda: __import__("threading").RLock())  # worker threads share one keyring

    def password(self) -> bytes:
        with self._lock:  # asked once, whichever worker needs it first
            if self._password is None:
                self._password = read_password(password_file=self.password_file, prompt="Password: ")
            return self._password

    def identities(self, stanzas: Sequence[dict[str, Any]]) -> Iterator[container.Identity]:
        if self.key is not None:
            yield container.KeyRecipient(self.key)
        if self.store is None:
            return
        named = [s.get("user") for s in stanzas if s.get("type") == "x25519"]
        if self.user is not None:
            if self.user not in named:
                raise AccessDenied(f"user {self.user!r} is not a recipient of this file (recipients: {', '.join(map(str, named)) or 'none'})")
            candidates = [self.user]
        else:
            known = {u.name for u in self.store.users()}
            candidates = [n for n in named if n in known]
        opened = False
        for name in candidates:
            if name in self._failed:
                if self.user is not None:
                    raise AccessDenied(f"wrong password for user {name!r}")
                continue
            with self._lock:  # scrypt once per user, not once per worker
                if name not in self._unlocked and name not in self._failed:
                    try:
                        private = self.store.unlock(name, self.password())
                    except IntegrityError:
                        self._failed.add(name)
                        if self.user is not None:
                            raise
                        continue
                    self._unlocked[name] = container.X25519Identity(name, private)
                if name not in self._unlocked:  # another worker found the password wrong meanwhile
                    if self.user is not None:
                        raise AccessDenied(f"wrong password for user {name!r}")
                    continue
            opened = True
            yield self._unlocked[name]
        if not opened and self.key is None:
            if not candidates:
                raise AccessDenied(f"no user of {self.store.path} is a recipient of this file (recipients: {', '.join(map(str, named)) or 'none'})")
            raise AccessDenied(f"wrong password: it opens none of this file's recipients in {self.store.path} (tried users: {', '.join(candidates)}); give --user NAME to name yours")


def recipients(store_path: Path | None, key_file: Path | None, users: Sequence[str] | None = None) -> list[container.Recipient]:
    """Every user of the store (or the named ones) plus the key file."""
    out: list[container.Recipient] = []
    if store_path is not None:
        store = KeyStore.load(store_path)
        chosen = store.users()
        if users:
            chosen = [store.user(name) for name in users]
        if not chosen:
            raise UsageError(f"{store_path} has no users: add one with `medtools keys add-user {store_path} NAME`")
        out.extend(container.X25519Recipient(u.name, u.public_key) for u in chosen)
    if key_file is not None:
        out.append(container.KeyRecipient(read_key_file(key_file)))
    if not out:
        raise UsageError("no recipients: give --to STORE (the users' key store) and/or --key FILE")
    return out


# ---------------------------------------------------------------- shared item loop


@dataclass
class Options:
    method: str = AES_GCM
    output: Path | None = None
    overwrite: bool = False
    key: bytes | None = None
    block_size: int = 16
    window: int = 5
    chunk_size: int = container.DEFAULT_CHUNK
    audit_log: Path | None = None
    shard: str | None = None
    hash_output: bool = False  # the ciphertext SHA-256 in each result (else only with an audit log)
    on_result: Callable[[dict[str, Any]], None] | None = None  # called per written file, in input order (the CLI prints it)
    workers: int | None = None  # threads (None: the run context's --workers, else the cores)
    chunk_threads: int = 1  # threads sealing the chunks of one file (set by _run: the workers the files leave idle)


def _items(inputs: Sequence[str], method: str, decrypting: bool, output: Path | None):
    from medtools.core.inputs import expand_inputs

    if method == AES_GCM:
        exts: tuple[str, ...] = (".mte",) if decrypting else ("",)
    else:
        from medtools.core.io import IMAGE_EXTS

        exts = IMAGE_EXTS
    return expand_inputs(inputs, exts=exts, output=output)


def _target(item, options: Options, decrypting: bool, single: bool) -> Path:
    from medtools.core.inputs import output_for
    from medtools.core.io import split_ext

    assert options.output is not None
    if options.method != AES_GCM:
        from medtools.imagecipher import methods

        return output_for(item, options.output, ext=methods.output_extension(item.rel), single=single)
    ext = split_ext(item.rel)[1]
    if not decrypting:
        return output_for(item, options.output, ext=ext + ".mte", single=single)
    return output_for(item, options.output, ext="" if ext.lower() == ".mte" else ext + ".dec", single=single)


def _emit(result: dict[str, Any], options: Options) -> None:
    if options.on_result is not None:
        options.on_result(result)


def _run(inputs: Sequence[str], options: Options, work, decrypting: bool) -> int:
    """Apply ``work(item, target)`` to every item on the batch driver (threads: --workers)."""
    from medtools.core import batch
    from medtools.core.inputs import check_output_arg, select_shard, skip_existing

    items = select_shard(_items(inputs, options.method, decrypting, options.output), options.shard)
    output = check_output_arg(options.output, len(items))
    options.output = output

    def one(item):
        target = _target(item, options, decrypting, single=len(items) == 1)
        if skip_existing(target, options.overwrite):
            return batch.SKIPPED
        return work(item, target)

    workers = batch.resolve_workers(options.workers)
    options.chunk_threads = max(1, workers // len(items))  # one big file: its chunks on the idle workers
    outcome = batch.run_items(items, one, emit=options.on_result, total=len(items), description="decrypt" if decrypting else "encrypt", workers=workers)
    return outcome.exit_code


# ---------------------------------------------------------------- encrypt


def _digest(options: Options) -> bool:
    """Hash the ciphertext only when someone reads the hash (audit log, --json)."""
    return options.audit_log is not None or options.hash_output


def encrypt(
    inputs: Sequence[str],
    *,
    options: Options,
    store: Path | None = None,
    key_file: Path | None = None,
    users: Sequence[str] | None = None,
) -> int:
    """Encrypt files (or a stdin stream) with the chosen method; returns the exit code."""
    method = options.method
    if method not in ALL_METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    if method == AES_GCM:
        targets = recipients(store, key_file, users)
        if list(inputs) == [STDIO]:
            return _encrypt_stdio(targets, options)
        return _run(inputs, options, lambda item, target: _encrypt_file(item, target, targets, options), decrypting=False)
    if STDIO in inputs:
        raise UsageError(f"--method {method} works on image files, not on stdin")
    if store is not None:
        raise UsageError(f"--to STORE is for --method aes-gcm; --method {method} takes --key FILE")
    from medtools.imagecipher import methods

    options.key = read_key_file(key_file) if key_file is not None else None
    methods.check_method(method, options.key)
    return _run(inputs, options, lambda item, target: _image_file(item, target, options, decrypt=False), decrypting=False)


def _encrypt_file(item, target: Path, targets, options: Options) -> dict[str, Any]:
    from medtools.core.io import atomic_open

    with open(item.path, "rb") as source, atomic_open(target) as sink:
        result = container.encrypt_stream(source, sink, targets, name=item.path.name, chunk_size=options.chunk_size, digest=_digest(options), threads=options.chunk_threads)
    record = {"input": str(item.path), "output": str(target), "method": AES_GCM, "recipients": result.recipients, "bytes": result.plaintext_bytes, "sha256": result.ciphertext_sha256}
    audit(options.audit_log, action="encrypt", input=str(item.path), output=str(target), recipients=result.recipients, sha256=result.ciphertext_sha256, result="ok")
    return record


def _check_terminals(*, binary_out: bool) -> None:
    """Refuse to wait for data typed on a terminal or to print ciphertext onto one (like age)."""
    if sys.stdin.isatty():
        raise UsageError("'-' reads the data from stdin, which is a terminal: redirect a file or a pipe into it")
    if binary_out and sys.stdout.isatty():
        raise UsageError("refusing to write encrypted bytes to a terminal: redirect stdout or give -o FILE")


def _encrypt_stdio(targets, options: Options) -> int:
    from medtools.core import batch

    _check_terminals(binary_out=options.output is None)
    source = sys.stdin.buffer
    if options.output is not None:
        from medtools.core.io import atomic_path

        if options.output.exists() and not options.overwrite:
            raise UsageError(f"{options.output} exists; pass --overwrite to replace it")
        with atomic_path(options.output) as tmp, open(tmp, "wb") as sink:
            result = container.encrypt_stream(source, sink, targets, chunk_size=options.chunk_size, digest=_digest(options), threads=batch.resolve_workers(options.workers))
        _emit({"input": STDIO, "output": str(options.output), "method": AES_GCM, "recipients": result.recipients, "bytes": result.plaintext_bytes, "sha256": result.ciphertext_sha256}, options)
    else:
        result = container.encrypt_stream(source, sys.stdout.buffer, targets, chunk_size=options.chunk_size, digest=_digest(options), threads=batch.resolve_workers(options.workers))
        sys.stdout.buffer.flush()
    audit(options.audit_log, action="encrypt", input=STDIO, output=str(options.output or STDIO), recipients=result.recipients, sha256=result.ciphertext_sha256, result="ok")
    return 0


def _image_file(item, target: Path, options: Options, *, decrypt: bool) -> dict[str, Any]:
    from medtools.imagecipher import methods

    methods.process_file(item.path, target, options.method, key=options.key, block_size=options.block_size, window=options.window, decrypt=decrypt)
    return {"input": str(item.path), "output": str(target), "method": options.method}


# ---------------------------------------------------------------- decrypt


def decrypt(
    inputs: Sequence[str],
    *,
    options: Options,
    store: Path | None = None,
    user: str | None = None,
    key_file: Path | None = None,
    password_file: Path | None = None,
) -> int:
    """Decrypt .mte files (or a stdin stream), or undo a reversible image method."""
    method = options.method
    if method not in ALL_METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    if method != AES_GCM:
        if STDIO in inputs:
            raise UsageError(f"--method {method} works on image files, not on stdin")
        from medtools.imagecipher import methods

        options.key = read_key_file(key_file) if key_file is not None else None
        methods.check_method(method, options.key, decrypting=True)
        return _run(inputs, options, lambda item, target: _image_file(item, target, options, decrypt=True), decrypting=True)
    if store is None and key_file is None:
        raise UsageError("decrypting needs --store STORE (with your user's password) or --key FILE")
    if user is not None and store is None:
        raise UsageError("--user needs --store STORE")
    keyring = Keyring(
        store=KeyStore.load(store) if store is not None else None,
        user=user,
        key=read_key_file(key_file) if key_file is not None else None,
        password_file=password_file,
    )
    if list(inputs) == [STDIO]:
        return _decrypt_stdio(keyring, options)
    return _run(inputs, options, lambda item, target: _decrypt_file(item, target, keyring, options), decrypting=True)


def _decrypt_to(source, sink, keyring: Keyring, options: Options) -> container.Result:
    return container.decrypt_stream(source, sink, keyring.identities, digest=options.audit_log is not None)


def _failure_record(exc: IntegrityError, keyring: Keyring) -> dict[str, Any]:
    return {"result": "denied" if isinstance(exc, AccessDenied) else "integrity-failure", "reason": str(exc), "user": keyring.user}


def _decrypt_file(item, target: Path, keyring: Keyring, options: Options) -> dict[str, Any]:
    from medtools.core.io import atomic_open
    from medtools.core.report import sha256_file

    try:  # the plaintext has no name on disk until it is complete and authenticated
        with open(item.path, "rb") as source, atomic_open(target) as sink:
            result = _decrypt_to(source, sink, keyring, options)
    except IntegrityError as exc:
        audit(options.audit_log, action="decrypt", input=str(item.path), sha256=sha256_file(item.path), **_failure_record(exc, keyring))
        raise
    audit(options.audit_log, action="decrypt", input=str(item.path), output=str(target), user=result.opened_by, sha256=result.ciphertext_sha256, result="ok")
    return {"input": str(item.path), "output": str(target), "method": AES_GCM, "name": result.name, "user": result.opened_by, "bytes": result.plaintext_bytes}


def _decrypt_stdio(keyring: Keyring, options: Options) -> int:
    _check_terminals(binary_out=False)
    source = container.HashingReader(sys.stdin.buffer, hashing=options.audit_log is not None)
    try:
        if options.output is not None:
            from medtools.core.io import atomic_open

            if options.output.exists() and not options.overwrite:
                raise UsageError(f"{options.output} exists; pass --overwrite to replace it")
            with atomic_open(options.output) as sink:
                result = _decrypt_to(source, sink, keyring, options)
            _emit({"input": STDIO, "output": str(options.output), "method": AES_GCM, "name": result.name, "user": result.opened_by, "bytes": result.plaintext_bytes}, options)
        else:
            result = _decrypt_to(source, sys.stdout.buffer, keyring, options)
            sys.stdout.buffer.flush()
    except IntegrityError as exc:
        audit(options.audit_log, action="decrypt", input=STDIO, sha256=source.digest.hexdigest(), sha256_of="bytes read before the failure", **_failure_record(exc, keyring))
        raise
    audit(options.audit_log, action="decrypt", input=STDIO, output=str(options.output or STDIO), user=result.opened_by, sha256=source.digest.hexdigest(), result="ok")
    return 0
