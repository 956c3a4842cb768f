"""completions/: generated from the live Typer app; stale files fail (run `make completions`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

COMMITTED = ROOT / "completions"
NAMES = ("medtools.bash", "_medtools", "medtools.fish")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("completions")
    proc = subprocess.run([sys.executable, "-m", "medtools.completions", str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted(str(folder / n) for n in NAMES)
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_committed_completions_match_the_live_app(generated: Path, name: str) -> None:
    fresh = (generated / name).read_text()
    committed = (COMMITTED / name).read_text() if (COMMITTED / name).is_file() else ""
    assert committed == fresh, f"completions/{name} is stale: run `make completions` and commit it"


def test_tree_covers_every_command_and_option() -> None:
    import typer.main

    from medtools.cli import app
    from medtools.completions import command_tree

    tree = command_tree()
    root = typer.main.get_command(app)
    assert tree["_"] == sorted(root.commands)
    assert {"manifest", "convert", "info", "phantom"} <= set(tree["_"])
    assert tree["phantom"] == ["brain", "cxr"]
    assert {"--output", "--to", "--axis", "--shard", "--overwrite", "--help"} <= set(tree["convert"])
    assert {"--patients", "--visits", "--size", "--slices", "--seed"} <= set(tree["phantom brain"])


def test_bash_script_completes(generated: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = f"""
    source {generated / 'medtools.bash'}
    COMP_WORDS=(medtools con); COMP_CWORD=1; _medtools; echo "${{COMPREPLY[*]}}"
    COMP_WORDS=(medtools phantom brain --sl); COMP_CWORD=3; _medtools; echo "${{COMPREPLY[*]}}"
    COMP_WORDS=(medtools convert in -o out --t); COMP_CWORD=5; _medtools; echo "${{COMPREPLY[*]}}"
    """
    proc = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["convert", "--slices", "--to"]
