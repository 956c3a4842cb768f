"""Whole-process speed of the command line against the tools people compare it with, as JSON.

    python benchmarks/cli.py                 # 500 MB file, 5 paired runs (~2 min on 2 cores)
    python benchmarks/cli.py --quick         # 20 MB, 3 runs (a few seconds)
    python benchmarks/cli.py --only startup  # one group: startup | crypt | convert

Every number is a whole process (`medtools ...` as a user types it: interpreter start,
imports, work, exit), timed in paired runs (medtools, then the other tool, then again) so
that both see the same load on a shared machine; medians are reported with the load
average. `ratio` is the other tool's wall time / medtools' (≥ 1.0: medtools is as fast).

- crypt: `medtools encrypt --key FILE` / `decrypt` vs `age -r` / `age -d -i` on the same
  random file (large and 1 KB), with user/sys CPU and peak RSS of each process.
- startup: `medtools --help`, `--version`, and the commands that need no model (info on a
  NIfTI, manifest, verify): wall time.
- convert: `medtools convert SERIES -o x.nii.gz` vs `dcm2niix -z y` on a DICOM series made
  here from pydicom's CT_small.dcm.

age and dcm2niix are used when installed (Debian: `apt-get install age dcm2niix`); when
not, their entries say so and only medtools' times are given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MEDTOOLS: list[str] = []  # --medtools


def medtools_cmd() -> list[str]:
    """--medtools, else the console script next to this interpreter (what users run), else -m medtools."""
    if MEDTOOLS:
        return MEDTOOLS
    script = Path(sys.executable).with_name("medtools")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medtools"]


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def timed(argv: list[str], *, stdin=None, env=None) -> dict[str, float]:
    """Run one process to the end: wall s, user s, sys s (os.wait4), peak RSS MB.

    The peak RSS comes from GNU time wrapped around the command when it is installed: a
    child spawned straight from this (larger) interpreter inherits its high-water mark.
    """
    rss_file = None
    if GNU_TIME:
        rss_file = tempfile.NamedTemporaryFile(prefix="medtools-bench-rss-", delete=False)
        rss_file.close()
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    rss_mb = usage.ru_maxrss / 1024
    if rss_file is not None:
        text = Path(rss_file.name).read_text().strip().splitlines()
        os.unlink(rss_file.name)
        if text and text[-1].isdigit():
            rss_mb = int(text[-1]) / 1024
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err[-400:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "rss_mb": rss_mb}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}


def paired(ours: list[str], theirs: list[str] | None, repeats: int) -> dict:
    """Alternate the two commands ``repeats`` times; medians of each and the wall ratio."""
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours))
        if theirs is not None:
            b.append(timed(theirs))
    out = {"medtools": median_of(a)}
    if theirs is not None:
        out["other"] = median_of(b)
        out["ratio"] = round(out["other"]["wall_s"] / out["medtools"]["wall_s"], 3)
    return out


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def bench_crypt(work: Path, size: int, repeats: int) -> dict:
    mt = medtools_cmd()
    key = work / "key.hex"
    subprocess.run([*mt, "keys", "gen-key", str(key), "-q"], check=True, capture_output=True)
    age = shutil.which("age")
    if age:
        subprocess.run([shutil.which("age-keygen") or "age-keygen", "-o", str(work / "age.key")], check=True, capture_output=True)
        public = [line.split(": ")[1] for line in (work / "age.key").read_text().splitlines() if line.startswith("# public key:")][0]
    results: dict = {"age": age or "not installed (apt-get install age): medtools times only"}
    for label, nbytes in (("large", size), ("1KB", 1024)):
        plain = work / f"plain-{label}.bin"
        with open(plain, "wb") as handle:
            left = nbytes
            while left:
                block = os.urandom(min(left, 1 << 24))
                handle.write(block)
                left -= len(block)
        ours_enc = [*mt, "encrypt", str(plain), "-o", str(work / f"{label}.mte"), "--key", str(key), "--overwrite", "-q"]
        theirs_enc = [age, "-r", public, "-o", str(work / f"{label}.age"), str(plain)] if age else None
        enc = paired(ours_enc, theirs_enc, repeats)
        ours_dec = [*mt, "decrypt", str(work / f"{label}.mte"), "-o", str(work / f"{label}.dec"), "--key", str(key), "--overwrite", "-q"]
        theirs_dec = [age, "-d", "-i", str(work / "age.key"), "-o", str(work / f"{label}.agedec"), str(work / f"{label}.age")] if age else None
        dec = paired(ours_dec, theirs_dec, repeats)
        if _sha256(work / f"{label}.dec") != _sha256(plain):  # in chunks: a big parent would inflate the children's peak RSS
            raise SystemExit("decrypted bytes differ from the plaintext")
        results[label] = {"bytes": nbytes, "encrypt": enc, "decrypt": dec}
        for suffix in (".mte", ".dec", ".age", ".agedec"):
            (work / f"{label}{suffix}").unlink(missing_ok=True)
        plain.unlink()
    return results


def bench_startup(work: Path, repeats: int) -> dict:
    import numpy as np

    mt = medtools_cmd()
    sys.path.insert(0, str(ROOT))
    from medtools.core.io import Image, write_image

    nifti = work / "vol.nii.gz"
    write_image(Image(np.zeros((32, 32, 8), np.float32), np.eye(4)), nifti)
    for label in ("NORMAL", "PNEUMONIA"):  # 2-D class folders for manifest
        (work / "cls" / label).mkdir(parents=True)
        write_image(Image(np.zeros((16, 16), np.uint8)), work / "cls" / label / "p1_a.png")
    key = work / "seal.hex"
    subprocess.run([*mt, "keys", "gen-key", str(key), "-q"], check=True, capture_output=True)
    subprocess.run([*mt, "seal", str(work / "cls"), "-o", str(work / "seal.json"), "--hmac-key", str(key), "-q"], check=True, capture_output=True)
    cases = {
        "--help": [*mt, "--help"],
        "--version": [*mt, "--version"],
        "info nifti": [*mt, "info", str(nifti)],
        "manifest": [*mt, "manifest", str(work / "cls"), "-o", str(work / "m.csv"), "-q"],
        "verify": [*mt, "verify", str(work / "seal.json"), str(work / "cls"), "--hmac-key", str(key), "-q"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    return {name: round(statistics.median(timed(argv)["wall_s"] for _ in range(repeats)), 4) for name, argv in cases.items()}


def make_series(folder: Path, slices: int) -> Path:
    """A CT series of ``slices`` 128² slices from pydicom's CT_small.dcm (new UIDs, stacked positions)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, frame = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(slices):
        ds = source.copy()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        x, y, _ = (float(v) for v in source.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, float(i * source.SliceThickness)]
        ds.SliceLocation = float(i * source.SliceThickness)
        ds.save_as(str(folder / f"slice{i:03d}.dcm"))
    return folder


def bench_convert(work: Path, slices: int, repeats: int) -> dict:
    series = make_series(work / "series", slices)
    dcm2niix = shutil.which("dcm2niix")
    (work / "d2n").mkdir()
    ours = [*medtools_cmd(), "convert", str(series), "-o", str(work / "ours.nii.gz"), "--overwrite", "-q"]
    theirs = [dcm2niix, "-z", "y", "-b", "n", "-f", "vol", "-o", str(work / "d2n"), str(series)] if dcm2niix else None
    out = {"slices": slices, "dcm2niix": dcm2niix or "not installed (apt-get install dcm2niix): medtools times only"}
    out.update(paired(ours, theirs, repeats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB file, 3 runs")
    parser.add_argument("--size-mb", type=float, default=None, help="large file size in MB (default 500; --quick 20)")
    parser.add_argument("--repeats", type=int, default=None, help="paired runs (default 5; --quick 3)")
    parser.add_argument("--only", choices=("startup", "crypt", "convert"), action="append", help="run only these groups")
    parser.add_argument("--medtools", default=None, help="the medtools command to time (default: the console script beside this python), e.g. 'python -m medtools'")
    args = parser.parse_args()
    if args.medtools:
        import shlex

        MEDTOOLS[:] = shlex.split(args.medtools)
    size = int((args.size_mb or (20 if args.quick else 500)) * 1e6)
    repeats = args.repeats or (3 if args.quick else 5)
    groups = args.only or ["crypt", "startup", "convert"]
    result: dict = {"medtools": medtools_cmd(), "machine": {"cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0]}, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="medtools-bench-cli-") as tmp:
        work = Path(tmp)
        for group in groups:
            folder = work / group
            folder.mkdir()
            if group == "startup":
                result["startup_wall_s"] = bench_startup(folder, repeats)
            elif group == "crypt":
                result["crypt"] = bench_crypt(folder, size, repeats)
            else:
                result["convert"] = bench_convert(folder, 32 if args.quick else 128, repeats)
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
