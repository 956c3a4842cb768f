"""medtools.api: docs/api.md's session runs as written; the API and the CLI agree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """The doc's shell prelude, run as written (the venv's medtools first on PATH)."""
    work = tmp_path_factory.mktemp("api-session")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in "".join(blocks("sh")).splitlines():
        if line.strip():
            subprocess.run(line, shell=True, cwd=work, env=env, check=True, timeout=600)
    return work


def test_the_documented_session_runs(session, capsys, monkeypatch) -> None:
    monkeypatch.chdir(session)
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "refused: wrong password" in out or "refused:" in out
    assert "non-finite" in out  # the default NaN policy refused the broken volume
    assert "with nan_policy=zero:" in out


def test_api_segment_equals_the_cli(session, tmp_path) -> None:
    """The in-memory function and `medtools segment` give the same label map."""
    from medtools import api
    from medtools.api import read_image

    case = session / "brain" / "phantom-p002_v1" / "phantom-p002_v1"
    images = [read_image(f"{case}_{m}.nii.gz") for m in ("flair", "t1ce")]
    label = api.segment(images, session / "seg.safetensors")
    subprocess.run([sys.executable, "-m", "medtools", "segment", str(case.parent), "-m", str(session / "seg.safetensors"), "-o", str(tmp_path), "-q"], check=True, timeout=300)
    written = read_image(next(tmp_path.rglob("*_seg.nii.gz")))
    assert (written.array == label.array).all()


def test_api_errors_are_the_typed_errors(session) -> None:
    from medtools import api
    from medtools.core.errors import CheckpointError, InputError, IntegrityError

    case = session / "brain" / "phantom-p001_v1" / "phantom-p001_v1"
    flair = api.read_image(f"{case}_flair.nii.gz")
    with pytest.raises(InputError, match="expects 2 modalities"):
        api.segment([flair], session / "seg.safetensors")
    with pytest.raises(CheckpointError):
        api.segment([flair, flair], session / "reid.safetensors")  # a reid checkpoint is not a seg model
    sealed = api.encrypt_bytes(b"x" * 1000, key=b"k" * 32)
    tampered = bytearray(sealed)
    tampered[-5] ^= 1
    with pytest.raises(IntegrityError):
        api.decrypt_bytes(bytes(tampered), key=b"k" * 32)
    assert api.decrypt_bytes(sealed, key=b"k" * 32) == b"x" * 1000
