"""The command-line contract through real `medtools` processes: help, lazy imports, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MEDTOOLS, ROOT, default_signals, run_cli


def write_checkpoint(path: Path, kind: str = "test") -> Path:
    """A medtools checkpoint written with safetensors' numpy API (no torch needed)."""
    from safetensors.numpy import save_file

    metadata = {"medtools.kind": kind, "medtools.version": "0.1.0", "medtools.config": json.dumps({"in_features": 2, "out_features": 1}), "medtools.norm": "{}", "medtools.seed": "4"}
    save_file({"weight": np.ones((1, 2), np.float32), "bias": np.zeros(1, np.float32)}, str(path), metadata=metadata)
    return path


def no_traceback(proc: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in proc.stderr


def test_help_lists_the_foundation_commands_quickly() -> None:
    started = time.perf_counter()
    proc = run_cli("--help")
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0
    for name in ("phantom", "manifest", "convert", "info"):
        assert name in proc.stdout
    assert elapsed < 10  # generous for a loaded CI box; the import check below is the strict one
    assert run_cli("phantom", "brain", "--help").returncode == 0
    assert run_cli("--version").stdout.startswith("medtools ")


def test_import_cli_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, medtools.cli, typer.main; typer.main.get_command(medtools.cli.app); "
        "print(' '.join(m for m in ('torch', 'numpy', 'nibabel', 'scipy', 'PIL', 'pydicom', 'timm', 'diffusers', 'segmentation_models_pytorch') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at CLI start-up: {proc.stdout.strip()}"


def test_exit_0_paths_on_stdout_logs_on_stderr_and_q_silences(tmp_path: Path) -> None:
    proc = run_cli("phantom", "cxr", "-n", "4", "--size", "16", "-o", tmp_path / "cxr")
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.splitlines()
    assert len(paths) == 4 and all(Path(p).is_file() for p in paths)
    assert "wrote 4 images" in proc.stderr
    proc = run_cli("convert", tmp_path / "cxr", "-o", tmp_path / "npy", "--to", "npy", "-q")
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 4


def test_exit_1_some_items_failed_the_others_written(tmp_path: Path) -> None:
    written = run_cli("phantom", "cxr", "-n", "2", "--size", "16", "-o", tmp_path / "in", check=True).stdout.split()
    broken = Path(written[0]).with_name("broken.png")
    broken.write_bytes(b"not a png")
    proc = run_cli("convert", tmp_path / "in", "-o", tmp_path / "out", "--to", "npy")
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 2
    assert f"{broken}: " in proc.stderr and no_traceback(proc)
    assert not list((tmp_path / "out").rglob("broken*"))


@pytest.mark.parametrize(
    "args",
    [
        ("convert", "{png}"),  # missing -o
        ("convert", "{png}", "-o", "{out}", "--to", "jpeg"),  # unknown --to
        ("convert", "{png}", "-o", "{out}", "--to", "png", "--axis", "7"),
        ("convert", "{png}", "-o", "{out}", "--shard", "3/2"),
        ("convert", "{png}", "-o", "{out}", "--bogus-flag"),
        ("phantom", "brain", "-n", "1"),  # missing -o
        ("phantom", "cxr", "-n", "0", "-o", "{out}"),  # below the minimum
        ("phantom", "cxr", "-n", "1", "-o", "{png}"),  # -o is a file
        ("info",),  # missing input
        ("nonsense-command",),
    ],
)
def test_exit_2_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(b"")
    mapping = {"{png}": str(png), "{out}": str(tmp_path / "out")}
    proc = run_cli(*[mapping.get(a, a) for a in args])
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert no_traceback(proc) and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_exit_2_output_equal_to_input_is_refused_and_input_untouched(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "a.npy", data)
    before = (tmp_path / "a.npy").read_bytes()
    proc = run_cli("convert", tmp_path / "a.npy", "-o", tmp_path / "a.npy", "--to", "npy")
    assert proc.returncode == 2 and "overwrite the input" in proc.stderr
    proc = run_cli("convert", tmp_path, "-o", tmp_path, "--to", "npy", "--overwrite")
    assert proc.returncode == 2
    assert (tmp_path / "a.npy").read_bytes() == before


def test_exit_3_checkpoint_problems_through_info(tmp_path: Path) -> None:
    good = write_checkpoint(tmp_path / "good.safetensors")
    proc = run_cli("info", "--json", good)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["kind"] == "test" and record["config"] == {"in_features": 2, "out_features": 1} and len(record["sha256"]) == 64

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-3])
    proc = run_cli("info", truncated)
    assert proc.returncode == 3 and "truncated" in proc.stderr and no_traceback(proc)

    proc = run_cli("info", "--kind", "seg", good)
    assert proc.returncode == 3 and "expected a seg checkpoint" in proc.stderr
    assert run_cli("info", "--kind", "test", good).returncode == 0
    assert run_cli("info", truncated, good).returncode == 1  # one bad among good ones


def test_exit_5_no_usable_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("convert", tmp_path / "empty", "-o", tmp_path / "out")
    assert proc.returncode == 5 and "no supported input" in proc.stderr
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    proc = run_cli("convert", tmp_path / "junk.nii.gz", "-o", tmp_path / "out")
    assert proc.returncode == 5 and "junk.nii.gz" in proc.stderr and no_traceback(proc)
    assert run_cli("info", tmp_path / "missing.png").returncode == 5
    assert run_cli("manifest", tmp_path / "empty").returncode == 5


def test_exit_130_on_ctrl_c_leaves_no_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "brain"
    # 1,200 files: long enough that even a test process starved by a loaded machine interrupts it
    proc = subprocess.Popen(
        [*MEDTOOLS, "phantom", "brain", "-n", "120", "--size", "160", "--slices", "40", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=default_signals,
    )
    first = proc.stdout.readline()  # a path is printed as soon as its file is written
    assert first.strip().endswith(".nii.gz")
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=600)  # a loaded CI machine may take long to reach the next bytecode
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    leftovers = [p.name for p in out.rglob("*") if p.is_file() and (".part" in p.name or p.name.startswith("."))]
    assert leftovers == []
    written = sorted(str(p) for p in out.rglob("*.nii.gz"))
    assert written == sorted([first.strip(), *rest.split()])  # every file on disk was reported, and only those


def test_broken_pipe_stops_quietly(tmp_path: Path) -> None:
    run_cli("phantom", "cxr", "-n", "6", "--size", "16", "-o", tmp_path / "in", check=True)
    command = " ".join([*MEDTOOLS, "convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--to", "npy"])
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", f"{command} | head -n 1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr
