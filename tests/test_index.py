"""index: CKKS packing and scoring, entry leaves and proofs, and one keygen → build → query → tamper pipeline."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

pytest.importorskip("tenseal")

from medtools.core import merkle  # noqa: E402
from medtools.core.errors import IntegrityError, UsageError  # noqa: E402
from medtools.index import he, store  # noqa: E402


@pytest.fixture(scope="module")
def small_keys(tmp_path_factory):
    """Explicitly the small preset (N = 4096, still 128-bit) to keep the unit tests fast."""
    folder = tmp_path_factory.mktemp("ctx")
    he.keygen(folder, preset="n4096")
    return he.load_context(folder / "secret", secret=True), he.load_context(folder / "public", secret=False), folder


def test_presets_are_128_bit_and_insecure_parameters_are_refused():
    import tenseal.sealapi as sealapi

    for n, bits in he.MAX_COEFF_BITS_128.items():  # our table is SEAL's 128-bit table (HE standard)
        assert sealapi.CoeffModulus.MaxBitCount(n, sealapi.SEC_LEVEL_TYPE.TC128) == bits
    for params in he.PRESETS.values():
        assert params.check().coeff_bits <= he.MAX_COEFF_BITS_128[params.poly_modulus_degree]
        assert params.scale_bits + params.query_bits + 2 <= sum(params.coeff_mod_bit_sizes[:-1])
    with pytest.raises(UsageError):
        he.Params(4096, (60, 40, 40), 40).check()  # 140 bits > 109 at N = 4096
    with pytest.raises(UsageError, match="does not fit"):
        he.Params(8192, (60, 60), 30, 30).check()  # a score at 2^60 overflows the 60-bit prime
    assert he.DEFAULT_PRESET == "n8192-1p" and he.PRESETS["n8192-1p"].coeff_bits == 120
    assert he.DEFAULT_PACKING == "diagonal"


@pytest.fixture(scope="module")
def default_keys(tmp_path_factory):
    """The default preset (N = 8192, [60, 60]) with its Galois keys in the public context."""
    folder = tmp_path_factory.mktemp("ctx1p")
    he.keygen(folder)
    return he.load_context(folder / "secret", secret=True), he.load_context(folder / "public", secret=False), folder


def test_diagonal_packing_stores_rotated_generalised_diagonals():
    x = np.arange(1, 25, dtype=float).reshape(4, 6)  # D = 6 → W = 8, B = 8: no giant-step rotation
    diags = he.diagonals(x, 16)
    assert len(diags) == 8 and he.width(6, "diagonal") == 8 and he.width(6, "column") == 6
    assert [diags[1][i] for i in range(4)] == [x[0, 1], x[1, 2], x[2, 3], x[3, 4]]
    assert diags[3][3] == 0.0 and diags[2][4:].tolist() == [0.0] * 12  # padding columns and rows
    assert he.tiled(np.ones(6), 16).tolist() == ([1.0] * 6 + [0.0] * 2) * 2
    wide = he.diagonals(np.eye(32)[:3], 64)  # W = 32, B = 8: diagonal 8·g + b rotated right by 8·g
    table = np.eye(32)[:3]
    assert np.array_equal(np.roll(wide[9], -8)[:3], [table[i, (i + 9) % 32] for i in range(3)])


@pytest.mark.parametrize("packing", he.PACKINGS)
def test_each_packing_gives_the_plaintext_top_k_and_a_small_query(packing, default_keys):
    secret, public, _ = default_keys
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 40))  # W = 64 for the diagonal packing: 8 giant steps
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[123] + 0.3 * rng.normal(size=40)
    q /= np.linalg.norm(q)
    plain = x @ q
    block = he.encrypt_block(public, x, packing=packing)
    query = he.encrypt_query(secret, q, packing=packing)
    enc = he.decrypt_scores(secret, he.score_block(public, block, query=query))
    clear_query = he.decrypt_scores(secret, he.score_block(public, block, plain_query=q))
    assert np.abs(enc - plain).max() < 1e-3 and np.abs(clear_query - plain).max() < 1e-3
    top = np.argsort(-plain)[:8]
    assert np.diff(plain[top]).max() < -1e-3  # the plaintext top 8 are apart ...
    assert np.array_equal(np.argsort(-enc)[:8], top) and np.array_equal(np.argsort(-clear_query)[:8], top)
    cipher = 140_000  # one ciphertext at N = 8192, one data prime
    assert len(query) < (8 if packing == "diagonal" else 40) * cipher
    if packing == "diagonal":  # the upload does not grow with D: 8 ciphertexts at D = 512 too
        assert len(he.encrypt_query(secret, np.ones(512) / np.sqrt(512), packing="diagonal")) < 8 * cipher
    with pytest.raises(UsageError, match="packed"):  # a query made for the other packing
        other = "column" if packing == "diagonal" else "diagonal"
        he.score_block(public, block, query=he.encrypt_query(secret, q, packing=other))


def test_resident_blocks_load_once_and_add_grows_them_without_a_rebuild(default_keys, tmp_path):
    secret, public, _ = default_keys
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4200, 16))  # two blocks of 4096 slots
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"e{i}" for i in range(len(x))]
    index = store.Index(tmp_path / "idx", {"format": store.FORMAT, "version": store.VERSION, "key_id": public.key_id, "params": public.params.to_json(), "dim": 16, "packing": "diagonal", "model": {}, "blocks": [], "entries": [], "root": "", "history": []})
    (index.folder / "blocks").mkdir(parents=True)
    store._append(index, public, ids[:4100], [f"{i:064x}" for i in range(4100)], x[:4100])
    resident = store.Resident()
    first = resident.blocks(store.Index.load(index.folder), public)
    assert len(first) == 2
    store._append(index, public, ids[4100:], [f"{i:064x}" for i in range(4100, 4200)], x[4100:])  # what `index add` runs
    grown = store.Index.load(index.folder)
    again = resident.blocks(grown, public)
    assert len(again) == 3 and again[0] is first[0] and again[1] is first[1]  # only the new block was read
    reply = store.server_score(grown, public, query=he.encrypt_query(secret, x[4150], packing="diagonal"), resident=resident)
    hits = store.client_rank(grown, secret, reply, k=3, root=None)
    assert hits[0]["id"] == "e4150" and [h["id"] for h in hits] == [ids[i] for i in np.argsort(-(x @ x[4150]))[:3]]
    path = grown.block_path(2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed"):  # a tampered block is refused when it is first loaded
        store.server_score(grown, public, query=he.encrypt_query(secret, x[0], packing="diagonal"), resident=store.Resident())


def test_column_packing_puts_one_entry_per_slot():
    x = np.arange(12, dtype=float).reshape(4, 3)
    cols = he.columns(x, 8)
    assert len(cols) == 3 and all(c.shape == (8,) for c in cols)
    assert cols[1][:4].tolist() == [1, 4, 7, 10] and not cols[1][4:].any()
    with pytest.raises(ValueError):
        he.columns(np.zeros((9, 3)), 8)


def test_one_ciphertext_per_dimension_scores_every_entry_of_a_block(small_keys):
    secret, public, _ = small_keys
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[11] + 0.05 * rng.normal(size=16)
    q /= np.linalg.norm(q)
    block = he.encrypt_block(public, x, packing="column")  # the server side can encrypt (public key) ...
    header, parts = he.unpack(block, he.BLOCK_MAGIC, "block")
    assert header["count"] == 300 and len(parts) == 16  # 16 ciphertexts for 300 entries
    plain = x @ q
    enc = he.decrypt_scores(secret, he.score_block(public, block, query=he.encrypt_query(secret, q, packing="column")))
    clear_query = he.decrypt_scores(secret, he.score_block(public, block, plain_query=q))
    assert np.abs(enc - plain).max() < 1e-4 and np.abs(clear_query - plain).max() < 1e-4
    assert np.diff(np.sort(plain)[::-1][:11]).max() < -1e-3  # the plaintext top 10 are well apart ...
    assert np.array_equal(np.argsort(-enc)[:10], np.argsort(-plain)[:10])  # ... and the ranking is the same
    assert int(np.argmax(enc)) == 11
    with pytest.raises(UsageError):  # ... but cannot encrypt a query or decrypt
        he.encrypt_query(public, q)


def test_contexts_are_split_and_the_secret_is_private(small_keys, tmp_path):
    secret, public, folder = small_keys
    assert stat.S_IMODE(os.stat(folder / "secret").st_mode) == 0o600
    assert secret.secret and not public.secret and secret.key_id == public.key_id
    with pytest.raises(UsageError):
        he.load_context(folder / "secret", secret=False)  # a server command given the secret
    with pytest.raises(UsageError):
        he.load_context(folder / "public", secret=True)
    he.keygen(tmp_path / "other", preset="n4096")
    other = he.load_context(tmp_path / "other" / "secret", secret=True)
    reply = he.score_block(public, he.encrypt_block(public, np.eye(4)), plain_query=np.ones(4) / 2)
    with pytest.raises(IntegrityError, match="wrong secret context"):
        he.decrypt_scores(other, reply)


def _index(n: int) -> store.Index:
    entries = [{"id": f"p{i:02d}.png", "sha256": f"{i:064x}", "block": i // 4, "slot": i % 4} for i in range(n)]
    blocks = [{"file": f"blocks/{b:06d}.ckks", "sha256": f"{b + 100:064x}", "count": 4} for b in range((n + 3) // 4)]
    index = store.Index(Path("."), {"entries": entries, "blocks": blocks})
    index.data["root"] = merkle.tree_root(index.leaves()).hex()
    return index


def test_entry_proofs_check_alone_and_fail_for_any_edit():
    index = _index(11)
    for position in range(11):
        proof = store.make_proof(index, position)
        assert store.check_proof(proof, root=index.root)["id"] == f"p{position:02d}.png"
        assert len(json.dumps(proof)) < 1400 and len(proof["audit_path"]) <= 4
    proof = store.make_proof(index, 5)
    for key, value in (("id", "p99.png"), ("slot", 2), ("sha256", "ff" * 32), ("block_sha256", "ee" * 32), ("index", 4)):
        with pytest.raises(IntegrityError):
            store.check_proof({**proof, key: value})
    with pytest.raises(IntegrityError, match="trusted"):
        store.check_proof(proof, root="00" * 32)


def test_appends_are_consistent_with_the_old_root():
    old, new = _index(8), _index(11)
    leaves = new.leaves()
    assert leaves[:8] == old.leaves()
    assert merkle.verify_consistency(8, 11, bytes.fromhex(old.root), bytes.fromhex(new.root), merkle.consistency_proof(leaves, 8))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny seg checkpoint, 10 phantom chest X-rays, the default (N = 8192) keys, one index."""
    from medtools.core import ckpt, registry
    from medtools.phantom.generate import write_cxr_phantoms

    root = tmp_path_factory.mktemp("index")
    write_cxr_phantoms(root / "img", n=10, patients=5, size=32, seed=0)
    config = dict(registry.get("seg").tiny[0])
    import torch

    torch.manual_seed(0)
    ckpt.save(root / "seg.safetensors", ckpt.new_model("seg", config).state_dict(), kind="seg", config=config, norm={"method": "unit"})
    keys = run_cli("index", "keygen", "-o", root / "ctx", check=True)
    assert keys.stdout.split() == [str(root / "ctx" / "secret"), str(root / "ctx" / "public")]
    built = run_cli("index", "build", root / "img", "-m", root / "seg.safetensors", "--public", root / "ctx" / "public", "-o", root / "idx", "--json", check=True)
    return root, json.loads(built.stdout)


def test_cli_pipeline_encrypted_top_k_equals_plaintext_and_tampering_exits_4(pipeline):
    root, built = pipeline
    assert built["entries"] == 10 and not (root / "idx" / "secret").exists()
    images = sorted((root / "img").rglob("*.png"))
    query = images[3]
    out = run_cli("index", "query", query, "-i", root / "idx", "--secret", root / "ctx" / "secret", "-k", "4", "--root", built["root"], "--json", check=True)
    result = json.loads(out.stdout)
    assert result["mode"] == "encrypted-query" and result["trusted_root"] == "current"
    # plaintext cosine top-k with the same model and preprocessing
    from medtools.index import features

    predictor = features.load_predictor(root / "seg.safetensors", device="cpu")
    ids = [p.relative_to(root / "img").as_posix() for p in images]
    x = features.embed_arrays(predictor, np.stack([features.load(predictor, p) for p in images]))
    plain = x @ x[3]
    # the encrypted top-4 is a plaintext top-4: its entries' plaintext scores are the 4 best (an
    # untrained model's features can tie to within the CKKS noise, so equal scores may swap places)
    assert np.allclose([plain[ids.index(h["id"])] for h in result["hits"]], np.sort(plain)[::-1][:4], atol=1e-4)
    assert len({h["id"] for h in result["hits"]}) == 4
    assert result["hits"][0]["id"] == ids[3]
    assert max(abs(h["score"] - plain[ids.index(h["id"])]) for h in result["hits"]) < 1e-4
    assert result["packing"] == "diagonal" and result["query_bytes"] < 2_000_000 and result["reply_bytes"] < 2_000_000
    (root / "hits.json").write_text(out.stdout)
    # the same query split over the wire: client encrypts, server scores (public context), client ranks
    encq = run_cli("index", "encrypt-query", query, "-i", root / "idx", "--secret", root / "ctx" / "secret", "-o", root / "q.bin", check=True)
    assert encq.stdout.strip() == str(root / "q.bin")
    assert run_cli("index", "score", root / "q.bin", "-i", root / "idx", "--public", root / "ctx" / "secret", "-o", root / "s.bin").returncode == 2
    run_cli("index", "score", root / "q.bin", "-i", root / "idx", "--public", root / "ctx" / "public", "-o", root / "s.bin", check=True)
    ranked = run_cli("index", "rank", root / "s.bin", "-i", root / "idx", "--secret", root / "ctx" / "secret", "-k", "4", check=True)
    # a second encryption of the query carries other CKKS noise: near-tied entries may swap, so the
    # over-the-wire ranking is checked as a plaintext top-4 too, not against the first one's order
    wire = [line.split("\t")[0] for line in ranked.stdout.splitlines()]
    assert len(set(wire)) == 4 and wire[0] == ids[3]
    assert np.allclose([plain[ids.index(i)] for i in wire], np.sort(plain)[::-1][:4], atol=1e-4)
    assert run_cli("index", "verify", "--proof", root / "hits.json", "--root", built["root"]).returncode == 0

    assert run_cli("index", "verify", root / "idx", "--root", built["root"]).returncode == 0
    block = root / "idx" / "blocks" / "000000.ckks"
    original = block.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 1
    block.write_bytes(bytes(tampered))
    bad = run_cli("index", "verify", root / "idx")
    assert bad.returncode == 4 and f"changed\t{ids[0]}" in bad.stdout.splitlines()
    refused = run_cli("index", "query", query, "-i", root / "idx", "--secret", root / "ctx" / "secret")
    assert refused.returncode == 4 and "refusing" in refused.stderr and refused.stdout == ""
    block.write_bytes(original)

    manifest = root / "idx" / "index.json"
    saved = manifest.read_text()
    data = json.loads(saved)
    data["entries"].pop(2)  # the server drops an entry and re-roots the tree
    data["root"] = merkle.tree_root(store.Index(root / "idx", data).leaves()).hex()
    manifest.write_text(json.dumps(data))
    gone = run_cli("index", "verify", root / "idx", "--root", built["root"])
    assert gone.returncode == 4 and "missing\tblocks/000000.ckks slot 2" in gone.stdout
    manifest.write_text(saved)

    # appending new images: a new block, and the new root extends the trusted old one
    from medtools.phantom.generate import write_cxr_phantoms

    write_cxr_phantoms(root / "more", n=2, patients=1, size=32, seed=7)
    added = json.loads(run_cli("index", "add", root / "more", "-i", root / "idx", "--public", root / "ctx" / "public", "--json", check=True).stdout)
    assert added["entries"] == 2 and added["old_size"] == 10 and added["root"] != built["root"]
    assert merkle.verify_consistency(10, 12, bytes.fromhex(built["root"]), bytes.fromhex(added["root"]), [bytes.fromhex(h) for h in added["consistency"]])
    extended = run_cli("index", "verify", root / "idx", "--root", built["root"], "--json")
    assert extended.returncode == 0 and "extends" in json.loads(extended.stdout)["trusted_root"]
