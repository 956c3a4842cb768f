"""Inception FID offline: generated random weights in torch-fidelity's and pytorch-fid's formats (never downloaded)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory) -> dict[str, Path]:
    """Random Inception-v3 weights saved as torch-fidelity expects, and the same net as pytorch-fid's file."""
    import torch
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Uninitialised(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random init instead of reading weights
            return None

    root = tmp_path_factory.mktemp("inception")
    torch.save({}, root / "empty.pth")
    torch.manual_seed(0)
    net = Uninitialised("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(root / "empty.pth"))
    state = net.state_dict()
    torch.save(state, root / "weights-inception-2015-12-05-6726825d.pth")
    torchvision_net = torchvision.models.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    torchvision_net.load_state_dict(state)  # pytorch-fid's FID weights are this module's state dict
    hub = root / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(torchvision_net.state_dict(), hub / "pt_inception-2015-12-05-6726825d.pth")
    return {"torch_fidelity": root / "weights-inception-2015-12-05-6726825d.pth", "pytorch_fid": hub / "pt_inception-2015-12-05-6726825d.pth", "torch_home": root / "torch_home"}


def test_both_weight_formats_give_the_same_features(inception_files):
    import torch

    from medtools.synth.fid import load_inception

    pixels = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    a = load_inception(inception_files["torch_fidelity"], torch.device("cpu"))(pixels)[0]
    b = load_inception(inception_files["pytorch_fid"], torch.device("cpu"))(pixels)[0]
    assert a.shape == (2, 2048)
    torch.testing.assert_close(a, b)


def _three(folder: Path, target: Path) -> Path:
    target.mkdir()
    for path in sorted(folder.glob("*.png"))[:3]:
        shutil.copy(path, target / path.name)
    return target


def test_fid_inception_cli(inception_files, cxr_phantom, tmp_path):
    normal, pneumonia = _three(cxr_phantom / "NORMAL", tmp_path / "n"), _three(cxr_phantom / "PNEUMONIA", tmp_path / "p")
    proc = run_cli("fid", normal, pneumonia, "--inception-weights", inception_files["torch_fidelity"], "--size", "32", "--kid", "--json", "-q", check=True)
    result = json.loads(proc.stdout)
    assert result["extractor"]["extractor"] == "inception-v3-compat" and result["extractor"]["size"] == 32
    assert {"fid", "kid_mean", "kid_std"} <= set(result["metrics"])
    # random Inception weights give near-constant features (FID ~1e-13 here), so this test checks the
    # weight formats and the plumbing; the discriminating FID test is test_fid_with_classifier_features
    assert math.isfinite(result["metrics"]["fid"]) and result["metrics"]["fid"] >= 0
    # torch.hub's cache location with pytorch-fid's file name, converted on the fly
    cached = run_cli("fid", normal, normal, "--size", "32", env={"TORCH_HOME": str(inception_files["torch_home"]), "MEDTOOLS_INCEPTION_WEIGHTS": ""}, check=True)
    assert cached.stdout.startswith("fid\t") and abs(float(cached.stdout.split("\t")[1])) < 1e-6


def test_not_inception_weights_exit_3(tmp_path, cxr_phantom):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(os.urandom(256))
    proc = run_cli("fid", cxr_phantom, cxr_phantom, env={"MEDTOOLS_INCEPTION_WEIGHTS": str(bogus)})
    assert proc.returncode == 3 and "cannot read Inception weights" in proc.stderr
