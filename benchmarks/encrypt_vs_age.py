"""`medtools encrypt` of a folder against a shell loop of `age -r` over the same files, as JSON.

    python benchmarks/encrypt_vs_age.py            # 200 × 512 KiB, 50 × 8 MiB, one 1 GB file
    python benchmarks/encrypt_vs_age.py --quick    # 40 × 512 KiB, 10 × 8 MiB, one 64 MB file

Each line: the case, seconds for medtools (one process, the batch driver's worker threads:
--workers default = the usable cores) and for the age loop (one process per file, as a script
would run it), the speed-up (age seconds / medtools seconds; > 1 means medtools is faster), the
best of ``--repeats`` runs. Needs `age` and `age-keygen` on PATH (Debian: apt-get install age).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from crypto import _best  # noqa: E402  (this folder's crypto.py: the fastest of several timings)

MEDTOOLS = [sys.executable, "-m", "medtools"]


def _folder(root: Path, count: int, size: int) -> Path:
    folder = root / f"{count}x{size}"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:04d}.bin").write_bytes(os.urandom(size))
    return folder


def case(root: Path, name: str, source: Path, key: Path, recipient: str, repeats: int, workers: int | None) -> dict:
    out_m, out_a = root / f"{name}-mte", root / f"{name}-age"
    files = sorted(source.iterdir()) if source.is_dir() else [source]

    def run_medtools() -> None:
        shutil.rmtree(out_m, ignore_errors=True)
        args = [*MEDTOOLS, "encrypt", str(source), "--key", str(key), "-o", str(out_m / "x.mte") if source.is_file() else str(out_m), "-q"]
        if workers is not None:
            args += ["--workers", str(workers)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)

    def run_age() -> None:
        shutil.rmtree(out_a, ignore_errors=True)
        out_a.mkdir()
        script = "for f in \"$@\"; do age -r \"$R\" -o \"$O/$(basename \"$f\").age\" \"$f\"; done"
        subprocess.run(["bash", "-c", script, "loop", *map(str, files)], check=True, env={**os.environ, "R": recipient, "O": str(out_a)})

    medtools_s, age_s = _best(run_medtools, repeats), _best(run_age, repeats)
    total = sum(f.stat().st_size for f in files)
    return {"case": name, "files": len(files), "bytes": total, "medtools_s": round(medtools_s, 3), "age_loop_s": round(age_s, 3), "speedup_vs_age": round(age_s / medtools_s, 2), "workers": workers if workers is not None else "default"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="medtools --workers (default: its own default, the cores)")
    args = parser.parse_args()
    if not shutil.which("age") or not shutil.which("age-keygen"):
        print(json.dumps({"skipped": "age not on PATH (apt-get install age)"}))
        return 0
    small, large, single = (40, 10, 64_000_000) if args.quick else (200, 50, 1_000_000_000)
    with tempfile.TemporaryDirectory(prefix="medtools-bench-") as tmp:
        root = Path(tmp)
        key = root / "k.key"
        subprocess.run([*MEDTOOLS, "keys", "gen-key", str(key), "-q"], check=True, stdout=subprocess.DEVNULL)
        identity = subprocess.run(["age-keygen"], check=True, capture_output=True, text=True).stdout
        recipient = next(line.split(": ")[1] for line in identity.splitlines() if line.startswith("# public key"))
        header = {"machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()}
        print(json.dumps({"benchmark": "encrypt_vs_age", **header}), flush=True)
        print(json.dumps(case(root, "folder-512KiB", _folder(root, small, 512 * 1024), key, recipient, args.repeats, args.workers)), flush=True)
        print(json.dumps(case(root, "folder-8MiB", _folder(root, large, 8 * 1024 * 1024), key, recipient, args.repeats, args.workers)), flush=True)
        big = root / "single.bin"
        with open(big, "wb") as handle:
            for _ in range(single // 8_000_000):
                handle.write(os.urandom(8_000_000))
        print(json.dumps(case(root, f"single-{single // 1_000_000}MB", big, key, recipient, max(1, args.repeats - 1), args.workers)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
