"""Membership inference catches memorisation: a DDPM overfit on 8 phantom chest X-rays.

The overfit model is the tiny UNet (widths 16/32) at 16×16: memorising 8 phantoms takes
~800 full-batch steps, which at 32×32 would cost most of the family's test budget.
"""

from __future__ import annotations

import json

import pytest

import numpy as np
import shutil
from pathlib import Path

from conftest import run_cli


def _split(root: Path, members: Path, nonmembers: Path) -> None:
    """Per class, the first half of the patients are members, the rest fresh (other patients)."""
    members.mkdir()
    nonmembers.mkdir()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        for i, path in enumerate(files):
            shutil.copy(path, (members if i < len(files) // 2 else nonmembers) / path.name)


def test_mia_catches_a_model_overfit_on_8_images(tmp_path):
    from medtools.phantom.generate import write_cxr_phantoms

    write_cxr_phantoms(tmp_path / "ph", n=16, patients=16, size=16, seed=3)
    members, fresh = tmp_path / "members", tmp_path / "fresh"
    _split(tmp_path / "ph", members, fresh)
    assert len(list(members.iterdir())) == 8 and len(list(fresh.iterdir())) == 8
    model = tmp_path / "overfit.safetensors"
    run_cli(
        "synth-train", members, "-o", model, "--size", "16", "--widths", "16,32", "--attention", "", "--layers-per-block", "1",
        "--batch-size", "8", "--epochs", "4", "--steps-per-epoch", "200", "--lr", "3e-3", "--ema-decay", "0", "-q", check=True,
    )
    proc = run_cli("mia", "-m", model, "--members", members, "--nonmembers", fresh, "--attacks", "loss,secmi", "--timesteps", "10,20,50", "--roc", tmp_path / "roc.png", "--json", "-q", check=True)
    result = json.loads(proc.stdout)
    assert result["members"] == {"images": 8, "patients": 8} and result["nonmembers"] == {"images": 8, "patients": 8}
    assert result["attacks"]["loss"]["auc"] > 0.8, result["attacks"]
    assert (tmp_path / "roc.png").stat().st_size > 1000
    rows = (tmp_path / "roc.csv").read_text().splitlines()
    assert rows[0] == "attack,fpr,tpr,threshold" and {r.split(",")[0] for r in rows[1:]} == {"loss", "secmi"}
    for attack in ("loss", "secmi"):  # the written curve is the one the AUC was computed on
        curve = np.array([[float(v) for v in r.split(",")[1:3]] for r in rows[1:] if r.startswith(attack + ",")])
        assert np.trapezoid(curve[:, 1], curve[:, 0]) == pytest.approx(result["attacks"][attack]["auc"], abs=1e-9)
