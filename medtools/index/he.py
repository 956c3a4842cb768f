"""CKKS (RLWE) homomorphic encryption of feature blocks with TenSEAL: contexts, packings, scoring.

A block holds up to ``slots`` = N/2 entries with L2-normalised D-dimensional features X
(count × D); entry i always sits in slot i, so every packing's scores of a block are one
ciphertext with entry i's cosine in slot i. Two packings (``PACKINGS``):

* ``diagonal`` (default): the block is stored as W ciphertexts, W = D rounded up to a power of
  two (features zero-padded to W); ciphertext k = g·B + b holds the generalised diagonal
  d_k[i] = X[i, (i + k) mod W] rotated right by g·B (Halevi and Shoup's diagonal method for a
  matrix times a vector, Crypto 2014, baby-step/giant-step, here with the matrix encrypted
  too). The client encrypts q tiled slots/W times and rotated by b = 0 … B-1 (B = 8
  ciphertexts: the baby steps, fresh, so without key-switching noise). The server computes
  S_g = Σ_b C_{gB+b} ⊗ Q_b and Σ_g rot(S_g, g·B) by Horner's rule: W/B rotations by B per
  block, applied to sums at the scores' scale 2^57, where their key-switching noise is
  negligible (rotating the query itself, at 2^29, cost up to 1e-3 in a score).
* ``column``: the block is D ciphertexts, ciphertext j holding column X[:, j]; the client
  sends Q_j = Enc(q_j in every slot) for each j (D ciphertexts) and the server computes
  Σ_j C_j ⊗ Q_j. Upload: D ciphertexts; no rotation.

Both cost W (or D) ciphertext products per block of N/2 entries. The server adds the
products without relinearising them and relinearises once per sum; nothing is rescaled: the
score keeps scale 2^(query bits + entry bits), which must stay below the data primes
(``Params.check``). With ``--plain-query`` the server sees q and multiplies by plaintexts;
the stored features stay encrypted.

Only the client's secret context decrypts the scores. The public context holds the public
key, relinearisation keys and the power-of-two Galois keys (SEAL's default set).

Parameters (HomomorphicEncryption.org security standard, Albrecht et al. 2018, table for
uniform ternary secrets; SEAL enforces the same 128-bit bounds): for ring dimension N the
total coefficient modulus may be at most 109 bits (N = 4096), 218 (8192), 438 (16384).
The default ``n8192-1p`` uses [60, 60] = 120 bits: one 60-bit data prime and the
key-switching (special) prime; entries at scale 2^28, the query at 2^29, so a score sits at
2^57 inside the 60-bit prime (scores to about 5e-5). ``n8192`` uses [60, 40, 60] =
160 bits with scale 2^40 for both (two data primes: twice the work, scores to about 1e-8);
``n4096`` uses [40, 30, 39] = 109 bits with scale 2^30 (scores to about 3e-6).
Reference: SEAL's ``CoeffModulus.MaxBitCount(N, tc128)`` gives the same table.
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
    scale_bits: int  # the stored entries' scale (and the query's unless query_scale_bits)
    query_scale_bits: int | None = None

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def coeff_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def query_bits(self) -> int:
        return self.query_scale_bits or self.scale_bits

    def check(self) -> "Params":
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise UsageError(f"poly modulus degree {self.poly_modulus_degree} is not one of {', '.join(map(str, MAX_COEFF_BITS_128))}")
        if self.coeff_bits > limit:
            raise UsageError(f"coefficient modulus {self.coeff_bits} bits > {limit} bits: below 128-bit security for N = {self.poly_modulus_degree}")
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        if self.scale_bits + self.query_bits + 2 > data_bits:
            raise UsageError(f"a score at scale 2^{self.scale_bits + self.query_bits} does not fit the {data_bits}-bit data modulus (needs 2 bits of headroom)")
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": "ckks",
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "coeff_bits": self.coeff_bits,
            "scale_bits": self.scale_bits,
            "query_scale_bits": self.query_bits,
            "slots": self.slots,
            "security_bits": 128,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Params":
        query = data.get("query_scale_bits")
        return cls(int(data["poly_modulus_degree"]), tuple(int(b) for b in data["coeff_mod_bit_sizes"]), int(data["scale_bits"]), int(query) if query is not None else None)


PRESETS = {
    "n8192-1p": Params(8192, (60, 60), 28, 29),
    "n8192": Params(8192, (60, 40, 60), 40),
    "n4096": Params(4096, (40, 30, 39), 30),
}
DEFAULT_PRESET = "n8192-1p"
PACKINGS = ("diagonal", "column")
DEFAULT_PACKING = "diagonal"
BABY_STEPS = 8  # diagonal packing: query ciphertexts uploaded (1 MB at n8192-1p)


# ---------------------------------------------------------------- contexts


@dataclass
class Context:
    """A TenSEAL context with its header: key id (SHA-256 of the public part) and parameters."""

    ts_context: Any
    key_id: str
    params: Params
    _seal: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def secret(self) -> bool:
        return bool(self.ts_context.is_private())

    def seal(self, name: str) -> Any:
        """SEAL objects for this context, made once: ``evaluator``, ``encoder``, ``relin``,
        ``galois``, ``decryptor`` (the secret context only)."""
        if name not in self._seal:
            import tenseal.sealapi as sealapi

            seal_context = self.ts_context.seal_context().data
            if name == "evaluator":
                self._seal[name] = sealapi.Evaluator(seal_context)
            elif name == "encoder":
                self._seal[name] = sealapi.CKKSEncoder(seal_context)
            elif name == "relin":
                self._seal[name] = self.ts_context.relin_keys().data
            elif name == "galois":
                if not self.ts_context.has_galois_keys():
                    raise UsageError("the public context has no Galois keys (made by an older `index keygen`): the diagonal packing rotates the query; make new keys with `medtools index keygen` or use --packing column")
                self._seal[name] = self.ts_context.galois_keys().data
            elif name == "decryptor":
                self._seal[name] = sealapi.Decryptor(seal_context, self.ts_context.secret_key().data)
            elif name == "context":
                self._seal[name] = seal_context
            else:
                raise KeyError(name)
        return self._seal[name]


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
    """Write ``folder/secret`` (client, 0600) and ``folder/public`` (server, with relinearisation
    and Galois keys) CKKS contexts."""
    ts = _tenseal()
    if preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")
    params = PRESETS[preset].check()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0**params.scale_bits
    ctx.generate_relin_keys()  # one relinearisation per block's scores
    ctx.generate_galois_keys()  # power-of-two rotations: the diagonal packing rotates the query
    public = ctx.copy()
    public.make_context_public()
    public_bytes = public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)
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


def width(dim: int, packing: str) -> int:
    """Ciphertexts per block: D for ``column``, D rounded up to a power of two for ``diagonal``."""
    if packing not in PACKINGS:
        raise UsageError(f"unknown packing {packing!r}; choose from {', '.join(PACKINGS)}")
    return int(dim) if packing == "column" else 1 << max(0, int(dim) - 1).bit_length()


def columns(features: np.ndarray, slots: int) -> list[np.ndarray]:
    """(count, D) features → D zero-padded columns of ``slots`` values (the column packing)."""
    count, dim = features.shape
    if count > slots:
        raise ValueError(f"{count} entries do not fit one block of {slots} slots")
    padded = np.zeros((slots, dim), np.float64)
    padded[:count] = features
    return [padded[:, j] for j in range(dim)]


def baby_steps(dim: int) -> int:
    """The diagonal packing's B: query rotations the client encrypts (upload B ciphertexts);
    the server then needs W/B rotations per block, of products at the scores' large scale."""
    return min(BABY_STEPS, width(dim, "diagonal"))


def diagonals(features: np.ndarray, slots: int) -> list[np.ndarray]:
    """(count, D) features → the W generalised diagonals d_k[i] = X[i, (i + k) mod W] of ``slots``
    values, diagonal k = g·B + b stored rotated right by g·B (so the server's giant step g
    rotates a whole partial sum once); W = D rounded up to a power of two, dividing ``slots``."""
    count, dim = features.shape
    w, baby = width(dim, "diagonal"), baby_steps(dim)
    if count > slots:
        raise ValueError(f"{count} entries do not fit one block of {slots} slots")
    if w > slots:
        raise UsageError(f"{dim}-dimensional features need {w} slots per entry row; the context has {slots}")
    padded = np.zeros((slots, w), np.float64)
    padded[:count, :dim] = features
    rows = np.arange(slots)[:, None]
    table = padded[rows, (rows + np.arange(w)[None, :]) % w]
    return [np.roll(table[:, k], k - k % baby) for k in range(w)]


def tiled(query: np.ndarray, slots: int) -> np.ndarray:
    """The diagonal packing's query: q zero-padded to W and repeated slots/W times."""
    query = np.asarray(query, np.float64)
    w = width(len(query), "diagonal")
    padded = np.zeros(w)
    padded[: len(query)] = query
    return np.tile(padded, slots // w)


def query_vectors(query: np.ndarray, slots: int, packing: str) -> list[np.ndarray]:
    """What a query is encrypted (or, plain, encoded) as: ``column``: q_j in every slot, one
    vector per dimension; ``diagonal``: the tiled q rotated left by b = 0 … B-1."""
    query = np.asarray(query, np.float64)
    if packing == "diagonal":
        base = tiled(query, slots)
        return [np.roll(base, -b) for b in range(baby_steps(len(query)))]
    width(len(query), packing)
    return [np.full(slots, float(v)) for v in query]


def encrypt_block(ctx: Context, features: np.ndarray, *, packing: str = DEFAULT_PACKING) -> bytes:
    """Encrypt one block's features (count ≤ slots, D) with the public key: W ciphertexts."""
    ts = _tenseal()
    features = np.asarray(features, np.float64)
    vectors = columns(features, ctx.params.slots) if packing == "column" else diagonals(features, ctx.params.slots)
    scale = 2.0**ctx.params.scale_bits
    parts = [ts.ckks_vector(ctx.ts_context, v.tolist(), scale).serialize() for v in vectors]
    header = {"key_id": ctx.key_id, "count": int(features.shape[0]), "dim": int(features.shape[1]), "packing": packing}
    if packing == "diagonal":
        header["baby_steps"] = baby_steps(features.shape[1])
    return pack(BLOCK_MAGIC, header, parts)


def encrypt_query(ctx: Context, query: np.ndarray, *, packing: str = DEFAULT_PACKING) -> bytes:
    """Client: the query's vectors (``query_vectors``) encrypted with the secret context:
    D ciphertexts (``column``) or B (``diagonal``)."""
    ts = _tenseal()
    if not ctx.secret:
        raise UsageError("encrypting a query needs the client's secret context")
    query = np.asarray(query, np.float64)
    scale = 2.0**ctx.params.query_bits
    parts = [ts.ckks_vector(ctx.ts_context, v.tolist(), scale).serialize() for v in query_vectors(query, ctx.params.slots, packing)]
    return pack(QUERY_MAGIC, {"key_id": ctx.key_id, "dim": len(query), "packing": packing}, parts)


def _ciphertexts(ctx: Context, parts: Sequence[bytes], what: str) -> list[Any]:
    """TenSEAL-serialised vectors → their SEAL ciphertexts (the server computes on these)."""
    ts = _tenseal()
    try:
        return [ts.ckks_vector_from(ctx.ts_context, p).ciphertext()[0] for p in parts]
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise IntegrityError(f"damaged ciphertext in the {what} ({exc})") from None


@dataclass
class Block:
    """A deserialised block: its header (count, dim, packing) and its W SEAL ciphertexts."""

    header: dict[str, Any]
    parts: list[Any]

    @property
    def packing(self) -> str:
        return str(self.header.get("packing", "column"))

    @property
    def dim(self) -> int:
        return int(self.header["dim"])


def load_block(ctx: Context, blob: bytes) -> Block:
    """A block file's bytes → its ciphertexts, ready to score (load once, score many times)."""
    header, parts = unpack(blob, BLOCK_MAGIC, "encrypted index block")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the block was encrypted for key {header.get('key_id')}, the context is key {ctx.key_id}")
    block = Block(header, _ciphertexts(ctx, parts, "index block"))
    expected = width(int(header.get("dim", 0)), block.packing)
    if len(block.parts) != expected or (block.packing == "diagonal" and header.get("baby_steps") != baby_steps(block.dim)):
        raise IntegrityError(f"the block holds {len(block.parts)} ciphertexts; its {block.packing} packing of {header.get('dim')} dimensions needs {expected}")
    return block


@dataclass
class Query:
    """A query ready for scoring: its SEAL ciphertexts (or, plain, plaintexts; None for a zero term)."""

    packing: str
    dim: int
    operands: list[Any]


def load_query(ctx: Context, blob: bytes) -> Query:
    """Server: an encrypted query's bytes → its ciphertexts (deserialised once for all blocks)."""
    header, parts = unpack(blob, QUERY_MAGIC, "encrypted query")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the query was encrypted for key {header.get('key_id')}, the index is key {ctx.key_id}: wrong secret context")
    packing, dim = str(header.get("packing", "column")), int(header.get("dim", len(parts)))
    expected = baby_steps(dim) if packing == "diagonal" else width(dim, packing)
    if len(parts) != expected:
        raise IntegrityError(f"a {packing} query of {dim} dimensions has {expected} ciphertexts, this one {len(parts)}")
    return Query(packing, dim, _ciphertexts(ctx, parts, "query"))


def plain_operands(ctx: Context, block: Block, query: np.ndarray) -> Query:
    """Server, ``--plain-query``: the query's vectors encoded as plaintexts (the server sees q)."""
    import tenseal.sealapi as sealapi

    query = np.asarray(query, np.float64)
    if not query.any():
        raise InputError("the query's feature vector is all zeros")
    encoder, scale, parms = ctx.seal("encoder"), 2.0**ctx.params.query_bits, block.parts[0].parms_id()
    operands = []
    for v in query_vectors(query, ctx.params.slots, block.packing):
        if not v.any():  # a zero plaintext would make a transparent ciphertext
            operands.append(None)
            continue
        plain = sealapi.Plaintext()
        encoder.encode(v.tolist(), parms, scale, plain)
        operands.append(plain)
    return Query(block.packing, len(query), operands)


def _dot(ctx: Context, parts: Sequence[Any], operands: Sequence[Any]) -> Any:
    """Σ parts[i] ⊗ operands[i], not relinearised (None where every term is zero)."""
    import tenseal.sealapi as sealapi

    evaluator = ctx.seal("evaluator")
    acc, term = None, sealapi.Ciphertext()
    for part, operand in zip(parts, operands):
        if operand is None:
            continue
        target = term if acc is not None else sealapi.Ciphertext()
        if isinstance(operand, sealapi.Plaintext):
            evaluator.multiply_plain(part, operand, target)
        else:
            evaluator.multiply(part, operand, target)
        if acc is None:
            acc = target
        else:
            evaluator.add_inplace(acc, term)
    return acc


def score_loaded(ctx: Context, block: Block, query: Query) -> bytes:
    """Server: one block's encrypted scores; public context only.

    ``column``: Σ_j C_j ⊗ Q_j, relinearised once. ``diagonal`` (baby-step/giant-step):
    S_g = Σ_b C_{gB+b} ⊗ rot(Q, b), relinearised, then Horner over g with one rotation by B
    per giant step, applied to sums at the scores' scale (its key-switch noise is negligible).
    """
    if query.packing != block.packing:
        raise UsageError(f"the query is packed {query.packing!r}, the index {block.packing!r}: encrypt the query for this index (its manifest names the packing)")
    if query.dim != block.dim:
        raise UsageError(f"the query has {query.dim} dimensions, the index {block.dim}")
    evaluator, relin = ctx.seal("evaluator"), ctx.seal("relin")
    if block.packing == "column":
        acc = _dot(ctx, block.parts, query.operands)
        if acc is None:
            raise InputError("the query's feature vector is all zeros")
        evaluator.relinearize_inplace(acc, relin)
    else:
        baby = len(query.operands)
        acc = None
        for g in reversed(range(len(block.parts) // baby)):
            partial = _dot(ctx, block.parts[g * baby : (g + 1) * baby], query.operands)
            if acc is not None:
                evaluator.rotate_vector_inplace(acc, baby, ctx.seal("galois"))
            if partial is not None:
                evaluator.relinearize_inplace(partial, relin)
                acc = partial if acc is None else (evaluator.add_inplace(acc, partial) or acc)
        if acc is None:
            raise InputError("the query's feature vector is all zeros")
    return pack(SCORES_MAGIC, {"key_id": ctx.key_id, "count": block.header["count"], "encoding": "seal"}, [_save(acc)])


def _save(ciphertext: Any) -> bytes:
    """A SEAL ciphertext's own (compressed) serialisation; TenSEAL's Python API writes it to a path only."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medtools-ckks-") as folder:
        path = os.path.join(folder, "c")
        ciphertext.save(path)
        return Path(path).read_bytes()


def _load(ctx: Context, blob: bytes) -> Any:
    import tempfile

    import tenseal.sealapi as sealapi

    with tempfile.TemporaryDirectory(prefix="medtools-ckks-") as folder:
        path = os.path.join(folder, "c")
        Path(path).write_bytes(blob)
        ciphertext = sealapi.Ciphertext()
        ciphertext.load(ctx.seal("context"), path)
        return ciphertext


def score_blocks(ctx: Context, blocks: Iterable[bytes | Block], *, query: bytes | None = None, plain_query: np.ndarray | None = None) -> list[bytes]:
    """Server: encrypted scores of every block (bytes or already loaded); the query is prepared once."""
    prepared = load_query(ctx, query) if query is not None else None
    if prepared is None and plain_query is None:
        raise UsageError("scoring needs an encrypted or a plain query")
    replies = []
    plain_cache: dict[str, Query] = {}
    for blob in blocks:
        block = blob if isinstance(blob, Block) else load_block(ctx, blob)
        if prepared is None:
            if block.packing not in plain_cache:
                plain_cache[block.packing] = plain_operands(ctx, block, plain_query)
            replies.append(score_loaded(ctx, block, plain_cache[block.packing]))
        else:
            replies.append(score_loaded(ctx, block, prepared))
    return replies


def score_block(ctx: Context, block: bytes, *, query: bytes | None = None, plain_query: np.ndarray | None = None) -> bytes:
    """Server: one block's encrypted scores against an encrypted (or plain) query."""
    return score_blocks(ctx, [block], query=query, plain_query=plain_query)[0]


def decrypt_scores(ctx: Context, scores: bytes) -> np.ndarray:
    """Client: decrypt one block's scores → (count,) float64."""
    ts = _tenseal()
    header, parts = unpack(scores, SCORES_MAGIC, "encrypted score block")
    if header.get("key_id") != ctx.key_id:
        raise IntegrityError(f"the scores are encrypted for key {header.get('key_id')}, your secret context is key {ctx.key_id}: wrong secret context")
    if not ctx.secret:
        raise UsageError("decrypting scores needs the client's secret context")
    try:
        if header.get("encoding") == "seal":
            import tenseal.sealapi as sealapi

            plain = sealapi.Plaintext()
            ctx.seal("decryptor").decrypt(_load(ctx, parts[0]), plain)
            values = ctx.seal("encoder").decode_double(plain)
        else:
            values = ts.ckks_vector_from(ctx.ts_context, parts[0]).decrypt()
    except (ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise IntegrityError(f"cannot decrypt the scores ({exc})") from None
    return np.asarray(values[: int(header["count"])], np.float64)
