"""CKKS (RLWE) homomorphic encryption of feature columns with TenSEAL: contexts, packing, scoring.

Packing ("column packing"): a block of up to ``slots`` = N/2 entries with D-dimensional,
L2-normalised features X (count × D) is stored as D ciphertexts, ciphertext j holding
column j, X[:, j], one entry per slot (zero-padded to ``slots``). A cosine score of every
entry of a block against a query q is then

    s = Σ_j q_j · C_j          (one ciphertext: all entries of the block at once)

* encrypted query: the client sends Q_j = Enc(q_j in every slot) for each j; the server
  computes Σ_j C_j ⊗ Q_j (ciphertext × ciphertext) with the public context: it sees
  neither q nor X.

The server neither relinearises nor rescales: the sum of the D degree-2 products is
returned as one 3-component ciphertext at scale 2^(2·scale_bits), which the client's
decryptor reads directly (SEAL decrypts ciphertexts of any size). That is about 5× less
work than relinearising and rescaling every product, and the result still fits the
modulus (2·40 + value bits < 60 + 40 at ``n8192``). The public context holds the public key
and relinearisation keys (TenSEAL's product checks for them) and no Galois keys (nothing
is rotated).
* plain query (``--plain-query``): the server sees q in the clear, multiplies each C_j by
  the scalar q_j; the stored features stay encrypted.

In both modes only the client's secret context decrypts the scores.

Parameters (HomomorphicEncryption.org security standard, Albrecht et al. 2018, table for
uniform ternary secrets; SEAL enforces the same 128-bit bounds): for ring dimension N the
total coefficient modulus may be at most 109 bits (N = 4096), 218 (8192), 438 (16384). The
default ``n8192`` uses [60, 40, 60] = 160 bits with scale 2^40 (scores to about 1e-8);
``n4096`` uses [40, 30, 39] = 109 bits with scale 2^30 (still 128-bit; scores to about 3e-6,
ciphertexts 86 KB instead of 235 KB). The first two primes hold the never-rescaled score,
the last is the key-switching (special) prime.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, IntegrityError, UsageError

CONTEXT_MAGIC = b"medtools-ckks-context/v1\n"
BLOCK_MAGIC = b"medtools-ckks-block/v1\n"
QUERY_MAGIC = b"medtools-ckks-query/v1\n"
SCORES_MAGIC = b"medtools-ckks-scores/v1\n"

# HomomorphicEncryption.org standard, 128-bit classical security, ternary secret: max log2(q)
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class Params:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def coeff_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def check(self) -> "Params":
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise UsageError(f"poly modulus degree {self.poly_modulus_degree} is not one of {', '.join(map(str, MAX_COEFF_BITS_128))}")
        if self.coeff_bits > limit:
            raise UsageError(f"coefficient modulus {self.coeff_bits} bits > {limit} bits: below 128-bit security for N = {self.poly_modulus_degree}")
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": "ckks",
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "coeff_bits": self.coeff_bits,
            "scale_bits": self.scale_bits,
            "slots": self.slots,
            "security_bits": 128,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Params":
        return cls(int(data["poly_modulus_degree"]), tuple(int(b) for b in data["coeff_mod_bit_sizes"]), int(data["scale_bits"]))


PRESETS = {
    "n8192": Params(8192, (60, 40, 60), 40),
    "n4096": Params(4096, (40, 30, 39), 30),
}
DEFAULT_PRESET = "n8192"


# ---------------------------------------------------------------- contexts


@dataclass
class Context:
    """A TenSEAL context with its header: key id (SHA-256 of the public part) and parameters."""

    ts_context: Any
    key_id: str
    params: Params

    @property
    def secret(self) -> bool:
        return bool(self.ts_context.is_private())


def _tenseal() -> Any:
    try:
        import tenseal
    except ImportError:
        raise UsageError("the encrypted index needs TenSEAL: pip install 'medtools[he]'") from None
    return tenseal


def _write_context(path: Path, header: dict[str, Any], body: bytes, *, secret: bool, overwrite: bool) -> Path:
    from medtools.core.io import atomic_path

    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    with atomic_path(path, private=secret) as tmp:
        Path(tmp).write_bytes(CONTEXT_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body)
    return path


def keygen(folder: Path, *, preset: str = DEFAULT_PRESET, overwrite: bool = False) -> dict[str, Any]:
    """Write ``folder/secret`` (client, 0600) and ``folder/public`` (server) CKKS contexts."""
    ts = _tenseal()
    if preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
    params = PRESETS[preset].check()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0**params.scale_bits
    ctx.generate_relin_keys()  # TenSEAL's ciphertext product asks for them even when it does not relinearise
    public = ctx.copy()
    public.make_context_public()
    public_bytes = public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)
    secret_bytes = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True)
    key_id = hashlib.sha256(public_bytes).hexdigest()[:32]
    header = {"key_id": key_id, "params": params.to_json(), "preset": preset}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    secret_path = _write_context(folder / "secret", {**header, "part": "secret"}, secret_bytes, secret=True, overwrite=overwrite)
    public_path = _write_context(folder / "public", {**header, "part": "public"}, public_bytes, secret=False, overwrite=overwrite)
    return {"secret": secret_path, "public": public_path, "key_id": key_id, "params": params.to_json(), "bytes": {"secret": secret_path.stat().st_size, "public": public_path.stat().st_size}}


def load_context(path: Path, *, secret: bool) -> Context:
    """Read a context file; ``secret`` says which part this command must be given."""
    ts = _tenseal()
    path = Path(path)
    if path.is_dir():
        path = path / ("secret" if secret else "public")
    if secret:
        from medtools.core.secrets import check_private_permissions

        check_private_permissions(path, "a secret CKKS context")
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"no CKKS context at {path} (make one with `medtools index keygen -o ctx/`)") from None
    if not blob.startswith(CONTEXT_MAGIC):
        raise InputError(f"{path} is not a medtools CKKS context")
    head, _, body = blob[len(CONTEXT_MAGIC) :].partition(b"\n")
    try:
        header = json.loads(head)
        ctx = ts.context_from(body)
    except (ValueError, RuntimeError) as exc:
        raise IntegrityError(f"{path}: damaged CKKS context ({exc})") from None
    if secret and not ctx.is_private():
        raise UsageError(f"{path} is the public context; this command runs at the client and needs the secret one (--secret ctx/secret)")
    if not secret and ctx.is_private():
        raise UsageError(f"{path} holds the secret key; server-side commands take the public context only (--public ctx/public)")
    params = Params.from_json(header["params"])
    params.check()
    return Context(ctx, str(header["key_id"]), params)


# ---------------------------------------------------------------- blobs


def pack(magic: bytes, header: dict[str, Any], parts: Sequence[bytes]) -> bytes:
    """magic ‖ JSON header line ‖ (u64 big-endian length ‖ bytes)*."""
    out = [magic, json.dumps(header, sort_keys=True).encode(), b"\n"]
    for part in parts:
        out += [struct.pack(">Q", len(part)), part]
    return b"".join(out)


def unpack(blob: bytes, magic: bytes, what: str) -> tuple[dict[str, Any], list[bytes]]:
    if not blob.startswith(magic):
        raise IntegrityError(f"not a medtools {what}")
    head, _, rest = blob[len(magic) :].partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise IntegrityError(f"damaged {what} header") from None
    parts, offset = [], 0
    while offset < len(rest):
        if offset + 8 > len(rest):
            raise IntegrityError(f"truncated {what}")
        (n,) = struct.unpack(">Q", rest[offset : offset + 8])
        if offset + 8 + n > len(rest):
            raise IntegrityError(f"truncated {what}")
        parts.append(rest[offset + 8 : offset + 8 + n])
        offset += 8 + n
    return header, parts


# ---------------------------------------------------------------- packing and scoring


def columns(features: np.ndarray, slots: int) -> list[np.ndarray]:
    """(count, D) features → D zero-padded columns of ``slots`` values (the packing)."""
    count, dim = features.shape
    if count > slots:
        raise ValueError(f"{count} entries do not fit one block of {slots} slots")
    padded = np.zeros((slots, dim), np.float64)
    padded[:count] = features
    return [padded[:, j] for j in range(dim)]


def encrypt_block(ctx: Context, features: np.ndarray) -> bytes:
    """Encrypt one block's features (count ≤ slots, D) with the public key: D column ciphertexts."""
    ts = _tenseal()
    features = np.asarray(features, np.float64)
    parts = [ts.ckks_vector(ctx.ts_context, col.tolist()).serialize() for col in columns(features, ctx.params.slots)]
    return pack(BLOCK_MAGIC, {"key_id": ctx.key_id, "count": int(features.shape[0]), "dim": int(features.shape[1])}, parts)


def encrypt_query(ctx: Context, query: np.ndarray) -> bytes:
    """Client: Q_j = Enc(q_j broadcast to every slot), one ciphertext per dimension."""
    ts = _tenseal()
    if not ctx.secret:
        raise UsageError("encrypting a query needs the client's secret context")
    slots = ctx.params.slots
    parts = [ts.ckks_vector(ctx.ts_context, [float(v)] * slots).serialize() for v in np.asarray(query, np.float64)]
    return pack(QUERY_MAGIC, {"key_id": ctx.key_id, "dim": len(parts)}, parts)


def load_block(ctx: Context, blob: bytes) -> tuple[dict[str, Any], list[Any]]:
    """A block file's bytes → (header, D ciphertext vectors linked to ``ctx``)."""
    ts = _tenseal()
    header, parts = unpack(blob, BLOCK_MAGIC, "encrypted index block")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the block was encrypted for key {header.get('key_id')}, the context is key {ctx.key_id}")
    try:
        return header, [ts.ckks_vector_from(ctx.ts_context, p) for p in parts]
    except (ValueError, RuntimeError, TypeError) as exc:
        raise IntegrityError(f"damaged ciphertext in the index block ({exc})") from None


def load_query(ctx: Context, blob: bytes) -> list[Any]:
    """An encrypted query's bytes → its D ciphertext vectors (deserialised once for all blocks)."""
    ts = _tenseal()
    header, parts = unpack(blob, QUERY_MAGIC, "encrypted query")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the query was encrypted for key {header.get('key_id')}, the index is key {ctx.key_id}: wrong secret context")
    try:
        return [ts.ckks_vector_from(ctx.ts_context, p) for p in parts]
    except (ValueError, RuntimeError, TypeError) as exc:
        raise IntegrityError(f"damaged ciphertext in the query ({exc})") from None


def score_loaded(ctx: Context, block: tuple[dict[str, Any], list[Any]], *, query: list[Any] | None = None, plain_query: np.ndarray | None = None) -> bytes:
    """Server: one loaded block's encrypted scores, Σ_j C_j·Q_j (or Σ_j C_j·q_j); no secret key.

    The products are neither relinearised nor rescaled (module docstring).
    """
    header, cols = block
    tsctx = ctx.ts_context
    saved = (tsctx.auto_relin, tsctx.auto_rescale)
    tsctx.auto_relin = tsctx.auto_rescale = False
    try:
        acc = None
        if query is not None:
            if len(query) != len(cols):
                raise UsageError(f"the query has {len(query)} dimensions, the index {len(cols)}")
            for col, q in zip(cols, query):
                term = col * q
                acc = term if acc is None else acc + term
        elif plain_query is not None:
            values = np.asarray(plain_query, np.float64)
            if len(values) != len(cols):
                raise UsageError(f"the query has {len(values)} dimensions, the index {len(cols)}")
            for col, value in zip(cols, values):
                if value != 0.0:  # a zero scalar would make a transparent ciphertext
                    term = col * float(value)
                    acc = term if acc is None else acc + term
            if acc is None:
                raise InputError("the query's feature vector is all zeros")
        else:
            raise UsageError("scoring needs an encrypted or a plain query")
        return pack(SCORES_MAGIC, {"key_id": ctx.key_id, "count": header["count"]}, [acc.serialize()])
    finally:
        tsctx.auto_relin, tsctx.auto_rescale = saved


def score_blocks(ctx: Context, blocks: Iterable[bytes], *, query: bytes | None = None, plain_query: np.ndarray | None = None) -> list[bytes]:
    """Server: encrypted scores of every block, streamed one block at a time (the query is deserialised once)."""
    vectors = load_query(ctx, query) if query is not None else None
    return [score_loaded(ctx, load_block(ctx, b), query=vectors, plain_query=plain_query) for b in blocks]


def score_block(ctx: Context, block: bytes, *, query: bytes | None = None, plain_query: np.ndarray | None = None) -> bytes:
    """Server: one block's encrypted scores against an encrypted (or plain) query."""
    return score_blocks(ctx, [block], query=query, plain_query=plain_query)[0]


def decrypt_scores(ctx: Context, scores: bytes) -> np.ndarray:
    """Client: decrypt one block's scores → (count,) float64."""
    ts = _tenseal()
    header, parts = unpack(scores, SCORES_MAGIC, "encrypted score block")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the scores are encrypted for key {header.get('key_id')}, your secret context is key {ctx.key_id}: wrong secret context")
    try:
        values = ts.ckks_vector_from(ctx.ts_context, parts[0]).decrypt()
    except (ValueError, RuntimeError, IndexError) as exc:
        raise IntegrityError(f"cannot decrypt the scores ({exc})") from None
    return np.asarray(values[: int(header["count"])], np.float64)
