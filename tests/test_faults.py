"""The command-line contract under faults (issue 12): one test per row of its table.

Inputs are never overwritten or re-read as inputs, signals leave no partial file (and no
plaintext), the key store loses no concurrent update, non-finite voxels are an item
error, external tool output is one line, and every written path is printed as soon as
its file is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import MEDTOOLS, default_signals, run_cli
from medtools.core.io.atomic import part_name

ENV = {**os.environ, "MEDTOOLS_DEVICE": "cpu", "PYTHONHASHSEED": "0"}


def _parts(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<stem>.<token>.part<ext>``) anywhere below ``folder``."""
    return [p for p in folder.rglob("*") if ".part" in p.name]


def _popen(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*MEDTOOLS, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, **kwargs.pop("env", {})}, preexec_fn=default_signals, **kwargs)


def _interrupt(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` while the child is stopped, so it lands mid-write however long this
    (possibly starved) test process took since it saw the write start: SIGSTOP, the signal,
    SIGCONT; the pending signal is handled as soon as the child runs again."""
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)


def _writing_into(pid: int, folder: Path, timeout: float = 120.0) -> bool:
    """Wait until process ``pid`` holds a file open below ``folder`` (a write is under way)."""
    folder = str(folder.resolve())
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder + "/"):
                        return True
                except OSError:
                    continue
        except FileNotFoundError:
            return False
        time.sleep(0.005)
    return False


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny BraTS phantom, a segmenter and a re-identification attacker (seconds of training)."""
    work = tmp_path_factory.mktemp("faults")
    run_cli("phantom", "brain", "-o", work / "cases", "-n", "2", "--visits", "2", "--size", "32", "--slices", "4", "-q", check=True)
    tiny = ["--size", "32", "--epochs", "1", "--steps-per-epoch", "1", "-b", "2", "--modalities", "flair", "-q"]
    run_cli("seg-train", work / "cases", "-o", work / "seg.safetensors", "--encoder", "resnet18", *tiny, check=True)
    run_cli("reid-train", work / "cases", "-o", work / "reid.safetensors", *tiny, check=True)
    return work


def _copy_cases(models: Path, dest: Path) -> Path:
    shutil.copytree(models / "cases", dest)
    return dest


def _nan_volume(path: Path, bad: int = 3) -> Path:
    array = np.random.default_rng(0).normal(100, 20, (32, 32, 4)).astype(np.float32)
    array.flat[:bad] = [np.nan, np.inf, -np.inf][:bad]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


# ------------------------------------------------------------------ rows 1, 2: labels are inputs


def test_row1_segment_into_the_input_folder_with_overwrite_is_refused(models, tmp_path):
    cases = _copy_cases(models, tmp_path / "cases")
    labels = {p: p.read_bytes() for p in cases.rglob("*_seg.nii.gz")}
    proc = run_cli("segment", cases, "-m", models / "seg.safetensors", "-o", cases, "--overwrite")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert all(p.read_bytes() == data for p, data in labels.items())  # ground truth untouched


def test_row2_segment_into_the_input_folder_is_refused_not_silently_skipped(models, tmp_path):
    cases = _copy_cases(models, tmp_path / "cases")
    proc = run_cli("segment", cases, "-m", models / "seg.safetensors", "-o", cases)
    assert proc.returncode == 2 and "input" in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------ row 3: key-store lock


def test_row3_concurrent_add_user_loses_no_update(tmp_path):
    store = tmp_path / "store.json"
    run_cli("keys", "init", store, "--scrypt-log-n", "10", check=True)
    env = {"MEDTOOLS_PASSWORD": "pw"}
    procs = [_popen("keys", "add-user", store, f"doctor{i}", "-q", env=env) for i in range(8)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    users = run_cli("keys", "list", store, check=True).stdout.split()
    assert sorted(users) == [f"doctor{i}" for i in range(8)]


# ------------------------------------------------------------------ rows 4, 5: signals in decrypt/encrypt


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """96 MB of data, its key file and its ciphertext in small chunks (slow enough to interrupt)."""
    work = tmp_path_factory.mktemp("big")
    (work / "plain").mkdir()
    data = work / "plain" / "scan.raw"
    with open(data, "wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(96):
            handle.write(block)
    run_cli("keys", "gen-key", work / "k.key", check=True)
    run_cli("encrypt", data, "-o", work / "scan.raw.mte", "--key", work / "k.key", "--chunk-size", "4096", check=True)
    return work


def test_row4_sigterm_during_decrypt_leaves_no_plaintext(big, tmp_path):
    out = tmp_path / "dec"
    out.mkdir()
    proc = _popen("decrypt", big / "scan.raw.mte", "-o", out / "scan.raw", "--key", big / "k.key")
    assert _writing_into(proc.pid, out), "decrypt never started writing"
    _interrupt(proc, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert list(out.iterdir()) == []  # not a byte of plaintext under any name


def test_row5_sigterm_during_encrypt_leaves_nothing_and_a_rerun_cleans_stale_parts(big, tmp_path):
    out = tmp_path / "enc"
    out.mkdir()
    proc = _popen("encrypt", big / "plain", "-o", out, "--key", big / "k.key", "--chunk-size", "4096")
    assert _writing_into(proc.pid, out), "encrypt never started writing"
    _interrupt(proc, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143 and _parts(out) == []
    # a run killed without a chance to clean (SIGKILL) leaves its temp file; the next run removes it
    stale = part_name(out / "scan.raw.mte")
    stale.write_bytes(b"partial ciphertext")
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("hello")
    run_cli("encrypt", small, "-o", out, "--key", big / "k.key", check=True)
    assert not stale.exists() and (out / "a.txt.mte").exists()


# ------------------------------------------------------------------ rows 6-8: signals in a segment batch


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_rows6_8_signals_in_a_segment_batch_leave_no_temp_files(models, tmp_path, signum):
    source = sorted((models / "cases").iterdir())[0]
    cases = tmp_path / "many"
    for i in range(60):  # enough cases (BraTS layout: <case>/<case>_<modality>) that the signal lands mid-batch
        (cases / f"c{i:02d}").mkdir(parents=True)
        for path in source.iterdir():
            shutil.copy(path, cases / f"c{i:02d}" / f"c{i:02d}{path.name[len(source.name):]}")
    out = tmp_path / "pred"
    stale = part_name(out / "c00" / "c00_seg.nii.gz")  # left by an earlier run that was killed (SIGKILL)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    proc = _popen("segment", cases, "-m", models / "seg.safetensors", "-o", out, "--workers", "0", "-b", "1")
    first = proc.stdout.readline()  # the first case is in place: the batch is running
    assert first, proc.stderr.read().decode()
    _interrupt(proc, signum)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert _parts(out) == []  # neither this run's temp file nor the stale one of the earlier run
    printed = [first.decode().strip(), *rest.decode().split()]
    written = sorted(str(p) for p in out.rglob("*.nii.gz"))
    assert sorted(printed) == written  # everything in place was printed, nothing else


# ------------------------------------------------------------------ rows 9-11: non-finite voxels


def test_row9_nan_voxels_are_an_item_error_in_segment(models, tmp_path):
    volume = _nan_volume(tmp_path / "in" / "scan.nii.gz", bad=3)
    proc = run_cli("segment", volume, "-m", models / "seg.safetensors", "-o", tmp_path / "out")
    assert proc.returncode == 5 and "3 non-finite" in proc.stderr and "scan.nii.gz" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))
    ok = run_cli("segment", volume, "-m", models / "seg.safetensors", "-o", tmp_path / "out", "--nan-policy", "zero", check=True)
    assert Path(ok.stdout.strip()).exists()


def test_row10_nan_voxels_are_an_item_error_in_protect(models, tmp_path):
    volume = _nan_volume(tmp_path / "in" / "scan.nii.gz", bad=2)
    proc = run_cli("protect", volume, "-a", models / "reid.safetensors", "-o", tmp_path / "out", "--steps", "1")
    assert proc.returncode == 5 and "2 non-finite" in proc.stderr
    ok = run_cli("protect", volume, "-a", models / "reid.safetensors", "-o", tmp_path / "out", "--steps", "1", "--nan-policy", "clip", check=True)
    assert np.isfinite(nib.load(ok.stdout.strip()).get_fdata()).all()


def test_row11_nan_voxels_in_convert_and_info(tmp_path):
    volume = _nan_volume(tmp_path / "in" / "scan.nii.gz", bad=3)
    proc = run_cli("convert", volume, "-o", tmp_path / "png", "--to", "png")
    assert proc.returncode == 5 and "3 non-finite" in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    run_cli("convert", volume, "-o", tmp_path / "png", "--to", "png", "--nan-policy", "zero", check=True)
    sidecar = (tmp_path / "png" / "scan" / "volume.json").read_text()
    json.loads(sidecar, parse_constant=lambda name: pytest.fail(f"volume.json holds {name}"))
    info = json.loads(run_cli("info", volume, "--json", check=True).stdout)
    assert info["nonfinite"] == 3


# ------------------------------------------------------------------ rows 12, 13: outputs inside the inputs


def test_row12_output_inside_the_input_folder_is_never_reread(tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        _nan_volume(src / f"v{i}.nii.gz", bad=0)
    first = run_cli("convert", src, "-o", src / "out", "--to", "npy", check=True).stdout.split()
    assert len([p for p in first if p.endswith(".npy")]) == 3
    for _ in range(2):
        again = run_cli("convert", src, "-o", src / "out", "--to", "npy", check=True)
        assert again.stdout == ""  # nothing to do: the outputs are not inputs
    assert not (src / "out" / "out").exists()


def test_row13_encrypt_into_its_input_folder_is_refused(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("secret")
    run_cli("keys", "gen-key", tmp_path / "k.key", check=True)
    for _ in range(2):
        proc = run_cli("encrypt", folder, "-o", folder, "--key", tmp_path / "k.key")
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]


# ------------------------------------------------------------------ row 15: dcm2niix in one line


def test_row15_a_broken_dicom_series_is_one_line(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i}"
        ds.save_as(series / f"s{i}.dcm")
    for path in series.iterdir():  # cut the pixel data of every slice
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 4000])
    proc = run_cli("info", series)
    assert proc.returncode == 5
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    debug = run_cli("info", series, env={"MEDTOOLS_DEBUG": "1"})
    assert len(debug.stderr.strip().splitlines()) > 1  # the full dcm2niix text on request


# ------------------------------------------------------------------ row 16: paths printed as files land


def test_row16_files_written_before_an_interrupt_were_printed(tmp_path, monkeypatch, capsys):
    """protect writes a case's files, then evaluates the white-box attacker: a Ctrl-C there
    must not hide files that are already in place (they were printed as they landed)."""
    import typer

    from medtools.brain import commands
    from medtools.brain import protect as protect_module
    from medtools.core.io import Image, write_image

    volume = _nan_volume(tmp_path / "in" / "scan.nii.gz", bad=0)
    attacker = tmp_path / "reid.safetensors"
    attacker.write_bytes(b"only hashed by the run record")

    def interrupted_after_writing(cases, output, **kwargs):
        for case in cases:
            write_image(Image(np.zeros((4, 4, 2), np.uint8), affine=np.eye(4), format="nifti"), output / case.rel_dir / "scan.nii.gz")
            raise KeyboardInterrupt  # during the evaluation that follows the writes
        yield  # pragma: no cover

    monkeypatch.setattr(protect_module, "protect_cases", interrupted_after_writing)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(typer.Exit) as stopped:
            commands.protect(inputs=[str(volume)], attacker=[attacker], output=tmp_path / "out", quiet=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert stopped.value.exit_code == 130
    written = [str(p) for p in (tmp_path / "out").rglob("*.nii.gz")]
    assert len(written) == 1 and capsys.readouterr().out.split() == written


def test_segment_dicom_seg_resumes(models, tmp_path):
    """issue 11: --format dicom-seg skipped nothing on a rerun (the check looked for .nii.gz)."""
    pytest.importorskip("highdicom")
    from test_core_io import write_dicom_series

    series = write_dicom_series(tmp_path / "in" / "series")
    out = tmp_path / "seg"
    first = run_cli("segment", series, "-m", models / "seg.safetensors", "-o", out, "--format", "dicom-seg", check=True)
    assert [Path(p).suffix for p in first.stdout.split()] == [".dcm"]
    again = run_cli("segment", series, "-m", models / "seg.safetensors", "-o", out, "--format", "dicom-seg", check=True)
    assert again.stdout == "" and "skipped" in again.stderr


# ------------------------------------------------------------------ also seen


def test_private_key_material_open_to_others_is_refused(tmp_path):
    key = tmp_path / "k.key"
    run_cli("keys", "gen-key", key, check=True)
    store = tmp_path / "store.json"
    run_cli("keys", "init", store, "--scrypt-log-n", "10", check=True)
    (tmp_path / "a.txt").write_text("x")
    for path in (key, store):
        path.chmod(0o644)
    proc = run_cli("encrypt", tmp_path / "a.txt", "-o", tmp_path / "a.mte", "--key", key)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr
    listed = run_cli("keys", "list", store)
    assert listed.returncode == 2 and "chmod 600" in listed.stderr
    run_cli("encrypt", tmp_path / "a.txt", "-o", tmp_path / "a.mte", "--key", key, "--insecure-permissions", check=True)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # nothing was changed behind the user's back


def test_wrong_password_without_user_names_the_users_tried(tmp_path):
    store = tmp_path / "store.json"
    run_cli("keys", "init", store, "--scrypt-log-n", "10", check=True)
    run_cli("keys", "add-user", store, "alice", env={"MEDTOOLS_PASSWORD": "right"}, check=True)
    (tmp_path / "a.txt").write_text("x")
    run_cli("encrypt", tmp_path / "a.txt", "-o", tmp_path / "a.mte", "--to", store, check=True)
    proc = run_cli("decrypt", tmp_path / "a.mte", "-o", tmp_path / "a.txt.out", "--store", store, env={"MEDTOOLS_PASSWORD": "wrong"})
    assert proc.returncode == 4 and "wrong password" in proc.stderr and "tried users: alice" in proc.stderr and "tried: none" not in proc.stderr


def test_manifest_to_a_folder_path_is_refused(models, tmp_path):
    proc = run_cli("manifest", models / "cases", "-o", f"{tmp_path / 'newdir'}/")
    assert proc.returncode == 2 and not (tmp_path / "newdir").exists()


def test_deid_walks_a_folder_of_extensionless_dicom(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder = tmp_path / "pacs"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "MR.1.3.12.2.1107.5.2.1")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "IM0002")
    proc = run_cli("deid", folder, "-o", tmp_path / "out", check=True)
    written = proc.stdout.split()
    assert len(written) == 2
    assert all(pydicom.dcmread(p).PatientName == "" for p in written)


def test_import_cli_leaves_torch_out_and_core_knows_no_typer():
    code = "import sys, medtools.cli, medtools.core.io, medtools.core.inputs, medtools.core.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    core = Path(__file__).resolve().parents[1] / "medtools" / "core"
    assert not [p for p in core.rglob("*.py") if "import typer" in p.read_text()]
