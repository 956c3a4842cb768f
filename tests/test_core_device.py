"""core.device: one parser for --device/--precision; explicit CUDA without CUDA is exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medtools.core.device import validate_device
from medtools.core.errors import UsageError

# A real Typer command through the shared wrapper, as every family's commands use it.
APP = textwrap.dedent(
    """
    import typer
    from medtools.cliutil import Device, Precision, command

    app = typer.Typer()

    @app.command()
    @command
    def run(device: Device = None, precision: Precision = None) -> int:
        from medtools.core.device import resolve_device, resolve_precision

        chosen = resolve_device(device)
        print(chosen, resolve_precision(precision, chosen))
        return 0

    app()
    """
)


def run_app(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "app.py"
    script.write_text(APP)
    full_env = {k: v for k, v in os.environ.items() if k != "MEDTOOLS_DEVICE"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:1", " CUDA:0 ", "mps"])
def test_valid_device_strings(spec: str) -> None:
    assert validate_device(spec) == spec.strip().lower()


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu0", "tpu", "cuda:0:1"])
def test_bad_device_strings_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="--device must be"):
        validate_device(spec)


def test_env_sets_the_default_device(monkeypatch) -> None:
    monkeypatch.setenv("MEDTOOLS_DEVICE", "cpu")
    assert validate_device(None) == "cpu"
    assert validate_device("auto") == "auto"  # an explicit flag wins
    monkeypatch.delenv("MEDTOOLS_DEVICE")
    assert validate_device(None) == "auto"


def test_resolve_device_and_precision_on_this_machine(capsys) -> None:
    torch = pytest.importorskip("torch")
    from medtools.core.device import resolve_device, resolve_precision

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UsageError):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(UsageError):
        resolve_precision("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")
        capsys.readouterr()
        assert resolve_device("auto") == torch.device("cpu")
        captured = capsys.readouterr()  # auto falls back with one line on stderr, nothing on stdout
        assert captured.out == "" and captured.err.strip().splitlines() == ["note: no CUDA device found, running on CPU"]


def test_cli_bad_device_string_exits_2(tmp_path: Path) -> None:
    proc = run_app(tmp_path, "--device", "gpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --device must be auto, cpu, cuda or cuda:N, got 'gpu'"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    proc = run_app(tmp_path, env={"MEDTOOLS_DEVICE": "quantum"})
    assert proc.returncode == 2 and "quantum" in proc.stderr


def test_cli_cuda_on_a_machine_without_cuda_exits_2(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_app(tmp_path, "--device", "cuda:0")
    assert proc.returncode == 2, proc.stderr
    assert "CUDA is not available" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
