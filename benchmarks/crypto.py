"""Throughput of the secure-sharing primitives, as JSON on stdout (MB/s = 10^6 bytes per second).

    python benchmarks/crypto.py            # full run (~1 min on 2 cores)
    python benchmarks/crypto.py --quick    # smoke run (a few seconds)

Measures, single-threaded: the .mte container (AES-256-GCM STREAM, encrypt and decrypt,
through the real encrypt_stream/decrypt_stream), raw pycryptodome AES-GCM per chunk size
(the per-chunk set-up cost that fixed the 1 MiB default), the logistic-sine cipher (cold:
key schedule included; warm: schedule cached, as in a batch of equal-sized images), the
block method, and Merkle sealing (file hashing + tree) of a folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1e6


class _Sink(io.RawIOBase):
    """A writable that drops bytes (measures the cipher, not the disk)."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return len(data)


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timings (least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_container(size: int, repeats: int) -> dict:
    from medtools.secure import container

    key = os.urandom(32)
    data = os.urandom(size)
    recipients = [container.KeyRecipient(key)]
    blob = io.BytesIO()
    container.encrypt_stream(io.BytesIO(data), blob, recipients)
    sealed = blob.getvalue()
    out: dict = {"bytes": size, "chunk_size": container.DEFAULT_CHUNK}
    for digest in (False, True):
        suffix = "_with_sha256" if digest else ""
        enc = _best(lambda: container.encrypt_stream(io.BytesIO(data), _Sink(), recipients, digest=digest), repeats)
        dec = _best(lambda: container.decrypt_stream(io.BytesIO(sealed), _Sink(), recipients, digest=digest), repeats)
        out[f"encrypt{suffix}_MBps"] = round(size / enc / MB, 1)
        out[f"decrypt{suffix}_MBps"] = round(size / dec / MB, 1)
    out["note"] = "_with_sha256: also hashing the ciphertext, as with --audit-log or --json"
    return out


def bench_raw_gcm(size: int, chunks: list[int]) -> dict:
    from Crypto.Cipher import AES

    key = os.urandom(32)
    data = memoryview(os.urandom(size))
    out = {}
    for chunk in chunks:
        def run() -> None:
            for counter, start in enumerate(range(0, size, chunk)):
                AES.new(key, AES.MODE_GCM, nonce=counter.to_bytes(12, "big")).encrypt_and_digest(data[start : start + chunk])

        out[f"{chunk // 1024}KiB"] = round(size / _best(run, 2) / MB, 1)
    return out


def bench_logistic_sine(side: int, repeats: int) -> dict:
    from medtools.imagecipher import block, chaos

    key = os.urandom(32)
    rng = np.random.default_rng(0)
    out = {"image": f"{side}x{side}"}
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        image = rng.integers(0, 1 << bits, size=(side, side)).astype(dtype)
        nbytes = image.nbytes
        chaos.schedule.cache_clear()
        cold = _best(lambda: chaos.encrypt(image, key, bits), 1)
        warm = _best(lambda: chaos.encrypt(image, key, bits), repeats)
        cipher = chaos.encrypt(image, key, bits)
        back = _best(lambda: chaos.decrypt(cipher, key, bits), repeats)
        assert np.array_equal(chaos.decrypt(cipher, key, bits), image)
        out[f"{bits}bit"] = {
            "encrypt_cold_MBps": round(nbytes / cold / MB, 1),
            "encrypt_warm_MBps": round(nbytes / warm / MB, 1),
            "decrypt_warm_MBps": round(nbytes / back / MB, 1),
            "key_schedule_s": round(cold - warm, 3),
        }
    image = rng.integers(0, 256, size=(side, side)).astype(np.uint8)
    out["block_8bit_encrypt_MBps"] = round(image.nbytes / _best(lambda: block.encrypt(image, key, 8, 16), repeats) / MB, 1)
    return out


def bench_merkle(files: int, size: int, leaves: int) -> dict:
    from medtools.secure import merkle

    with tempfile.TemporaryDirectory(prefix="medtools-bench-") as tmp:
        root = Path(tmp)
        for i in range(files):
            (root / f"{i:05d}.bin").write_bytes(os.urandom(size))
        merkle.file_sha256(root / "00000.bin")  # warm the page cache path
        seal_s = _best(lambda: merkle.seal_folder(root), 2)
    hashes = [os.urandom(32) for _ in range(leaves)]
    tree_s = _best(lambda: merkle.tree_root(hashes), 2)
    return {
        "files": files,
        "bytes": files * size,
        "seal_MBps": round(files * size / seal_s / MB, 1),
        "tree_leaves": leaves,
        "tree_leaves_per_s": round(leaves / tree_s),
    }


def machine() -> dict:
    flags = ""
    model = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), model)
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    import Crypto

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "aes_ni": " aes " in f" {flags} ",
        "sha_ni": " sha_ni " in f" {flags} ",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pycryptodome": Crypto.__version__,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        sizes = {"aes": 16 << 20, "raw": 8 << 20, "chunks": [64 << 10, 1 << 20], "side": 512, "repeats": 2, "files": 16, "file_size": 1 << 20, "leaves": 4096}
    else:
        sizes = {"aes": 256 << 20, "raw": 64 << 20, "chunks": [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20], "side": 2048, "repeats": 3, "files": 64, "file_size": 4 << 20, "leaves": 100_000}
    started = time.time()
    result = {
        "benchmark": "crypto",
        "quick": args.quick,
        "machine": machine(),
        "aes_gcm_stream": bench_container(sizes["aes"], sizes["repeats"]),
        "aes_gcm_raw_by_chunk_MBps": bench_raw_gcm(sizes["raw"], sizes["chunks"]),
        "logistic_sine": bench_logistic_sine(sizes["side"], sizes["repeats"]),
        "merkle": bench_merkle(sizes["files"], sizes["file_size"], sizes["leaves"]),
    }
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
