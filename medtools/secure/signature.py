"""Signed Merkle roots of a seal: HMAC-SHA256 (a shared 256-bit key) or Ed25519 (RFC 8032, pycryptodome).

The signed message is ``medtools-seal/v1 root=<hex> files=<n>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtools.core.errors import IntegrityError, UsageError



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

        from medtools.core.secrets import check_private_permissions

        check_private_permissions(signing_key, "an Ed25519 private key")
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
