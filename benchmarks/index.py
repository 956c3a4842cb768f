"""Encrypted index: CKKS costs at scale and retrieval quality on real images; prints one JSON document.

    python benchmarks/index.py synthetic [--dim 512] [--sizes 1000,10000,100000]
        [--packings diagonal:n8192-1p,column:n8192-1p,column:n8192] [--column-max 10000] [--paillier]
    python benchmarks/index.py images MANIFEST.csv -m MODEL [--packing diagonal] [--queries 40] [-k 5]

``synthetic``: random unit vectors (D = 512 by default), per packing:preset and index size:
build time, index bytes, the server's resident blocks (load time, memory), and per query
(median of ``--queries``) upload bytes, reply bytes, client CPU (encrypt + decrypt, rank,
proofs), server CPU, wall (the three steps, no network), recall@k and order against
plaintext cosine top-k, the largest score error over all entries. Column packing stops at
``--column-max`` entries. ``--paillier`` encrypts one vector with python-paillier (2048-bit)
and scores one encrypted·plain dot product. ``images``: a manifest with ``image``
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
import shutil
import statistics
import sys
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


def _rss_mb() -> dict:
    """Resident and peak memory of this process (the server's blocks live here)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_mb": int(fields["VmHWM"].split()[0]) / 1024}


def synthetic(args: argparse.Namespace) -> dict:
    """Per packing (and preset) and index size: a real index folder (``store._append``, what
    ``index build`` runs after embedding), the server's resident blocks (``store.Resident``,
    what ``serve --index`` keeps), then ``--queries`` queries through encrypt → score → rank."""
    from medtools.index import he, store

    out: dict = {"dim": args.dim, "k": args.k, "queries": args.queries, "runs": []}
    rng = np.random.default_rng(0)
    for spec in args.packings:
        packing, preset = spec.split(":")
        folder = Path(tempfile.mkdtemp(prefix="medtools-index-bench-"))
        t = time.perf_counter()
        keys = he.keygen(folder / "ctx", preset=preset)
        keygen_s = time.perf_counter() - t
        secret = he.load_context(folder / "ctx" / "secret", secret=True)
        public = he.load_context(folder / "ctx" / "public", secret=False)
        for n in args.sizes:
            if n > args.column_max and packing == "column":
                continue
            x = rng.normal(size=(n, args.dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = [f"e{i:07d}" for i in range(n)]
            index = store.Index(folder / f"idx{n}", {"format": store.FORMAT, "version": store.VERSION, "key_id": public.key_id, "params": public.params.to_json(), "dim": args.dim, "packing": packing, "model": {}, "blocks": [], "entries": [], "root": "", "history": []})
            (index.folder / "blocks").mkdir(parents=True)
            with Clock() as c_build:
                store._append(index, public, ids, [f"{i:064x}" for i in range(n)], x)
            before = _rss_mb()
            resident = store.Resident()
            with Clock() as c_load:
                resident.blocks(index, public)
            after = _rss_mb()
            queries = []
            for qi in rng.choice(n, size=args.queries, replace=False):
                q = x[qi] + 0.1 * rng.normal(size=args.dim)
                q /= np.linalg.norm(q)
                truth = x @ q
                with Clock() as c_enc:
                    upload = he.encrypt_query(secret, q, packing=packing)
                with Clock() as c_server:
                    reply = store.server_score(index, public, query=upload, resident=resident)
                with Clock() as c_dec:
                    hits = store.client_rank(index, secret, reply, k=args.k, root=None)
                scores = np.concatenate([he.decrypt_scores(secret, r) for r in he.unpack(reply, store.REPLY_MAGIC, "reply")[1]])
                top_true = [ids[i] for i in np.argsort(-truth, kind="stable")[: args.k]]
                got = [h["id"] for h in hits]
                queries.append({
                    "upload_bytes": len(upload), "reply_bytes": len(reply),
                    "client_cpu_s": c_enc.cpu + c_dec.cpu, "server_cpu_s": c_server.cpu,
                    "encrypt_s": c_enc.wall, "server_s": c_server.wall, "decrypt_rank_prove_s": c_dec.wall,
                    "wall_s": c_enc.wall + c_server.wall + c_dec.wall,
                    "recall": len(set(got) & set(top_true)) / args.k, "same_order": got == top_true,
                    "max_abs_score_error": float(np.abs(scores - truth).max()),
                })
            med = {key: statistics.median(q[key] for q in queries) for key in ("client_cpu_s", "server_cpu_s", "encrypt_s", "server_s", "decrypt_rank_prove_s", "wall_s")}
            out["runs"].append({
                "packing": packing, "preset": preset, "params": public.params.to_json(), "entries": n, "blocks": len(index.blocks),
                "public_context_bytes": keys["bytes"]["public"], "keygen_s": keygen_s,
                "build_encrypt_s": c_build.wall, "build_encrypt_cpu_ms_per_entry": 1000 * c_build.cpu / n,
                "index_bytes": sum(int(b["bytes"]) for b in index.blocks),
                "server_load_s": c_load.wall, "server_resident_mb": after["rss_mb"] - before["rss_mb"], "server_peak_mb": _rss_mb()["peak_mb"],
                "upload_bytes": queries[0]["upload_bytes"], "reply_bytes": queries[0]["reply_bytes"],
                **{f"median_{key}": value for key, value in med.items()},
                f"recall_at_{args.k}": statistics.mean(q["recall"] for q in queries),
                "identical_top_k_order_share": statistics.mean(q["same_order"] for q in queries),
                "max_abs_score_error": max(q["max_abs_score_error"] for q in queries),
            })
            print(json.dumps(out["runs"][-1], default=float), file=sys.stderr, flush=True)
            del resident, index, x
            shutil.rmtree(folder / f"idx{n}")
        shutil.rmtree(folder)
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
    built = store.build(items, model=args.model, public=root / "ctx" / "public", output=root / "idx", packing=args.packing)
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
        "packing": args.packing,
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
    s.add_argument("--packings", type=lambda v: v.split(","), default=["diagonal:n8192-1p", "column:n8192-1p", "column:n8192"])
    s.add_argument("--column-max", type=int, default=10000)
    s.add_argument("--queries", type=int, default=3)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--paillier", action="store_true")
    i = sub.add_parser("images")
    i.add_argument("manifest", type=Path)
    i.add_argument("-m", "--model", type=Path, required=True)
    i.add_argument("--preset", default="n8192-1p")
    i.add_argument("--packing", default="diagonal")
    i.add_argument("--queries", type=int, default=40)
    i.add_argument("--queries-from", type=Path, default=None, help="manifest whose images may be queries (default: any)")
    i.add_argument("-k", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = synthetic(args) if args.mode == "synthetic" else images(args)
    result["machine"] = {"cpus": os.cpu_count(), "tenseal": __import__("tenseal").__version__, "load_average_after": os.getloadavg()}
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
