"""The synthetic-data audit: tstr (train on synthetic, test on real) and nearest (copy detection)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from test_synth_cond import write_two_classes


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """Separable phantom classes (TOP/BOTTOM): real train, real test (other patients), and a 'synthetic' set."""
    root = tmp_path_factory.mktemp("tstr")
    out = {"train": write_two_classes(root / "train", 10, seed=0), "test": write_two_classes(root / "test", 10, seed=1)}
    synthetic = write_two_classes(root / "raw", 10, seed=2)
    for k, path in enumerate(sorted(synthetic.rglob("*.png"))):  # generated samples carry no patient: sample-XXXXXX names
        target = root / "synthetic" / path.parent.name / f"sample-{k:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    out["synthetic"] = root / "synthetic"
    return out


def test_tstr_on_separable_phantoms(sets, tmp_path):
    import torch

    from medtools.synth.tstr import run_tstr

    torch.set_num_threads(1)
    result = run_tstr(synthetic=[sets["synthetic"]], real_train=[sets["train"]], real_test=[sets["test"]], arch="test_resnet", size=16, steps=20, batch_size=8, lr=3e-3, bootstrap=200, keep=tmp_path / "keep", device="cpu")
    assert result["classes"] == ["BOTTOM", "TOP"] and result["positive"] == "TOP"
    assert result["sets"]["real_test"] == {"images": 20, "per_class": {"BOTTOM": 10, "TOP": 10}, "patients": 20}
    assert set(result["runs"]) == {"tstr", "trtr", "mixed"}
    for name, run in result["runs"].items():
        assert run["n"] == 20 and 0.0 <= run["ci95"]["auc"][0] <= run["auc"] <= run["ci95"]["auc"][1] <= 1.0, (name, run)
    assert result["runs"]["tstr"]["auc"] > 0.8, result["runs"]["tstr"]
    assert result["runs"]["mixed"]["train_images"] == 40
    assert (tmp_path / "keep" / "tstr.safetensors").is_file()
    gap = result["auc_gap_trtr_minus_tstr"]
    assert gap["difference"] == pytest.approx(result["runs"]["trtr"]["auc"] - result["runs"]["tstr"]["auc"])


def test_tstr_refuses_missing_class_in_synthetic(sets, tmp_path):
    from medtools.core.errors import InputError
    from medtools.synth.tstr import run_tstr

    only_top = tmp_path / "syn"
    shutil.copytree(sets["synthetic"] / "TOP", only_top / "TOP")
    shutil.copytree(sets["synthetic"] / "TOP", only_top / "LEFT")
    with pytest.raises(InputError, match="classes the real data lacks: LEFT"):
        run_tstr(synthetic=[only_top], real_train=[sets["train"]], real_test=[sets["test"]], arch="test_resnet", size=16, steps=1, device="cpu")


def _nearest_fixture(sets, tmp_path) -> tuple[Path, Path]:
    """Synthetic folder: the 'synthetic' set plus one exact copy of a training image."""
    synthetic = tmp_path / "synthetic"
    shutil.copytree(sets["synthetic"], synthetic)
    planted = sorted((sets["train"] / "TOP").glob("*.png"))[3]
    shutil.copy(planted, synthetic / "TOP" / "sample-999999.png")
    return synthetic, planted


def test_nearest_flags_a_planted_copy(sets, tmp_path):
    import torch

    from medtools.core import ckpt
    from medtools.nets.classifier import build_classifier
    from medtools.synth.nearest import run_nearest

    synthetic, planted = _nearest_fixture(sets, tmp_path)
    torch.manual_seed(0)
    config = {"arch": "test_resnet", "in_channels": 1, "num_classes": 2, "image_size": 16}
    features = ckpt.save(tmp_path / "f.safetensors", build_classifier(arch="test_resnet").state_dict(), kind="reid", config=config, norm={"method": "unit"})
    result = run_nearest(synthetic=[synthetic], train=[sets["train"]], held_out=[sets["test"]], model=features, top=4, device="cpu")
    for space in ("pixel", "features"):
        closest = result[space]["closest"][0]
        assert closest["synthetic"].endswith("sample-999999.png") and Path(closest["train"]).name == planted.name
        assert closest["distance"] == pytest.approx(0.0, abs=1e-6) and closest["flagged"]
        assert result[space]["copies"] >= 1
    pixel = result["pixel"]
    assert pixel["held_out_to_train"]["p0"] > 0.0 and pixel["synthetic_to_train"]["p0"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= pixel["copy_rate_held_out"] <= 1.0 and pixel["copy_rate"] == pytest.approx(pixel["copies"] / 21)
    # without held-out images the reference is the nearest training image of another patient
    alone = run_nearest(synthetic=[synthetic], train=[sets["train"]], top=2)
    assert alone["pixel"]["reference"] == "train, other patients" and alone["pixel"]["closest"][0]["flagged"]


def test_cli_nearest_grid_and_tstr_patient_overlap(sets, tmp_path):
    """One CLI pipeline: nearest --grid --json, then tstr refusing overlapping patients (exit 5)."""
    from medtools.core.io import read_image

    synthetic, _ = _nearest_fixture(sets, tmp_path)
    grid = tmp_path / "pairs.png"
    proc = run_cli("nearest", "--synthetic", synthetic, "--train", sets["train"], "--held-out", sets["test"], "--grid", grid, "--top", "3", "--json", "-q", check=True)
    doc = json.loads(proc.stdout)
    assert doc["pixel"]["closest"][0]["flagged"] and doc["images"] == {"synthetic": 21, "train": 20, "held_out": 20}
    assert read_image(grid).array.shape[:2] == (3 * 18 + 2, 2 * 16 + 6)
    overlap = run_cli("tstr", "--synthetic", synthetic, "--real-train", sets["train"], "--real-test", sets["train"], "--arch", "test_resnet", "--size", "16", "--steps", "1")
    assert overlap.returncode == 5, overlap.stderr
    assert "in both --real-train and --real-test" in overlap.stderr
