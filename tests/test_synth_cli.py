"""Synthesis family through the CLI: synth-train, synth, fid --features, mia, DP, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

TINY = ["--size", "32", "--widths", "16,32", "--attention", "", "--layers-per-block", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory, cxr_phantom) -> tuple[Path, dict]:
    """A tiny DDPM trained for 3 × 4 steps on the phantom chest X-rays (and its --json summary)."""
    out = tmp_path_factory.mktemp("ddpm") / "ddpm.safetensors"
    proc = run_cli("synth-train", cxr_phantom, "-o", out, *TINY, "--epochs", "3", "--steps-per-epoch", "4", "--lr", "2e-3", "--ema-decay", "0.9", "--json", "-q", check=True)
    return out, json.loads(proc.stdout)


def _classifier(path: Path) -> Path:
    import torch

    from medtools.nets.classifier import build_classifier
    from medtools.core import ckpt

    torch.manual_seed(0)
    net = build_classifier(arch="resnet18", in_channels=1, num_classes=2)
    config = {"arch": "resnet18", "in_channels": 1, "num_classes": 2, "image_size": 32}
    return ckpt.save(path, net.state_dict(), kind="reid", config=config, norm={"method": "unit"})


def test_training_lowers_loss_and_records_provenance(tiny_ddpm):
    from medtools.core import ckpt

    path, summary = tiny_ddpm
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    meta = ckpt.load(path, kind="ddpm", tensors=False)
    assert meta.config["block_out_channels"] == [16, 32] and meta.config["sample_size"] == 32
    assert meta.provenance["scheduler"]["num_train_timesteps"] == 1000
    assert meta.provenance["train_patients"] == 12 and meta.provenance["train_images"] == 24
    assert meta.norm["method"] == "unit"


def test_synth_is_deterministic_per_seed(tiny_ddpm, tmp_path):
    from medtools.core.io import read_image

    path, _ = tiny_ddpm
    args = ["synth", "-m", path, "--sampler", "ddim", "--steps", "4"]
    first = run_cli(*args, "-n", "3", "-o", tmp_path / "a", "--batch-size", "3", check=True)
    assert first.stdout.split() == [str(tmp_path / "a" / f"sample-00000{i}.png") for i in range(3)]
    # other batching, one image already there: only the missing ones are made, and they are the same
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "sample-000000.png", tmp_path / "b")
    resumed = run_cli(*args, "-n", "3", "-o", tmp_path / "b", "--batch-size", "2", check=True)
    assert resumed.stdout.split() == [str(tmp_path / "b" / f"sample-00000{i}.png") for i in (1, 2)]
    run_cli(*args, "-n", "1", "-o", tmp_path / "c", "--seed", "1", "-q", check=True)
    for i in range(3):
        a = read_image(tmp_path / "a" / f"sample-00000{i}.png").array
        b = read_image(tmp_path / "b" / f"sample-00000{i}.png").array
        assert a.dtype == np.uint8 and a.shape == (32, 32)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    other_seed = read_image(tmp_path / "c" / "sample-000000.png").array
    assert np.abs(read_image(tmp_path / "a" / "sample-000000.png").array.astype(int) - other_seed.astype(int)).mean() > 5


def test_synth_16_bit_dpm_solver(tiny_ddpm, tmp_path):
    from medtools.core.io import read_image

    path, _ = tiny_ddpm
    proc = run_cli("synth", "-m", path, "-n", "2", "-o", tmp_path, "--sampler", "dpm-solver", "--steps", "3", "--bits", "16", "--json", "-q", check=True)
    result = json.loads(proc.stdout)
    assert result["sampler"] == "dpm-solver" and len(result["files"]) == 2
    assert read_image(result["files"][0]).array.dtype == np.uint16


def test_fid_with_classifier_features(cxr_phantom, tmp_path):
    from PIL import Image

    ckpt_path = _classifier(tmp_path / "cls.safetensors")
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(noise / f"n{i:02d}.png")
    same = run_cli("fid", cxr_phantom, cxr_phantom, "--features", ckpt_path, "--kid", "--prc", "--json", "-q", check=True)
    result = json.loads(same.stdout)
    assert "fid" not in result["metrics"] and result["extractor"]["extractor"] == "medtools-reid-resnet18"
    assert result["metrics"]["fd_medtools"] == pytest.approx(0.0, abs=1e-6)
    assert result["metrics"]["precision"] == 1.0 and result["metrics"]["recall"] == 1.0
    far = run_cli("fid", cxr_phantom / "NORMAL", noise, "--features", ckpt_path, "--save-stats", tmp_path / "normal.npz", "-q", check=True)
    far_value = float(dict(row.split("\t") for row in far.stdout.strip().splitlines())["fd_medtools"])
    near = run_cli("fid", tmp_path / "normal.npz", cxr_phantom / "PNEUMONIA", "--features", ckpt_path, "-q", check=True)  # saved statistics as input
    near_value = float(near.stdout.split("\t")[1])
    assert far_value > 10 * near_value > 0


def test_fid_without_inception_weights_exits_3(cxr_phantom, tmp_path):
    proc = run_cli("fid", cxr_phantom, cxr_phantom, env={"TORCH_HOME": str(tmp_path), "MEDTOOLS_INCEPTION_WEIGHTS": ""})
    assert proc.returncode == 3
    assert str(tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in proc.stderr
    assert "--inception-weights" in proc.stderr and "Traceback" not in proc.stderr
    missing = run_cli("fid", cxr_phantom, cxr_phantom, "--inception-weights", tmp_path / "nope.pth")
    assert missing.returncode == 3


def test_mia_refuses_overlapping_patients(tiny_ddpm, cxr_phantom, tmp_path):
    path, _ = tiny_ddpm
    proc = run_cli("mia", "-m", path, "--members", cxr_phantom, "--nonmembers", cxr_phantom / "NORMAL")
    assert proc.returncode == 5 and "both --members and --nonmembers" in proc.stderr
    # a regex that maps every file to one patient makes any split overlap
    members, others = tmp_path / "m", tmp_path / "o"
    members.mkdir()
    others.mkdir()
    files = sorted(cxr_phantom.rglob("*.png"))
    shutil.copy(files[0], members / "a-1.png")
    shutil.copy(files[1], others / "a-2.png")
    regex = run_cli("mia", "-m", path, "--members", members, "--nonmembers", others, "--patient-regex", r"^(\w)-")
    assert regex.returncode == 5
    assert run_cli("mia", "-m", path, "--members", members, "--nonmembers", others, "--patient-regex", r"^(zz)").returncode == 5


def test_dp_training_stores_epsilon(cxr_phantom, tmp_path):
    from medtools.core import ckpt

    out = tmp_path / "dp.safetensors"
    proc = run_cli("synth-train", cxr_phantom, "-o", out, *TINY, "--attention", "1", "--epochs", "2", "--steps-per-epoch", "2", "--dp-epsilon", "50", "--dp-delta", "1e-3", "--max-grad-norm", "1.0", "--json", "-q", check=True)
    summary = json.loads(proc.stdout)
    assert summary["history"][0]["dp_epsilon"] < summary["history"][1]["dp_epsilon"] <= 50 * 1.05
    dp = ckpt.load(out, kind="ddpm", tensors=False).provenance["dp"]
    assert dp["delta"] == 1e-3 and 0 < dp["epsilon"] <= 50 * 1.05 and dp["steps"] == 4
    assert dp["noise_multiplier"] > 0 and dp["grad_sample_mode"] == "functorch"
    bad = run_cli("synth-train", cxr_phantom, "-o", tmp_path / "x.safetensors", *TINY, "--dp-epsilon", "1", "--dp-delta", "0.5")
    assert bad.returncode == 2 and "--dp-delta" in bad.stderr
