"""Shared fixtures: the CLI runner, small phantoms made once per session, shared data paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP in this process

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MEDTOOLS = [sys.executable, "-m", "medtools"]

# A toy model kind, registered the way a family's models.py registers its kinds (torch-free
# data: the builder is a "module:function" string). The core tests build checkpoints of it.
from medtools.core.registry import register_kind  # noqa: E402

register_kind("test", family="tests", builder="torch.nn:Linear", builder_keys=("in_features", "out_features"), description="toy kind of the tests", task="none", channels_key=None)


def default_signals() -> None:
    """``preexec_fn`` of a child a test sends signals to: default handling of SIGINT, SIGTERM and
    SIGHUP, whatever this process inherited (``make test &`` leaves SIGINT ignored, and an
    ignored signal stays ignored in the child: medtools keeps it so, by design)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run `medtools ARGS` in a subprocess (CPU, quiet environment); returns the completed process."""
    # passive OpenMP waiting: spinning threads of parallel test processes starve each other on 2 cores
    full_env = {**os.environ, "MEDTOOLS_DEVICE": "cpu", "PYTHONHASHSEED": "0", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    proc = subprocess.run([*MEDTOOLS, *map(str, args)], input=input, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"medtools {' '.join(map(str, args))} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def brain_phantom(tmp_path_factory) -> Path:
    """4 patients × 2 visits, 64×64×12, all modalities + labels."""
    from medtools.phantom.generate import write_brain_phantoms

    root = tmp_path_factory.mktemp("brain")
    write_brain_phantoms(root, patients=4, visits=2, size=64, slices=12, seed=0)
    return root


@pytest.fixture(scope="session")
def cxr_phantom(tmp_path_factory) -> Path:
    from medtools.phantom.generate import write_cxr_phantoms

    root = tmp_path_factory.mktemp("cxr")
    write_cxr_phantoms(root, n=24, patients=12, size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# The modules that train models, start servers or run whole CLI pipelines: `slow`, so that
# `make test-fast` (-m "not slow", one process) stays a few minutes; `make test` runs them all.
SLOW_MODULES = {
    "test_api", "test_brain", "test_brain_defences", "test_brain_inmemory", "test_ckpt_ids", "test_cli_foundation", "test_cls",
    "test_collab", "test_contract", "test_core_train", "test_ddp", "test_examples", "test_explain", "test_faults", "test_fl", "test_geometry",
    "test_index", "test_model_contract", "test_page", "test_pacs", "test_protect_objectives", "test_repro", "test_secure_deid_pixels",
    "test_seg_recipe", "test_seg_robust", "test_serve", "test_synth_cli", "test_synth_cond", "test_synth_mia", "test_tstr",
    "test_fl_attack",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
