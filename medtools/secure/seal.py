"""SHA-256 Merkle seal of a folder: manifest, verification, inclusion proofs (signed roots in signature.py).

The tree is the RFC 9162 one of :mod:`medtools.core.merkle`: leaves are the files in sorted
relative-path order, and the leaf data binds path and content:

    leaf data = u32 big-endian byte length of the UTF-8 path ‖ path ‖ SHA-256(file)

Inclusion proofs are RFC 9162 audit paths. docs/formats.md has the manifest JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError, IntegrityError, MedtoolsError, UsageError
from medtools.core.merkle import audit_path, hash_leaf, root_from_path, tree_root
from medtools.secure.signature import check_signature, sign

FORMAT = "medtools-seal"
PROOF_FORMAT = "medtools-seal-proof"
VERSION = 1
READ_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def leaf_hash(path: str, sha256_hex: str) -> bytes:
    encoded = path.encode("utf-8")
    return hash_leaf(struct.pack(">I", len(encoded)) + encoded + bytes.fromhex(sha256_hex))



def walk(folder: Path, *, exclude: Iterable[Path] = ()) -> list[str]:
    """Sorted POSIX relative paths of the regular files below ``folder`` (symlinks skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file() or path.resolve() in skip:
                continue
            found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def read_json(path: Path, what: str) -> Any:
    """A manifest or proof: missing is an input error (5), unreadable an integrity one (4)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no {what} at {path}") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path} is not a readable {what}: {exc}") from None


@dataclass
class Seal:
    files: list[dict[str, Any]]  # {"path", "size", "sha256"} sorted by path
    root: str
    signature: dict[str, Any] | None = None
    created: str = ""

    def leaves(self) -> list[bytes]:
        return [leaf_hash(f["path"], f["sha256"]) for f in self.files]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "hash": "sha256",
            "tree": "rfc9162",
            "created": self.created,
            "root": self.root,
            "count": len(self.files),
            "files": self.files,
        }
        if self.signature:
            data["signature"] = self.signature
        return data

    @classmethod
    def load(cls, path: Path) -> "Seal":
        data = read_json(path, "seal manifest")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IntegrityError(f"{path} is not a medtools seal manifest")
        if data.get("version") != VERSION:
            raise IntegrityError(f"{path}: seal version {data.get('version')} is not supported")
        try:
            files = [{"path": str(f["path"]), "size": int(f["size"]), "sha256": str(f["sha256"])} for f in data["files"]]
            for f in files:
                bytes.fromhex(f["sha256"])
            return cls(files, str(data["root"]), data.get("signature"), data.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{path}: damaged manifest ({exc})") from None


def seal_folder(folder: Path, *, exclude: Iterable[Path] = (), hmac_key: bytes | None = None, signing_key: Path | None = None) -> Seal:
    """Hash every file below ``folder`` (streaming) and build the signed Merkle manifest."""
    from medtools.core.report import progress
    from medtools.secure.keystore import now_iso

    relpaths = walk(folder, exclude=exclude)
    files = []
    for rel in progress(relpaths, total=len(relpaths), description="seal"):
        path = Path(folder) / rel
        files.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
    root = tree_root([leaf_hash(f["path"], f["sha256"]) for f in files]).hex()
    return Seal(files, root, sign(root, len(files), hmac_key=hmac_key, signing_key=signing_key), now_iso())


@dataclass
class Verification:
    root_ok: bool
    signature: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.root_ok and not (self.changed or self.missing or self.extra)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "root_matches_files": self.root_ok, "signature": self.signature, "changed": self.changed, "missing": self.missing, "extra": self.extra}


def verify_folder(seal: Seal, folder: Path, *, exclude: Iterable[Path] = (), hmac_key: bytes | None = None, public_key: Path | None = None) -> Verification:
    """Compare a folder with its seal: changed, missing and extra files; root and signature."""
    from medtools.core.report import progress

    root_ok = tree_root(seal.leaves()).hex() == seal.root
    signature = check_signature(seal.signature, seal.root, len(seal.files), hmac_key=hmac_key, public_key=public_key)
    present = set(walk(folder, exclude=exclude))
    result = Verification(root_ok, signature)
    listed = set()
    for entry in progress(seal.files, total=len(seal.files), description="verify"):
        rel = entry["path"]
        listed.add(rel)
        if rel not in present:
            result.missing.append(rel)
        elif file_sha256(Path(folder) / rel) != entry["sha256"]:
            result.changed.append(rel)
    result.extra = sorted(present - listed)
    return result


# ---------------------------------------------------------------- proofs


def make_proof(seal: Seal, relpath: str) -> dict[str, Any]:
    """Inclusion proof of one file: leaf data, index, tree size, audit path, root, signature."""
    paths = [f["path"] for f in seal.files]
    if relpath not in paths:
        raise UsageError(f"{relpath} is not in the seal (paths are relative to the sealed folder, e.g. {paths[0] if paths else 'a/b.png'})")
    if tree_root(seal.leaves()).hex() != seal.root:
        raise IntegrityError("the manifest's root does not match its file list: the manifest was modified")
    index = paths.index(relpath)
    entry = seal.files[index]
    proof = {
        "format": PROOF_FORMAT,
        "version": VERSION,
        "path": relpath,
        "sha256": entry["sha256"],
        "size": entry["size"],
        "index": index,
        "tree_size": len(paths),
        "audit_path": [h.hex() for h in audit_path(seal.leaves(), index)],
        "root": seal.root,
    }
    if seal.signature:
        proof["signature"] = seal.signature
    return proof


def check_proof(proof: dict[str, Any], *, file: Path | None = None, hmac_key: bytes | None = None, public_key: Path | None = None) -> dict[str, Any]:
    """Check an inclusion proof on its own (and the file's content when given)."""
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        raise IntegrityError("not a medtools seal proof")
    try:
        leaf = leaf_hash(proof["path"], proof["sha256"])
        root = root_from_path(leaf, int(proof["index"]), int(proof["tree_size"]), [bytes.fromhex(h) for h in proof["audit_path"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"damaged proof ({exc})") from None
    if root.hex() != proof["root"]:
        raise IntegrityError(f"the proof does not lead to its root: {proof['path']} is not proven to be in the seal")
    signature = check_signature(proof.get("signature"), proof["root"], int(proof["tree_size"]), hmac_key=hmac_key, public_key=public_key)
    result = {"ok": True, "path": proof["path"], "root": proof["root"], "signature": signature, "file": None}
    if file is not None:
        digest = file_sha256(Path(file))
        if digest != proof["sha256"]:
            raise IntegrityError(f"{file} does not match the sealed content of {proof['path']} (sha256 {digest[:16]}… ≠ {proof['sha256'][:16]}…)")
        result["file"] = str(file)
    return result


def write_json(data: dict[str, Any], output: Path, *, overwrite: bool) -> Path:
    """Write a manifest or proof atomically; an existing file only with ``overwrite``."""
    from medtools.core.io import atomic_path

    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return output


def seal_job(target: Path, output: Path | None, *, hmac_key: Path | None, sign: Path | None, proof: str | None, overwrite: bool) -> int:
    """``seal``: the Merkle manifest of a folder → ``output`` (or, with ``proof``, one file's
    inclusion proof from the manifest ``target``); JSON on stdout when no ``output``."""
    import json

    from medtools.core import report
    from medtools.core.secrets import read_key_file

    def emit(data: dict, out: Path | None) -> None:
        if out is None:
            print(json.dumps(data, indent=2))
        else:
            report.emit_path(write_json(data, out, overwrite=overwrite))

    if proof is not None:
        if target.is_dir():
            raise UsageError("with --proof, give the manifest (not the folder): medtools seal manifest.json --proof a/b.png")
        emit(make_proof(Seal.load(target), proof), output)
        return 0
    if output is None:
        raise UsageError("missing -o/--output: the manifest file to write (e.g. -o manifest.json)")
    if target.is_dir() and output.is_file() and output.resolve().is_relative_to(target.resolve()):
        try:  # every file below the folder is an input: only an earlier manifest may be replaced
            Seal.load(output)
        except MedtoolsError:
            raise UsageError(f"output {output} would overwrite the input {output} (a file of the sealed folder {target}); choose another -o") from None
    key = read_key_file(hmac_key) if hmac_key is not None else None
    result = seal_folder(target, exclude=[output], hmac_key=key, signing_key=sign)
    report.log(f"sealed {len(result.files)} files under {target}: root {result.root}" + (f" ({result.signature['type']} signed)" if result.signature else ""))
    emit(result.to_json(), output)
    return 0


def verify_job(manifest: Path | None, folder: Path | None, *, proof: Path | None, file: Path | None, hmac_key: Path | None, public_key: Path | None) -> int:
    """``verify``: a folder against its seal (changed, missing, extra: exit 4) or one proof on its own."""
    from medtools.core import report
    from medtools.core.errors import EXIT_INTEGRITY, EXIT_OK
    from medtools.core.secrets import read_key_file

    key = read_key_file(hmac_key) if hmac_key is not None else None
    if proof is not None:
        if manifest is not None or folder is not None:
            raise UsageError("--proof is checked on its own: give no manifest or folder (use --file FILE to check content)")
        result = check_proof(read_json(proof, "proof"), file=file, hmac_key=key, public_key=public_key)
        report.emit_result(result)
        report.log(f"proof OK: {result['path']} is in the seal with root {result['root']} (signature: {result['signature']})")
        return EXIT_OK
    if manifest is None or folder is None:
        raise UsageError("give MANIFEST and FOLDER (or --proof PROOF.json)")
    checked = verify_folder(Seal.load(manifest), folder, exclude=[manifest], hmac_key=key, public_key=public_key)
    report.emit_result(checked.to_json(), lambda _: [f"{kind}\t{rel}" for kind in ("changed", "missing", "extra") for rel in getattr(checked, kind)])
    if not checked.root_ok:
        report.error("the manifest's root does not match its own file list: the manifest was modified")
    if checked.ok:
        report.log(f"OK: {folder} matches {manifest} (signature: {checked.signature})")
        if checked.signature == "not checked":
            report.warn("the seal is signed but no --hmac-key/--public-key was given: the root's origin is not checked")
        return EXIT_OK
    report.error(f"{folder} does not match {manifest}: {len(checked.changed)} changed, {len(checked.missing)} missing, {len(checked.extra)} extra")
    return EXIT_INTEGRITY
