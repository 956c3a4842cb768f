"""pacs pull/push throughput against a private Orthanc on loopback, next to Orthanc's own REST.

One synthetic MR series of N instances (256×256 int16, 128 KiB each) is pushed with
`medtools pacs push` (STOW-RS) and pulled with `medtools pacs pull` (WADO-RS), each a CLI run
in a fresh process (start-up included). Baselines over the same loopback: the study as one ZIP
archive (`GET /studies/{id}/archive`, what `curl` of the study fetches) for pull, and the same
files as one ZIP posted to `/instances` for push. Prints one JSON document: instances/s, the
ratios to the baselines and the peak memory of the pull process (instances stream to disk, so
it does not grow with the study).

    python benchmarks/pacs.py [--instances 500] [--quick]

Needs Orthanc with its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb); without it
the JSON says so and the exit code is 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from base64 import b64encode
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
PLUGIN = next((p for p in PLUGINS if os.path.exists(p)), None)
MEDTOOLS = [sys.executable, "-m", "medtools"]
USER, PASSWORD = "bench", "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_orthanc(root: Path) -> tuple[subprocess.Popen, int]:
    root.mkdir(parents=True)
    port = free_port()
    config = {"Name": "bench", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"), "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StorageCompression": False}
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            rest(port, "/system")
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("Orthanc did not start")


def rest(port: int, path: str, data: bytes | None = None, content_type: str = "application/octet-stream", method: str | None = None) -> bytes:
    headers = {"Authorization": "Basic " + b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    if data is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method or ("POST" if data is not None else "GET"))
    with urllib.request.urlopen(request, timeout=600) as answer:
        return answer.read()


def write_series(folder: Path, n: int, size: int = 256) -> str:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "BENCH", "Bench^Mark", "MR", k + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = rng.integers(0, 4000, (size, size), dtype=np.int16).tobytes()
        ds.save_as(folder / f"IM{k:05d}.dcm", enforce_file_format=True)
    return study


def timed_cli(*args: str, env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one CLI run in its own process."""
    start = time.perf_counter()
    code = f"import resource, runpy, sys; sys.argv = ['medtools', *sys.argv[1:]]\ntry:\n    runpy.run_module('medtools', run_name='__main__')\nfinally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"medtools {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="50 instances")
    args = parser.parse_args()
    n = 50 if args.quick else args.instances
    machine = {"cpus": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    if ORTHANC is None or PLUGIN is None:
        print(json.dumps({"benchmark": "pacs", "skipped": "Orthanc with its DICOMweb plugin is not installed", "machine": machine}))
        return
    root = Path(tempfile.mkdtemp(prefix="medtools-bench-pacs-"))
    proc, port = start_orthanc(root / "orthanc")
    try:
        study = write_series(root / "series", n)
        size_mb = sum(p.stat().st_size for p in (root / "series").iterdir()) / 2**20
        url = f"http://127.0.0.1:{port}/dicom-web"
        env = {**os.environ, "MEDTOOLS_PACS_USER": USER, "MEDTOOLS_PACS_PASSWORD": PASSWORD}

        push_s, _ = timed_cli("pacs", "push", url, str(root / "series"), "-q", env=env)
        pull_s, pull_rss = timed_cli("pacs", "pull", url, "--study-uid", study, "-o", str(root / "pulled"), "-q", env=env)
        assert len(list((root / "pulled").rglob("*.dcm"))) == n
        orthanc_id = json.loads(rest(port, "/tools/lookup", study.encode(), "text/plain"))[0]["ID"]
        start = time.perf_counter()
        archive = rest(port, f"/studies/{orthanc_id}/archive")
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:  # unpacked to disk, as pull writes files
            zipped.extractall(root / "archive")
        archive_s = time.perf_counter() - start
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
            for path in sorted((root / "series").iterdir()):
                zipped.write(path, path.name)
        rest(port, f"/studies/{orthanc_id}", method="DELETE")  # the upload stores it anew
        start = time.perf_counter()
        rest(port, "/instances", buffer.getvalue(), "application/zip")
        zip_push_s = time.perf_counter() - start
        result = {
            "benchmark": "pacs",
            "instances": n,
            "series_mib": round(size_mb, 1),
            "pull": {"seconds": round(pull_s, 2), "instances_per_s": round(n / pull_s, 1), "peak_rss_mib": round(pull_rss / 1024, 1)},
            "pull_baseline_zip_archive": {"seconds": round(archive_s, 2), "instances_per_s": round(n / archive_s, 1)},
            "pull_ratio": round(archive_s / pull_s, 2),
            "push": {"seconds": round(push_s, 2), "instances_per_s": round(n / push_s, 1)},
            "push_baseline_zip_upload": {"seconds": round(zip_push_s, 2), "instances_per_s": round(n / zip_push_s, 1)},
            "push_ratio": round(zip_push_s / push_s, 2),
            "note": "medtools timings are whole CLI runs in a fresh process (start-up included); baselines are one HTTP request each from this process",
            "machine": machine,
            "orthanc": json.loads(rest(port, "/system"))["Version"],
        }
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
