"""pacs query/pull/push against real Orthanc servers with the DICOMweb plugin.

Two private Orthancs (a clinical and a research PACS) start on free loopback ports, each with
its own temporary storage, a configuration written here (DICOMweb on, HTTP basic with one
user), and stop at the end. Without Orthanc (apt-get install orthanc orthanc-dicomweb) every
test that needs one skips with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import run_cli

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
PLUGIN = next((p for p in PLUGINS if os.path.exists(p)), None)
needs_orthanc = pytest.mark.skipif(ORTHANC is None or PLUGIN is None, reason="Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
PHI = {"PatientName": "Doe^Jane", "PatientID": "P001", "PatientBirthDate": "19700101", "InstitutionName": "General Hospital", "ReferringPhysicianName": "House^Greg", "AccessionNumber": "ACC123", "StudyID": "S1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One private Orthanc: temporary storage, DICOMweb at /dicom-web, user ``user``."""

    def __init__(self, root: Path, name: str, user: str, password: str) -> None:
        self.root, self.user, self.password = root, user, password
        self.port = free_port()
        root.mkdir(parents=True)
        config = {
            "Name": name,
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password},
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "StorageCompression": False,
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": "Basic " + b64encode(f"{self.user}:{self.password}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read()

    def clear(self) -> None:
        """Delete every study (Orthanc's REST API), so a test that counts what the PACS holds
        does not depend on which tests ran before it."""
        for study in json.loads(self.get("/studies")):
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}/studies/{study}", method="DELETE", headers={"Authorization": "Basic " + b64encode(f"{self.user}:{self.password}".encode()).decode()})
            with urllib.request.urlopen(request, timeout=10):
                pass

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system in time")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Orthanc takes about 2 s to stop) or SIGKILL, then wait, bounded."""
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A clinical and a research Orthanc, with a password file (0600) for each user."""
    if ORTHANC is None or PLUGIN is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("pacs")
    servers = []
    try:
        servers.append(Orthanc(root / "clinical", "clinical", "alice", "alice-secret"))
        servers.append(Orthanc(root / "research", "research", "bob", "bob-secret"))
        for server in servers:
            secret = root / f"{server.user}.pw"
            secret.write_text(server.password + "\n")
            secret.chmod(0o600)
            server.auth = ["--user", server.user, "--password-file", str(secret)]
        yield {"clinical": servers[0], "research": servers[1], "root": root}
    finally:
        for server in servers:  # both at once: each takes about 2 s to stop
            if server.proc.poll() is None:
                server.proc.terminate()
        for server in servers:
            server.stop()


def write_series(folder: Path, *, slices: int = 6, size: int = 32, study: str | None = None, modality: str = "MR", phi: dict | None = None, seed: int = 0) -> list[Path]:
    """A small MR series with geometry (dcm2niix and segment read it) and identifying tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study or generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        for key, value in (phi or PHI).items():
            setattr(ds, key, value)
        ds.PatientSex, ds.Manufacturer = "F", "medtools tests"
        ds.StudyDate = ds.SeriesDate = "20240131"
        ds.StudyTime = "101500"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, k + 1
        ds.SeriesDescription = "t1 synthetic"
        ds.ImagePositionPatient = [-40.0, -40.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [2.5, 2.5], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        yy, xx = np.mgrid[:size, :size]
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2) * 400
        ds.PixelData = (disc + rng.integers(0, 50, (size, size)) + 10 * k).astype(np.int16).tobytes()
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def by_sop(paths) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}


# ------------------------------------------------------------------ flags refused before any network


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["query", "http://alice:secret@127.0.0.1:1/dicom-web"], "credentials in the URL"),
        (["query", "ftp://pacs/dicom-web"], "not a DICOMweb URL"),
        (["query", "http://127.0.0.1:1/dicom-web", "--date", "31.01.2024"], "--date"),
        (["pull", "http://127.0.0.1:1/dicom-web", "1.2.3", "-o", "out"], None),
        (["pull", "http://127.0.0.1:1/dicom-web", "1.2.x", "-o", "out"], "not a DICOM UID"),
        (["pull", "http://127.0.0.1:1/dicom-web", "--series-uid", "1.2", "-o", "out"], "--series-uid needs --study-uid"),
        (["pull", "http://127.0.0.1:1/dicom-web", "1.2.3"], "needs -o DIR"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, args: list[str], needle: str | None) -> None:
    proc = run_cli("pacs", *args, cwd=tmp_path, env={"MEDTOOLS_PACS_USER": ""})
    if needle is None:  # a well-formed request to a port where nothing listens: remote unavailable
        assert proc.returncode == 6, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "does not answer" in proc.stderr
        return
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_stdin_lines_take_uids_pairs_and_query_records() -> None:
    from medtools.core.errors import UsageError
    from medtools.pacs.pull import Request, requests_from

    lines = ["1.2.3\n", "# comment\n", "\n", "1.2.4 1.2.4.1\n", '{"study_uid": "1.2.4", "series_uid": "1.2.4.2"}\n', '{"study_uid": "1.2.5"}\n', "1.2.5 1.2.5.9\n"]
    got = requests_from(["-"], study_uid=None, stdin=lines)
    assert got == [Request("1.2.3"), Request("1.2.4", ("1.2.4.1", "1.2.4.2")), Request("1.2.5")]  # a whole study wins over one of its series
    with pytest.raises(UsageError, match="not a DICOM UID"):
        requests_from(["-"], study_uid=None, stdin=["../../etc\n"])


def test_stow_answer_maps_each_instance() -> None:
    """STOW-RS 202: stored, already held (0x0111) and refused instances, each by its UID."""
    from pydicom.dataset import Dataset

    from medtools.pacs.push import store

    def item(uid: str, reason: int | None = None) -> Dataset:
        ds = Dataset()
        ds.ReferencedSOPInstanceUID = uid
        if reason is not None:
            ds.FailureReason = reason
        return ds

    class Client:
        def store_instances(self, datasets):
            answer = Dataset()
            answer.ReferencedSOPSequence = [item("1.1")]
            answer.FailedSOPSequence = [item("1.2", 0x0111), item("1.3", 0xA900)]
            return answer

    sent = []
    for uid in ("1.1", "1.2", "1.3", "1.4"):
        ds = Dataset()
        ds.SOPInstanceUID = uid
        sent.append(ds)
    fates = store(Client(), "http://pacs", sent)
    assert fates["1.1"] == ("stored", "") and fates["1.2"] == ("stored", "")
    assert fates["1.3"][0] == "failed" and "0xA900" in fates["1.3"][1]
    assert "1.4" not in fates  # push_job reports it as not named in the answer


def test_secret_files_open_to_others_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    secret.chmod(0o644)
    proc = run_cli("pacs", "query", "http://127.0.0.1:1/dicom-web", "--user", "u", "--password-file", secret)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr


# ------------------------------------------------------------------ against Orthanc


@needs_orthanc
def test_pipeline_push_query_pull_deid_push_research(pacs, tmp_path: Path) -> None:
    """The CLI end to end: push to the clinical PACS, query, pull what the query found, de-identify,
    push to the research PACS; pixels and UIDs survive the round trip, PHI does not."""
    clinical, research = pacs["clinical"], pacs["research"]
    clinical.clear()
    research.clear()
    first = write_series(tmp_path / "src" / "a", slices=6)
    second = write_series(tmp_path / "src" / "b", slices=4, phi={**PHI, "PatientID": "P002", "PatientName": "Roe^Rick"}, seed=1)
    sources = by_sop(first + second)

    pushed = run_cli("pacs", "push", clinical.url, tmp_path / "src", *clinical.auth, check=True)
    assert sorted(pushed.stdout.split()) == sorted(sources)
    again = run_cli("pacs", "push", clinical.url, tmp_path / "src" / "a", *clinical.auth)
    assert again.returncode == 0 and len(again.stdout.split()) == 6  # already held: success

    query = run_cli("pacs", "query", clinical.url, "--json", "--patient", "P001", *clinical.auth, check=True)
    rows = [json.loads(line) for line in query.stdout.splitlines()]
    assert [(r["patient_id"], r["modality"], r["instances"], r["date"]) for r in rows] == [("P001", "MR", 6, "20240131")]
    assert rows[0]["study_uid"] == str(sources[next(iter(by_sop(first)))].StudyInstanceUID)
    every = run_cli("pacs", "query", clinical.url, "--json", "--date", "20240101-20240229", "-o", tmp_path / "pulled" / "manifest.csv", *clinical.auth, check=True)
    assert len(every.stdout.splitlines()) == 2 and "2 series in 2 studies" in every.stderr
    nothing = run_cli("pacs", "query", clinical.url, "--modality", "CT", *clinical.auth)
    assert nothing.returncode == 5

    pulled = run_cli("pacs", "pull", clinical.url, "-", "-o", tmp_path / "pulled", *clinical.auth, input=every.stdout, check=True)
    folders = [Path(line) for line in pulled.stdout.splitlines()]
    assert len(folders) == 2 and all(f.is_dir() for f in folders)
    copies = by_sop(sorted((tmp_path / "pulled").rglob("*.dcm")))
    assert sorted(copies) == sorted(sources)
    for sop, source in sources.items():
        copy = copies[sop]
        assert (copy.StudyInstanceUID, copy.SeriesInstanceUID) == (source.StudyInstanceUID, source.SeriesInstanceUID)
        assert np.array_equal(copy.pixel_array, source.pixel_array)
        path = tmp_path / "pulled" / str(source.StudyInstanceUID) / str(source.SeriesInstanceUID) / f"{sop}.dcm"
        assert path.is_file()
    rows = (tmp_path / "pulled" / "manifest.csv").read_text().splitlines()
    assert rows[0].startswith("patient,case,visit,image,study_uid") and len(rows) == 3
    from medtools.core.manifest import read_csv

    assert all(Path(row["image"]).is_dir() for row in read_csv(tmp_path / "pulled" / "manifest.csv"))  # the pulled series

    rerun = run_cli("pacs", "pull", clinical.url, "-", "-o", tmp_path / "pulled", *clinical.auth, input=every.stdout)
    assert rerun.returncode == 0 and rerun.stdout == "" and "0 instance(s) fetched, 10 already present" in rerun.stderr

    # de-identified copy of the first study into the research PACS
    a = pydicom.dcmread(first[0])
    run_cli("deid", tmp_path / "pulled" / str(a.StudyInstanceUID) / str(a.SeriesInstanceUID), "-o", tmp_path / "deid", check=True)
    stored = run_cli("pacs", "push", research.url, tmp_path / "deid", *research.auth, check=True)
    assert len(stored.stdout.split()) == 6
    found = [json.loads(line) for line in run_cli("pacs", "query", research.url, "--json", *research.auth, check=True).stdout.splitlines()]
    assert len(found) == 1 and found[0]["patient_id"] != "P001" and found[0]["study_uid"] != str(a.StudyInstanceUID)
    run_cli("pacs", "pull", research.url, "--study-uid", found[0]["study_uid"], "-o", tmp_path / "research", *research.auth, check=True)
    research_copies = [pydicom.dcmread(p) for p in sorted((tmp_path / "research").rglob("*.dcm"))]
    assert len(research_copies) == 6
    originals = {int(ds.InstanceNumber): ds for ds in by_sop(first).values()}
    for ds in research_copies:
        source = originals[int(ds.InstanceNumber)]
        assert np.array_equal(ds.pixel_array, source.pixel_array)
        for keyword, value in PHI.items():
            assert str(ds.get(keyword, "")) != value, keyword
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert ds.get(keyword) != source.get(keyword), keyword


@needs_orthanc
def test_resume_after_an_interrupted_pull_fetches_the_rest_once(pacs, tmp_path: Path, monkeypatch) -> None:
    """A pull stopped while writing its 4th instance leaves 3 complete files and no partial one;
    the rerun fetches the other 9 (the series streamed), and a lost file alone comes back by itself."""
    import pydicom as pydicom_module

    from medtools.core.context import RunContext, use
    from medtools.pacs.client import Connection
    from medtools.pacs.pull import pull_job
    from medtools.pacs.push import push_job

    clinical = pacs["clinical"]
    files = write_series(tmp_path / "src", slices=12, size=64, phi={**PHI, "PatientID": "P-RESUME"}, seed=2)
    conn = Connection(url=clinical.url, user=clinical.user, password=clinical.password)
    with use(RunContext(quiet=True)):
        assert push_job(conn, [str(tmp_path / "src")]) == 0
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    real_write = pydicom_module.dcmwrite
    calls = {"n": 0}

    def interrupted(target, ds, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            target.write(b"\0" * 200)  # half a file, then the signal
            raise KeyboardInterrupt
        return real_write(target, ds, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(pydicom_module, "dcmwrite", interrupted)
    with use(RunContext(quiet=True)), pytest.raises(KeyboardInterrupt):
        pull_job(conn, [], output=out, study_uid=study, workers=1)
    monkeypatch.setattr(pydicom_module, "dcmwrite", real_write)
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == 3 and all(p.suffix == ".dcm" for p in written)
    assert all(pydicom.dcmread(p).pixel_array.shape == (64, 64) for p in written)

    def pull_json() -> dict:
        import contextlib
        import io

        buffer = io.StringIO()
        with use(RunContext(quiet=True, json=True)), contextlib.redirect_stdout(buffer):
            assert pull_job(conn, [], output=out, study_uid=study, workers=1) == 0
        return json.loads(buffer.getvalue()) if buffer.getvalue() else {}

    assert pull_json()["fetched"] == 9
    assert len(list(out.rglob("*.dcm"))) == 12 and pull_json() == {}  # complete: nothing fetched
    written[1].unlink()
    assert pull_json()["fetched"] == 1  # one instance, fetched by itself
    assert by_sop(out.rglob("*.dcm")).keys() == by_sop(files).keys()


@needs_orthanc
def test_wrong_password_is_exit_4_and_a_stopped_pacs_exit_6(pacs, tmp_path: Path) -> None:
    clinical = pacs["clinical"]
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    proc = run_cli("pacs", "pull", clinical.url, "1.2.3", "-o", tmp_path / "out", "--user", "alice", "--password-file", wrong)
    assert proc.returncode == 4 and "HTTP 401" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    proc = run_cli("pacs", "query", clinical.url, env={"MEDTOOLS_PACS_USER": "alice", "MEDTOOLS_PACS_PASSWORD": "nope"})
    assert proc.returncode == 4

    stopped = Orthanc(pacs["root"] / "stopped", "stopped", "carol", "carol-secret")
    stopped.stop(kill=True)  # the PACS went down
    write_series(tmp_path / "src", slices=2)
    proc = run_cli("pacs", "push", stopped.url, tmp_path / "src", "--retries", "1", "--timeout", "2", env={"MEDTOOLS_PACS_USER": "carol", "MEDTOOLS_PACS_PASSWORD": "carol-secret"})
    assert proc.returncode == 6 and "does not answer" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@needs_orthanc
def test_push_reports_each_bad_file_and_stores_the_rest(pacs, tmp_path: Path) -> None:
    clinical = pacs["clinical"]
    write_series(tmp_path / "src", slices=3, phi={**PHI, "PatientID": "P-MIXED"})
    (tmp_path / "src" / "broken.dcm").write_bytes(b"not dicom at all")
    proc = run_cli("pacs", "push", clinical.url, tmp_path / "src", "--json", *clinical.auth)
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 3 and {r["status"] for r in records} == {"stored"}
    assert "broken.dcm" in proc.stderr


@needs_orthanc
def test_api_round_trip_in_memory(pacs, tmp_path: Path) -> None:
    from medtools import api

    clinical = pacs["clinical"]
    auth = {"user": clinical.user, "password": clinical.password}
    datasets = [pydicom.dcmread(p) for p in write_series(tmp_path / "src", slices=3, phi={**PHI, "PatientID": "P-API"}, seed=3)]
    results = api.pacs_push(clinical.url, datasets, batch_size=2, **auth)
    assert [r["status"] for r in results] == ["stored"] * 3
    rows = api.pacs_query(clinical.url, patient_id="P-API", **auth)
    assert len(rows) == 1 and rows[0]["instances"] == 3
    got = api.pacs_pull(clinical.url, rows[0]["study_uid"], series_uid=rows[0]["series_uid"], **auth)
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    from medtools.core.errors import IntegrityError

    with pytest.raises(IntegrityError):
        api.pacs_query(clinical.url, user=clinical.user, password="wrong")


@needs_orthanc
def test_segment_dicom_seg_goes_back_under_the_same_study(pacs, tmp_path: Path) -> None:
    """pull → segment --format dicom-seg → push: the PACS lists the SEG in the source study."""
    pytest.importorskip("highdicom")
    from medtools.core import ckpt

    clinical = pacs["clinical"]
    files = write_series(tmp_path / "src", slices=6, size=32, phi={**PHI, "PatientID": "P-SEG"}, seed=4)
    source = pydicom.dcmread(files[0])
    run_cli("pacs", "push", clinical.url, tmp_path / "src", *clinical.auth, check=True)
    run_cli("pacs", "pull", clinical.url, "--study-uid", source.StudyInstanceUID, "-o", tmp_path / "pulled", *clinical.auth, check=True)
    config = {"arch": "unet", "encoder": "resnet18", "in_channels": 1, "classes": 2, "modalities": ["t1"], "image_size": 32, "label_values": [0, 1]}
    ckpt.save(tmp_path / "seg.safetensors", ckpt.new_model("seg", config).state_dict(), kind="seg", config=config, norm={"method": "percentile", "low": 0.5, "high": 99.5})
    seg = run_cli("segment", tmp_path / "pulled", "-m", tmp_path / "seg.safetensors", "-o", tmp_path / "seg", "--format", "dicom-seg", check=True)
    seg_file = Path(seg.stdout.split()[0])
    run_cli("pacs", "push", clinical.url, seg_file, *clinical.auth, check=True)
    rows = [json.loads(line) for line in run_cli("pacs", "query", clinical.url, "--study-uid", source.StudyInstanceUID, "--json", *clinical.auth, check=True).stdout.splitlines()]
    assert sorted(r["modality"] for r in rows) == ["MR", "SEG"]
    written = pydicom.dcmread(seg_file)
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
