"""The verifiable encrypted index: folder layout, Merkle tree over entries, build/add/verify/query.

Layout of ``INDEX/`` (it lives on the untrusted server; it holds no secret)::

    index.json            manifest: parameters, key id, model, blocks, entries, root, history
    blocks/000000.ckks    one block: W ciphertexts holding up to N/2 entries, packed as the
                          manifest's ``packing`` says (he.py: diagonal or column)

Every build or add writes new blocks and never rewrites one, so the entry list only grows
and each earlier root is a prefix of the current tree (RFC 9162 consistency proofs).

Leaf data of entry i (RFC 9162 leaf hash = SHA-256(0x00 ‖ leaf data))::

    "medtools-index/v1" ‖ u32 len(id) ‖ id (UTF-8) ‖ u32 block ‖ u32 slot
                        ‖ SHA-256(source image file) ‖ SHA-256(block file)

so a leaf binds the entry's id, the image it came from and the exact ciphertexts that hold
its features. A changed ciphertext changes its block's digest; a dropped, added or edited
entry changes the leaves; either changes the root.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import merkle
from medtools.core.errors import InputError, IntegrityError, UsageError
from medtools.core.report import sha256_file
from medtools.index import he

FORMAT = "medtools-index"
PROOF_FORMAT = "medtools-index-proof"
VERSION = 1
MANIFEST = "index.json"
LEAF_PREFIX = b"medtools-index/v1"


def leaf_data(entry: dict[str, Any], block_sha256: str) -> bytes:
    encoded = entry["id"].encode("utf-8")
    return LEAF_PREFIX + struct.pack(">I", len(encoded)) + encoded + struct.pack(">II", int(entry["block"]), int(entry["slot"])) + bytes.fromhex(entry["sha256"]) + bytes.fromhex(block_sha256)


@dataclass
class Index:
    folder: Path
    data: dict[str, Any]

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.data["entries"]

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return self.data["blocks"]

    @property
    def root(self) -> str:
        return self.data["root"]

    @property
    def params(self) -> he.Params:
        return he.Params.from_json(self.data["params"])

    @property
    def packing(self) -> str:
        """``diagonal`` or ``column`` (older manifests describe the column packing in words)."""
        return str(self.data.get("packing", "column")).split(":")[0]

    def leaves(self) -> list[bytes]:
        try:
            return [merkle.hash_leaf(leaf_data(e, self.blocks[int(e["block"])]["sha256"])) for e in self.entries]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{self.folder / MANIFEST}: damaged entry list ({exc})") from None

    def block_path(self, number: int) -> Path:
        return self.folder / self.blocks[number]["file"]

    @classmethod
    def load(cls, folder: Path) -> "Index":
        folder = Path(folder)
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"no index at {folder} (no {MANIFEST}; make one with `medtools index build`)") from None
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{path} is not a readable index manifest: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IntegrityError(f"{path} is not a medtools index manifest")
        if data.get("version") != VERSION:
            raise IntegrityError(f"{path}: index version {data.get('version')} is not supported")
        for key in ("key_id", "params", "dim", "blocks", "entries", "root", "model"):
            if key not in data:
                raise IntegrityError(f"{path}: damaged manifest (no {key!r})")
        return cls(folder, data)

    def save(self) -> Path:
        from medtools.core.io import atomic_path

        path = self.folder / MANIFEST
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        return path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _append(index: Index, ctx: he.Context, ids: list[str], digests: list[str], features: np.ndarray) -> list[Path]:
    """Encrypt new entries into new blocks (never rewriting one), then update the manifest."""
    from medtools.core.io import atomic_path

    written = []
    slots = ctx.params.slots
    for start in range(0, len(ids), slots):
        number = len(index.blocks)
        rel = f"blocks/{number:06d}.ckks"
        blob = he.encrypt_block(ctx, features[start : start + slots], packing=index.packing)
        with atomic_path(index.folder / rel) as tmp:
            Path(tmp).write_bytes(blob)
        index.blocks.append({"file": rel, "sha256": sha256_file(index.folder / rel), "count": len(ids[start : start + slots]), "bytes": len(blob)})
        for slot, (entry_id, digest) in enumerate(zip(ids[start : start + slots], digests[start : start + slots])):
            index.entries.append({"id": entry_id, "sha256": digest, "block": number, "slot": slot})
        written.append(index.folder / rel)
    index.data["root"] = merkle.tree_root(index.leaves()).hex()
    index.data["size"] = len(index.entries)
    index.data.setdefault("history", []).append({"size": len(index.entries), "root": index.root, "time": _now()})
    index.save()
    return written


def _collect(predictor: Any, items: list[Any], known: dict[str, str]) -> tuple[list[str], list[str], np.ndarray, Any]:
    """Embed the items whose id (path relative to its input argument) is new.

    An id already in the index with the same image digest is skipped (a rerun resumes); with
    another digest it is an item error: two different images cannot share an id.
    """
    from medtools.core.batch import Outcome
    from medtools.core.errors import InputError
    from medtools.core.report import log
    from medtools.index import features as feats

    ids: list[str] = []
    digests: list[str] = []
    vectors: list[np.ndarray] = []
    todo = []
    clashes = Outcome()
    for item in items:
        entry_id = item.rel.as_posix()
        if entry_id in known:
            if known[entry_id] == sha256_file(item.path):
                log(f"{entry_id}: already in the index, skipped")
                clashes.skipped += 1
            else:
                clashes.fail(str(item.path), InputError(f"the index already has another image with id {entry_id} (pass the folder one level up, so ids differ)"))
            continue
        known[entry_id] = ""
        todo.append(item)

    def on_vectors(batch: list[Any], values: np.ndarray) -> None:
        for item, vector in zip(batch, values):
            ids.append(item.rel.as_posix())
            digests.append(sha256_file(item.path))
            vectors.append(vector)

    outcome = feats.embed_paths(predictor, todo, on_vectors=on_vectors)
    outcome.skipped += clashes.skipped
    outcome.failed += clashes.failed
    outcome.codes += clashes.codes
    return ids, digests, (np.stack(vectors) if vectors else np.zeros((0, 0))), outcome


def build(items: list[Any], *, model: Path, public: Path, output: Path, packing: str = he.DEFAULT_PACKING, device: str | None = None, batch_size: int = 32, overwrite: bool = False) -> dict[str, Any]:
    """Embed, encrypt (public context only) and commit ``items`` into a new index folder."""
    from medtools.index import features as feats

    he.width(1, packing)  # an unknown packing fails before any work
    output = Path(output)
    if (output / MANIFEST).exists() and not overwrite:
        raise UsageError(f"{output} already holds an index; add entries with `medtools index add`, or pass --overwrite")
    ctx = he.load_context(public, secret=False)
    predictor = feats.load_predictor(model, device=device, batch_size=batch_size)
    started = time.perf_counter()
    ids, digests, vectors, outcome = _collect(predictor, items, {})
    embed_s = time.perf_counter() - started
    if not ids:
        raise InputError("no image could be embedded: the index would be empty")
    if overwrite and output.exists():
        for old in (output / "blocks").glob("*.ckks"):
            old.unlink()
    data = {
        "format": FORMAT,
        "version": VERSION,
        "created": _now(),
        "tree": "rfc9162",
        "hash": "sha256",
        "key_id": ctx.key_id,
        "params": ctx.params.to_json(),
        "dim": int(vectors.shape[1]),
        "packing": packing,
        "model": feats.model_record(predictor),
        "blocks": [],
        "entries": [],
        "root": merkle.tree_root([]).hex(),
        "size": 0,
        "history": [],
    }
    index = Index(output, data)
    started = time.perf_counter()
    written = _append(index, ctx, ids, digests, vectors)
    encrypt_s = time.perf_counter() - started
    return {"index": output / MANIFEST, "blocks": written, "entries": len(ids), "root": index.root, "packing": packing, "outcome": outcome, "timing": {"features_s": embed_s, "encrypt_s": encrypt_s, "encrypt_ms_per_entry": 1000 * encrypt_s / len(ids)}}


def add(items: list[Any], *, index_folder: Path, public: Path, model: Path | None = None, device: str | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Append entries (new blocks) to an index that verifies; ids already present are skipped."""
    from medtools.core.errors import CheckpointError
    from medtools.index import features as feats

    index = Index.load(index_folder)
    checked = verify(index)
    if not checked.ok:
        raise IntegrityError(f"{index_folder} does not verify ({checked.summary()}): not adding to a tampered index")
    ctx = he.load_context(public, secret=False)
    if ctx.key_id != index.data["key_id"]:
        raise IntegrityError(f"the index is encrypted for key {index.data['key_id']}, the public context is key {ctx.key_id}")
    predictor = feats.load_predictor(Path(model or index.data["model"]["path"]), device=device, batch_size=batch_size)
    if sha256_file(predictor.path) != index.data["model"]["sha256"]:
        raise CheckpointError(f"{predictor.path} is not the model the index was built with ({index.data['model']['path']}, sha256 {index.data['model']['sha256'][:16]}…)")
    old_size, old_root = len(index.entries), index.root
    ids, digests, vectors, outcome = _collect(predictor, items, {e["id"]: e["sha256"] for e in index.entries})
    written = _append(index, ctx, ids, digests, vectors) if ids else []
    proof = merkle.consistency_proof(index.leaves(), old_size) if ids and old_size else []
    return {"index": index.folder / MANIFEST, "blocks": written, "entries": len(ids), "root": index.root, "old_size": old_size, "old_root": old_root, "consistency": [h.hex() for h in proof], "outcome": outcome}


# ---------------------------------------------------------------- verification


@dataclass
class Verification:
    root_ok: bool
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    trusted_root: str | None = None  # "current", "extended from size m", or a failure
    trusted_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.root_ok and self.trusted_ok and not (self.changed or self.missing or self.extra)

    def summary(self) -> str:
        parts = [f"{len(self.changed)} changed, {len(self.missing)} missing, {len(self.extra)} extra"]
        if not self.root_ok:
            parts.append("the manifest's entries do not hash to its root")
        if not self.trusted_ok:
            parts.append(f"trusted root: {self.trusted_root}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "root_matches_entries": self.root_ok, "changed": self.changed, "missing": self.missing, "extra": self.extra, "trusted_root": self.trusted_root}


def verify(index: Index, *, root: str | None = None) -> Verification:
    """Recompute block digests and the tree; with ``root`` (the client's trusted root) check
    that the index is that tree or an append-only extension of it (consistency proof)."""
    leaves = index.leaves()
    result = Verification(merkle.tree_root(leaves).hex() == index.root)
    by_block: dict[int, list[dict[str, Any]]] = {}
    for entry in index.entries:
        by_block.setdefault(int(entry["block"]), []).append(entry)
    listed = set()
    for number, block in enumerate(index.blocks):
        path = index.folder / block["file"]
        listed.add(path.resolve())
        ids = [e["id"] for e in by_block.get(number, [])]
        if not path.is_file():
            result.missing += ids or [block["file"]]
            continue
        if sha256_file(path) != block["sha256"]:
            result.changed += ids or [block["file"]]
            continue
        header, _ = he.unpack(path.read_bytes(), he.BLOCK_MAGIC, "encrypted index block")
        slots = {int(e["slot"]) for e in by_block.get(number, [])}
        for slot in range(int(header.get("count", 0))):
            if slot not in slots:
                result.missing.append(f"{block['file']} slot {slot} (an entry dropped from the manifest)")
        for e in by_block.get(number, []):
            if int(e["slot"]) >= int(header.get("count", 0)):
                result.extra.append(e["id"])
    for number in set(by_block) - set(range(len(index.blocks))):
        result.extra += [e["id"] for e in by_block[number]]
    for path in sorted((index.folder / "blocks").glob("*")):
        if path.resolve() not in listed:
            result.extra.append(path.relative_to(index.folder).as_posix())
    if root is not None:
        result.trusted_ok, result.trusted_root = _check_trusted(index, leaves, root)
    return result


def _check_trusted(index: Index, leaves: list[bytes], root: str) -> tuple[bool, str]:
    current = merkle.tree_root(leaves).hex()
    if root == current:
        return True, "current"
    for state in index.data.get("history", []):
        if state.get("root") == root:
            size = int(state["size"])
            if 0 < size <= len(leaves):
                proof = merkle.consistency_proof(leaves, size)
                if merkle.verify_consistency(size, len(leaves), bytes.fromhex(root), bytes.fromhex(current), proof):
                    return True, f"extends the trusted tree of {size} entries"
            return False, f"the index is not an append-only extension of {root[:16]}… ({size} entries): earlier entries were changed"
    return False, f"{root[:16]}… is not a state of this index (never was, or its history was edited)"


def make_proof(index: Index, position: int, leaves: list[bytes] | None = None) -> dict[str, Any]:
    leaves = leaves if leaves is not None else index.leaves()
    entry = index.entries[position]
    return {
        "format": PROOF_FORMAT,
        "version": VERSION,
        "id": entry["id"],
        "sha256": entry["sha256"],
        "block": int(entry["block"]),
        "slot": int(entry["slot"]),
        "block_sha256": index.blocks[int(entry["block"])]["sha256"],
        "index": position,
        "tree_size": len(leaves),
        "audit_path": [h.hex() for h in merkle.audit_path(leaves, position)],
        "root": merkle.tree_root(leaves).hex(),
    }


def check_proof(proof: dict[str, Any], *, root: str | None = None) -> dict[str, Any]:
    """An inclusion proof on its own (against ``root`` when the client has a trusted one)."""
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        raise IntegrityError("not a medtools index proof")
    try:
        leaf = merkle.hash_leaf(leaf_data(proof, proof["block_sha256"]))
        found = merkle.root_from_path(leaf, int(proof["index"]), int(proof["tree_size"]), [bytes.fromhex(h) for h in proof["audit_path"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"damaged index proof ({exc})") from None
    if found.hex() != proof["root"]:
        raise IntegrityError(f"the proof of {proof['id']} does not lead to its root: the entry is not proven to be in the index")
    if root is not None and proof["root"] != root:
        raise IntegrityError(f"the proof of {proof['id']} is for root {proof['root'][:16]}…, not the trusted {root[:16]}…")
    return {"ok": True, "id": proof["id"], "root": proof["root"]}


# ---------------------------------------------------------------- query


REPLY_MAGIC = b"medtools-ckks-reply/v1\n"


def _checked(index_folder: Path, root: str | None) -> tuple[Index, Verification]:
    """Client: the index must verify (and extend the trusted root) before it is used."""
    index = Index.load(index_folder)
    checked = verify(index, root=root)
    if not checked.ok:
        named = ", ".join((checked.changed + checked.missing + checked.extra)[:5])
        raise IntegrityError(f"{index_folder} does not verify ({checked.summary()}{': ' + named if named else ''}): refusing to query it")
    return index, checked


def _client_context(index: Index, secret: Path) -> he.Context:
    ctx = he.load_context(secret, secret=True)
    if ctx.key_id != index.data["key_id"]:
        raise IntegrityError(f"wrong secret context: the index is encrypted for key {index.data['key_id']}, {secret} is key {ctx.key_id}")
    return ctx


def client_features(index: Index, image: Any, *, model: Path | None = None, device: str | None = None) -> tuple[np.ndarray, Any]:
    """Client: the query image's L2-normalised features with the index's own model."""
    from medtools.core.errors import CheckpointError
    from medtools.core.io import Image
    from medtools.index import features as feats

    predictor = feats.load_predictor(Path(model or index.data["model"]["path"]), device=device)
    if sha256_file(predictor.path) != index.data["model"]["sha256"]:
        raise CheckpointError(f"{predictor.path} is not the model the index was built with ({index.data['model']['path']})")
    return feats.embed_arrays(predictor, feats.load(predictor, image if isinstance(image, Image) else Path(image))[None])[0], predictor


def encrypt_query_file(image: Path, *, index_folder: Path, secret: Path, output: Path, model: Path | None = None, root: str | None = None, device: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Client, step 1 of 3: features of ``image`` encrypted under the secret context → ``output``."""
    from medtools.core.io import atomic_path

    if Path(output).exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    index, _ = _checked(index_folder, root)
    ctx = _client_context(index, secret)
    vector, predictor = client_features(index, image, model=model, device=device)
    blob = he.encrypt_query(ctx, vector, packing=index.packing)
    with atomic_path(Path(output)) as tmp:
        Path(tmp).write_bytes(blob)
    return {"output": Path(output), "bytes": len(blob), "model": predictor.record()}


class Resident:
    """Server: an index's blocks deserialised once and kept between queries (``serve --index``).

    ``blocks(index, ctx)`` re-reads nothing it holds: a block is loaded when the manifest
    first lists it (``index add`` grows a served index without a rebuild or a restart) and
    is checked against the manifest's SHA-256 then; blocks no longer listed are dropped.
    Memory: the ciphertexts, about 130 KB per ciphertext at ``n8192-1p`` (67 MB per block
    of 4096 entries at D = 512)."""

    def __init__(self) -> None:
        self.loaded: dict[str, tuple[str, he.Block]] = {}

    def blocks(self, index: Index, ctx: he.Context) -> list[he.Block]:
        listed = {}
        for number, block in enumerate(index.blocks):
            held = self.loaded.get(block["file"])
            if held is None or held[0] != block["sha256"]:
                blob = index.block_path(number).read_bytes()
                if hashlib.sha256(blob).hexdigest() != block["sha256"]:
                    raise IntegrityError(f"{block['file']} does not match its SHA-256 in the manifest: the block changed; refusing to score it")
                held = (block["sha256"], he.load_block(ctx, blob))
            listed[block["file"]] = held
        self.loaded = listed
        return [held[1] for held in listed.values()]


def server_score(index: Index, public: he.Context, *, query: bytes | None = None, plain_query: np.ndarray | None = None, resident: Resident | None = None) -> bytes:
    """Server, step 2 of 3: every block's encrypted scores in one reply; public context only.
    ``resident``: blocks kept loaded between calls (else every block is read for this call)."""
    if public.secret:
        raise UsageError("the server scores with the public context only")
    if public.key_id != index.data["key_id"]:
        raise IntegrityError(f"the index is encrypted for key {index.data['key_id']}, the context is key {public.key_id}")
    if resident is not None:
        blobs: Any = resident.blocks(index, public)
    else:
        blobs = (index.block_path(b).read_bytes() for b in range(len(index.blocks)))
    replies = he.score_blocks(public, blobs, query=query, plain_query=plain_query)
    return he.pack(REPLY_MAGIC, {"key_id": public.key_id, "root": index.root, "blocks": len(replies)}, replies)


def score_file(query_file: Path, *, index_folder: Path, public: Path, output: Path, overwrite: bool = False) -> dict[str, Any]:
    """`index score`: read an encrypted query, write the encrypted scores (no secret anywhere)."""
    from medtools.core.io import atomic_path

    if Path(output).exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    index = Index.load(index_folder)
    ctx = he.load_context(public, secret=False)
    try:
        query_blob = Path(query_file).read_bytes()
    except FileNotFoundError:
        raise InputError(f"no encrypted query at {query_file}") from None
    reply = server_score(index, ctx, query=query_blob)
    with atomic_path(Path(output)) as tmp:
        Path(tmp).write_bytes(reply)
    return {"output": Path(output), "bytes": len(reply), "blocks": len(index.blocks)}


def client_rank(index: Index, ctx: he.Context, reply: bytes, *, k: int, root: str | None) -> list[dict[str, Any]]:
    """Client, step 3 of 3: decrypt the scores, rank, and check each hit's inclusion proof."""
    header, parts = he.unpack(reply, REPLY_MAGIC, "encrypted score reply")
    if header.get("root") != index.root or len(parts) != len(index.blocks):
        raise IntegrityError(f"the scores were computed over index root {str(header.get('root'))[:16]}…, not this index ({index.root[:16]}…)")
    scores = np.concatenate([he.decrypt_scores(ctx, r) for r in parts])
    if len(scores) != len(index.entries):
        raise IntegrityError(f"{len(scores)} scores for {len(index.entries)} entries")
    order = np.argsort(-scores, kind="stable")[: max(1, int(k))]
    position = {(int(e["block"]), int(e["slot"])): i for i, e in enumerate(index.entries)}
    offsets = np.cumsum([0] + [int(b["count"]) for b in index.blocks])
    leaves = index.leaves()
    hits = []
    for rank, flat in enumerate(order, 1):
        block = int(np.searchsorted(offsets, flat, side="right") - 1)
        pos = position[(block, int(flat - offsets[block]))]
        proof = make_proof(index, pos, leaves)
        check_proof(proof, root=root or index.root)
        hits.append({"rank": rank, "id": index.entries[pos]["id"], "score": float(scores[flat]), "proof": proof})
    return hits


def rank_file(reply_file: Path, *, index_folder: Path, secret: Path, k: int = 5, root: str | None = None) -> dict[str, Any]:
    """`index rank`: decrypt a server's reply into top-k hits with proofs."""
    index, checked = _checked(index_folder, root)
    ctx = _client_context(index, secret)
    try:
        reply = Path(reply_file).read_bytes()
    except FileNotFoundError:
        raise InputError(f"no encrypted scores at {reply_file}") from None
    hits = client_rank(index, ctx, reply, k=k, root=root)
    return {"scores": str(reply_file), "mode": "encrypted-query", "k": int(k), "entries": len(index.entries), "root": index.root, "trusted_root": checked.trusted_root, "hits": hits}


def query(image: Any, *, index_folder: Path, secret: Path, k: int = 5, model: Path | None = None, plain_query: bool = False, root: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Top-k entries most similar to ``image``: the three steps of encrypt-query, score and
    rank in one process (the server step gets a copy of the context without the secret key)."""
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    index, checked = _checked(index_folder, root)
    ctx = _client_context(index, secret)
    vector, predictor = client_features(index, image, model=model, device=device)
    timing["verify_and_features_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    enc_query = None if plain_query else he.encrypt_query(ctx, vector, packing=index.packing)
    timing["encrypt_query_s"] = time.perf_counter() - t1
    server_ts = ctx.ts_context.copy()
    if not server_ts.has_galois_keys():  # the secret file leaves them out (the public one has them)
        server_ts.generate_galois_keys()
    server_ts.make_context_public()
    t2 = time.perf_counter()
    reply = server_score(index, he.Context(server_ts, ctx.key_id, ctx.params), query=enc_query, plain_query=vector if plain_query else None)
    timing["server_score_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    hits = client_rank(index, ctx, reply, k=k, root=root)
    timing["decrypt_rank_prove_s"] = time.perf_counter() - t3
    return {
        "query": str(image.meta.get("path", "image")) if hasattr(image, "meta") else str(image),
        "mode": "plain-query (the server saw the query vector)" if plain_query else "encrypted-query",
        "k": int(k),
        "entries": len(index.entries),
        "root": index.root,
        "trusted_root": checked.trusted_root,
        "hits": hits,
        "query_bytes": len(enc_query) if enc_query else 0,
        "reply_bytes": len(reply),
        "packing": index.packing,
        "timing": timing,
        "model": predictor.record(),
    }


def render_hits(result: dict[str, Any]) -> list[str]:
    """query/rank for people: one line per hit, id and score."""
    return [f"{hit['id']}\t{hit['score']:.6f}" for hit in result["hits"]]


def verify_job(index: Path | None, *, root: str | None, proof: Path | None) -> int:
    """``index verify``: the whole index against its root (changed/missing/extra entries: exit 4),
    or inclusion proofs on their own (``proof``: a proof JSON or a ``query --json`` output)."""
    import json

    from medtools.core import report
    from medtools.core.errors import EXIT_INTEGRITY, EXIT_OK, InputError

    if proof is not None:
        if index is not None:
            raise UsageError("--proof is checked on its own: give no INDEX")
        try:
            data = json.loads(proof.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"no proof at {proof}") from None
        except ValueError as exc:
            raise IntegrityError(f"{proof} is not JSON: {exc}") from None
        proofs = [h["proof"] for h in data.get("hits", [])] if isinstance(data, dict) and "hits" in data else [data]
        results = [check_proof(p, root=root) for p in proofs]
        report.emit_result({"ok": True, "proofs": results})
        report.log(f"{len(results)} proof(s) OK")
        return EXIT_OK
    if index is None:
        raise UsageError("give INDEX (or --proof PROOF.json)")
    loaded = Index.load(index)
    checked = verify(loaded, root=root)
    report.emit_result({**checked.to_json(), "root": loaded.root}, lambda _: [f"{kind}\t{name}" for kind in ("changed", "missing", "extra") for name in getattr(checked, kind)])
    if checked.ok:
        report.log(f"OK: {index} matches its root" + (f" ({checked.trusted_root})" if root else " (pass --root to check it against a root you trust)"))
        return EXIT_OK
    report.error(f"{index} does not verify: {checked.summary()}")
    return EXIT_INTEGRITY
