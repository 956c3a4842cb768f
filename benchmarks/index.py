"""Encrypted index: CKKS costs at scale and retrieval quality on real images; prints one JSON document.

    python benchmarks/index.py synthetic [--dim 512] [--sizes 1000,10000] [--preset n8192] [--paillier]
    python benchmarks/index.py images MANIFEST.csv -m MODEL [--queries 40] [-k 5]

``synthetic``: random unit vectors; keygen, encryption per vector (packed, amortised) and per
block, encrypted- and plain-query scoring of N entries, decryption, proof size and check
time, ciphertext/context bytes; ``--paillier`` encrypts the same vectors with python-paillier
(2048-bit) and scores one encrypted·plain dot product. ``images``: a manifest with ``image``
and ``patient`` columns (``medtools manifest``); builds an index through the library
functions of ``index build`` and runs ``index query`` on the first ``--queries`` images
whose patient has another image in the index, encrypted and plain; compares each top-k with
plaintext cosine on the same features (recall@k, largest score error) and counts how often
the first hit other than the query itself is the same patient (with its chance level).
Wall-clock numbers go to docs/results.md, never into tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


class Clock:
    """Wall and CPU seconds (the CPU time shows the cost when the machine is shared)."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def synthetic(args: argparse.Namespace) -> dict:
    from medtools.core import merkle
    from medtools.index import he, store

    out: dict = {"dim": args.dim, "preset": args.preset}
    folder = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    keys = he.keygen(folder, preset=args.preset)
    out["keygen_s"] = time.perf_counter() - t
    out["context_bytes"] = keys["bytes"]
    secret = he.load_context(folder / "secret", secret=True)
    public = he.load_context(folder / "public", secret=False)
    slots = public.params.slots
    rng = np.random.default_rng(0)
    runs = []
    for n in args.sizes:
        x = rng.normal(size=(n, args.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[n // 2] + 0.1 * rng.normal(size=args.dim)
        q /= np.linalg.norm(q)
        with Clock() as c_enc:
            blocks = [he.encrypt_block(public, x[s : s + slots]) for s in range(0, n, slots)]
        with Clock() as c_q:
            query = he.encrypt_query(secret, q)
        with Clock() as c_score:
            replies = he.score_blocks(public, blocks, query=query)
        with Clock() as c_dec:
            scores = np.concatenate([he.decrypt_scores(secret, r) for r in replies])
        with Clock() as c_plain:
            plain_replies = he.score_blocks(public, blocks, plain_query=q)
        # a resident server: blocks (and the query) already deserialised
        with Clock() as c_load:
            loaded = [he.load_block(public, b) for b in blocks]
            qvectors = he.load_query(public, query)
        with Clock() as c_resident:
            for lb in loaded:
                he.score_loaded(public, lb, query=qvectors)
        with Clock() as c_resident_plain:
            for lb in loaded:
                he.score_loaded(public, lb, plain_query=q)
        del loaded, qvectors
        enc_s, enc_q, score_s, dec_s, plain_s = c_enc.wall, c_q.wall, c_score.wall, c_dec.wall, c_plain.wall
        plain_scores = np.concatenate([he.decrypt_scores(secret, r) for r in plain_replies])
        truth = x @ q
        k = args.k
        top_true = set(np.argsort(-truth)[:k])
        leaves = [merkle.hash_leaf(b"%d" % i) for i in range(n)]
        root = merkle.tree_root(leaves)
        path = merkle.audit_path(leaves, n // 3)
        t = time.perf_counter()
        reps = 2000
        for _ in range(reps):
            merkle.verify_inclusion(leaves[n // 3], n // 3, n, path, root)
        verify_us = 1e6 * (time.perf_counter() - t) / reps
        runs.append(
            {
                "entries": n,
                "blocks": len(blocks),
                "encrypt_s": enc_s,
                "encrypt_ms_per_vector": 1000 * enc_s / n,
                "encrypt_cpu_ms_per_vector": 1000 * c_enc.cpu / n,
                "storage_bytes_per_entry": sum(map(len, blocks)) / n,
                "block_bytes": len(blocks[0]),
                "encrypted_query": {"encrypt_s": enc_q, "upload_bytes": len(query), "server_s": score_s, "decrypt_s": dec_s, "total_s": enc_q + score_s + dec_s, "cpu_s": {"encrypt": c_q.cpu, "server": c_score.cpu, "decrypt": c_dec.cpu}},
                "plain_query": {"server_s": plain_s, "server_cpu_s": c_plain.cpu},
                "resident_server": {"deserialise_s": c_load.wall, "deserialise_cpu_s": c_load.cpu, "encrypted_query_s": c_resident.wall, "encrypted_query_cpu_s": c_resident.cpu, "plain_query_s": c_resident_plain.wall, "plain_query_cpu_s": c_resident_plain.cpu},
                "max_abs_score_error": float(np.abs(scores - truth).max()),
                "max_abs_score_error_plain_query": float(np.abs(plain_scores - truth).max()),
                f"recall_at_{k}": len(top_true & set(np.argsort(-scores)[:k])) / k,
                "proof_hashes": len(path),
                "proof_bytes_binary": 32 * len(path) + 8,
                "proof_verify_us": verify_us,
            }
        )
        del blocks, replies, plain_replies
    out["runs"] = runs
    if args.paillier:
        try:
            from phe import paillier
        except ImportError:
            out["paillier"] = "phe not installed"
        else:
            t = time.perf_counter()
            pub, priv = paillier.generate_paillier_keypair(n_length=2048)
            keygen_s = time.perf_counter() - t
            vec = rng.normal(size=args.dim)
            vec /= np.linalg.norm(vec)
            with Clock() as c_penc:
                enc = [pub.encrypt(float(v)) for v in vec]
            with Clock() as c_pdot:
                dot = sum((e * float(w) for e, w in zip(enc, vec)), pub.encrypt(0.0))
            err = abs(priv.decrypt(dot) - float(vec @ vec))
            out["paillier"] = {"n_bits": 2048, "keygen_s": keygen_s, "encrypt_s_per_vector": c_penc.wall, "encrypt_cpu_s_per_vector": c_penc.cpu, "dot_plain_s": c_pdot.wall, "dot_plain_cpu_s": c_pdot.cpu, "abs_error": err}
    return out


def images(args: argparse.Namespace) -> dict:
    from medtools.core.inputs import Item
    from medtools.index import features, he, store

    rows = list(csv.DictReader(open(args.manifest)))
    root = Path(tempfile.mkdtemp())
    items = [Item(Path(r["image"]), Path(Path(r["image"]).parent.name) / Path(r["image"]).name) for r in rows]
    patient = {item.rel.as_posix(): r["patient"] for item, r in zip(items, rows)}
    t = time.perf_counter()
    he.keygen(root / "ctx", preset=args.preset)
    keygen_s = time.perf_counter() - t
    t = time.perf_counter()
    built = store.build(items, model=args.model, public=root / "ctx" / "public", output=root / "idx")
    build_s = time.perf_counter() - t
    index = store.Index.load(root / "idx")
    ids = [e["id"] for e in index.entries]
    predictor = features.load_predictor(args.model)
    x = features.embed_arrays(predictor, np.stack([features.load(predictor, Path(r["image"])) for r in rows]))
    by_id = dict(zip([i.rel.as_posix() for i in items], x))
    x = np.stack([by_id[i] for i in ids])
    pats = [patient[i] for i in ids]
    counts = {p: pats.count(p) for p in set(pats)}
    allowed = None
    if args.queries_from is not None:  # e.g. only patients the model never saw
        allowed = {r["image"] for r in csv.DictReader(open(args.queries_from))}
    image_of = {i.rel.as_posix(): str(i.path) for i in items}
    candidates = [i for i, p in enumerate(pats) if counts[p] > 1 and (allowed is None or image_of[ids[i]] in allowed)][: args.queries]
    k = args.k
    res: dict = {"encrypted": [], "plain": []}
    same_first = {"encrypted": 0, "plaintext": 0}
    chance = []
    for qi in candidates:
        image = Path(image_of[ids[qi]])
        truth = x @ x[qi]
        top_true = [ids[j] for j in np.argsort(-truth, kind="stable")[: k + 1]]
        for mode in ("encrypted", "plain"):
            t = time.perf_counter()
            result = store.query(image, index_folder=root / "idx", secret=root / "ctx" / "secret", k=k + 1, model=args.model, plain_query=(mode == "plain"))
            wall = time.perf_counter() - t
            got = [h["id"] for h in result["hits"]]
            err = max(abs(h["score"] - float(truth[ids.index(h["id"])])) for h in result["hits"])
            res[mode].append({"wall_s": wall, **result["timing"], "recall": len(set(got) & set(top_true)) / len(top_true), "same_order": got == top_true, "err": err, "query_bytes": result["query_bytes"]})
            if mode == "encrypted":
                first = next(h for h in got if h != ids[qi])
                same_first["encrypted"] += patient[first] == pats[qi]
        first_plain = next(h for h in top_true if h != ids[qi])
        same_first["plaintext"] += patient[first_plain] == pats[qi]
        chance.append((counts[pats[qi]] - 1) / (len(ids) - 1))

    def summary(runs: list[dict]) -> dict:
        return {
            "queries": len(runs),
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_encrypt_query_s": statistics.median(r["encrypt_query_s"] for r in runs),
            "median_server_s": statistics.median(r["server_score_s"] for r in runs),
            "median_verify_and_features_s": statistics.median(r["verify_and_features_s"] for r in runs),
            f"mean_recall_at_{k + 1}_vs_plaintext": statistics.mean(r["recall"] for r in runs),
            "identical_ranking_share": statistics.mean(r["same_order"] for r in runs),
            "max_abs_score_error": max(r["err"] for r in runs),
            "query_upload_bytes": runs[0]["query_bytes"],
        }

    n = len(candidates)
    return {
        "manifest": str(args.manifest),
        "model": str(args.model),
        "preset": args.preset,
        "entries": len(ids),
        "patients": len(counts),
        "dim": int(x.shape[1]),
        "keygen_s": keygen_s,
        "build_s": build_s,
        "build_timing": built["timing"],
        "features_ms_per_image": 1000 * built["timing"]["features_s"] / len(ids),
        "encrypt_ms_per_image": built["timing"]["encrypt_ms_per_entry"],
        "index_bytes": sum(os.path.getsize(root / "idx" / b["file"]) for b in index.blocks),
        "encrypted_query": summary(res["encrypted"]),
        "plain_query": summary(res["plain"]),
        "queries_from": str(args.queries_from) if args.queries_from else None,
        "same_patient_first": {"encrypted": same_first["encrypted"] / n, "plaintext": same_first["plaintext"] / n, "chance": statistics.mean(chance), "queries": n},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 10000])
    s.add_argument("--preset", default="n8192")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--paillier", action="store_true")
    i = sub.add_parser("images")
    i.add_argument("manifest", type=Path)
    i.add_argument("-m", "--model", type=Path, required=True)
    i.add_argument("--preset", default="n8192")
    i.add_argument("--queries", type=int, default=40)
    i.add_argument("--queries-from", type=Path, default=None, help="manifest whose images may be queries (default: any)")
    i.add_argument("-k", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = synthetic(args) if args.mode == "synthetic" else images(args)
    result["machine"] = {"cpus": os.cpu_count(), "tenseal": __import__("tenseal").__version__}
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
