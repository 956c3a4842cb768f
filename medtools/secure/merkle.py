"""SHA-256 Merkle seal of a folder: manifest, verification, inclusion proofs, signed roots.

The tree is the one of Certificate Transparency (RFC 9162 §2.1, formerly RFC 6962):
leaves are the files in sorted relative-path order, a leaf hash is
SHA-256(0x00 ‖ leaf data), an inner node SHA-256(0x01 ‖ left ‖ right), and a tree of n > 1
leaves splits at the largest power of two below n, so no leaf is ever duplicated (the
Bitcoin construction's CVE-2012-2459). The leaf data binds path and content:

    leaf data = u32 big-endian byte length of the UTF-8 path ‖ path ‖ SHA-256(file)

Inclusion proofs are RFC 9162 audit paths. The root may be signed with HMAC-SHA256 (a
shared 256-bit key) or Ed25519 (RFC 8032, pycryptodome); the signed message is
``medtools-seal/v1 root=<hex> files=<n>``. docs/formats.md has the manifest JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError, IntegrityError, UsageError

FORMAT = "medtools-seal"
PROOF_FORMAT = "medtools-seal-proof"
VERSION = 1
READ_CHUNK = 1 << 20


# ---------------------------------------------------------------- hashing


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def leaf_hash(path: str, sha256_hex: str) -> bytes:
    encoded = path.encode("utf-8")
    return hashlib.sha256(b"\x00" + struct.pack(">I", len(encoded)) + encoded + bytes.fromhex(sha256_hex)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash of the leaf hashes (SHA-256 of nothing for no leaves)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # bottom-up over complete subtrees gives the same tree as the recursive definition
    return _mth(level, 0, len(level))


def _mth(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 1:
        return leaves[start]
    k = _split(n)
    return node_hash(_mth(leaves, start, start + k), _mth(leaves, start + k, end))


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 inclusion proof for leaf ``index`` (sibling hashes from the leaf up)."""

    def path(start: int, end: int, m: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(start, start + k, m) + [_mth(leaves, start + k, end)]
        return path(start + k, end, m - k) + [_mth(leaves, start, start + k)]

    return path(0, len(leaves), index)


def root_from_path(leaf: bytes, index: int, size: int, siblings: Sequence[bytes]) -> bytes:
    """Recompute the root from a leaf and its audit path (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    fn, sn, node = index, size - 1, leaf
    for sibling in siblings:
        if sn == 0:
            raise ValueError("audit path too long")
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            node = node_hash(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("audit path too short")
    return node


# ---------------------------------------------------------------- signatures


def signed_message(root_hex: str, count: int) -> bytes:
    return f"medtools-seal/v1 root={root_hex} files={count}".encode("ascii")


def sign(root_hex: str, count: int, *, hmac_key: bytes | None = None, signing_key: Path | None = None) -> dict[str, Any] | None:
    from medtools.secure.keystore import key_id

    message = signed_message(root_hex, count)
    if hmac_key is not None and signing_key is not None:
        raise UsageError("give either --hmac-key or --sign, not both")
    if hmac_key is not None:
        from Crypto.Hash import HMAC, SHA256

        return {"type": "hmac-sha256", "key_id": key_id(hmac_key), "value": HMAC.new(hmac_key, message, SHA256).hexdigest()}
    if signing_key is not None:
        from Crypto.PublicKey import ECC
        from Crypto.Signature import eddsa

        try:
            key = ECC.import_key(Path(signing_key).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the Ed25519 private key {signing_key}: {exc}") from None
        if not key.has_private() or key.curve != "Ed25519":
            raise UsageError(f"{signing_key} is not an Ed25519 private key (make one with `medtools keys gen-key --ed25519 FILE`)")
        public = key.public_key().export_key(format="raw")
        return {"type": "ed25519", "public_key": public.hex(), "value": eddsa.new(key, "rfc8032").sign(message).hex()}
    return None


def check_signature(signature: dict[str, Any] | None, root_hex: str, count: int, *, hmac_key: bytes | None = None, public_key: Path | None = None) -> str:
    """'unsigned', 'not checked' or 'valid'; IntegrityError when a given key does not match."""
    if hmac_key is None and public_key is None:
        return "unsigned" if signature is None else "not checked"
    if signature is None:
        raise IntegrityError("the seal is not signed, but a key to check it was given")
    message = signed_message(root_hex, count)
    try:
        if hmac_key is not None:
            from Crypto.Hash import HMAC, SHA256

            if signature.get("type") != "hmac-sha256":
                raise IntegrityError(f"the seal is signed with {signature.get('type')}, not HMAC")
            HMAC.new(hmac_key, message, SHA256).hexverify(signature["value"])
        else:
            from Crypto.PublicKey import ECC
            from Crypto.Signature import eddsa

            try:
                key = ECC.import_key(Path(public_key).read_text())  # type: ignore[arg-type]
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the Ed25519 public key {public_key}: {exc}") from None
            if signature.get("type") != "ed25519":
                raise IntegrityError(f"the seal is signed with {signature.get('type')}, not Ed25519")
            eddsa.new(key, "rfc8032").verify(message, bytes.fromhex(signature["value"]))
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("the signature of the Merkle root does not verify with the given key") from None
    return "valid"


# ---------------------------------------------------------------- folder seal


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


def _read_json(path: Path, what: str) -> Any:
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
        data = _read_json(path, "seal manifest")
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


# ---------------------------------------------------------------- command glue


def _write_json(data: dict[str, Any], output: Path | None, overwrite: bool) -> None:
    from medtools.core import report
    from medtools.core.io import atomic_path

    text = json.dumps(data, indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    report.emit_path(output)


def seal_command(target: Path, *, output: Path | None, hmac_key: Path | None, signing_key: Path | None, proof: str | None, overwrite: bool) -> int:
    """`medtools seal DIR -o manifest.json` or `medtools seal manifest.json --proof REL`."""
    from medtools.core import report
    from medtools.secure.keystore import read_key_file

    if proof is not None:
        if target.is_dir():
            raise UsageError("with --proof, give the manifest (not the folder): medtools seal manifest.json --proof a/b.png")
        _write_json(make_proof(Seal.load(target), proof), output, overwrite)
        return 0
    if output is None:
        raise UsageError("missing -o/--output: the manifest file to write (e.g. -o manifest.json)")
    key = read_key_file(hmac_key) if hmac_key is not None else None
    result = seal_folder(target, exclude=[output], hmac_key=key, signing_key=signing_key)
    report.log(f"sealed {len(result.files)} files under {target}: root {result.root}" + (f" ({result.signature['type']} signed)" if result.signature else ""))
    _write_json(result.to_json(), output, overwrite)
    return 0


def verify_command(
    manifest: Path | None,
    folder: Path | None,
    *,
    proof: Path | None,
    file: Path | None,
    hmac_key: Path | None,
    public_key: Path | None,
    json_output: bool,
) -> int:
    """Folder against manifest, or a proof alone; exit 4 on any mismatch."""
    from medtools.core import report
    from medtools.core.errors import EXIT_INTEGRITY
    from medtools.secure.keystore import read_key_file

    key = read_key_file(hmac_key) if hmac_key is not None else None
    if proof is not None:
        if manifest is not None or folder is not None:
            raise UsageError("--proof is checked on its own: give no manifest or folder (use --file FILE to check content)")
        result = check_proof(_read_json(proof, "proof"), file=file, hmac_key=key, public_key=public_key)
        if json_output:
            report.emit_json(result)
        report.log(f"proof OK: {result['path']} is in the seal with root {result['root']} (signature: {result['signature']})")
        return 0
    if manifest is None or folder is None:
        raise UsageError("give MANIFEST and FOLDER (or --proof PROOF.json)")
    checked = verify_folder(Seal.load(manifest), folder, exclude=[manifest], hmac_key=key, public_key=public_key)
    if json_output:
        report.emit_json(checked.to_json())
    else:
        for kind in ("changed", "missing", "extra"):
            for rel in getattr(checked, kind):
                print(f"{kind}\t{rel}")
    if not checked.root_ok:
        report.error("the manifest's root does not match its own file list: the manifest was modified")
    if checked.ok:
        report.log(f"OK: {folder} matches {manifest} (signature: {checked.signature})")
        if checked.signature == "not checked":
            report.warn("the seal is signed but no --hmac-key/--public-key was given: the root's origin is not checked")
        return 0
    report.error(f"{folder} does not match {manifest}: {len(checked.changed)} changed, {len(checked.missing)} missing, {len(checked.extra)} extra")
    return EXIT_INTEGRITY
