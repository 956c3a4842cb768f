"""Every registered kind × tiny config keeps the model contract (tests/model_contract.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model_contract import ModelContract, contract_cases

CASES = contract_cases()


def test_every_family_with_models_registers_tiny_configs() -> None:
    from medtools.core import registry

    kinds = registry.discover()
    assert {"seg", "reid", "ddpm"} <= set(kinds)
    assert all(k.tiny for k in kinds.values() if k.builder and k.family != "tests"), [k.name for k in kinds.values() if k.builder and not k.tiny]


@pytest.mark.parametrize(("kind", "config"), CASES)
class TestRegisteredKinds(ModelContract):
    def test_forward_backward(self, kind, config):
        self.check_forward_backward(kind, config)

    @pytest.mark.parametrize("channels", [1, 4])
    def test_one_and_four_channels(self, kind, config, channels):
        self.check_channels(kind, config, channels)

    def test_save_load_predict_odd_size(self, kind, config, tmp_path):
        self.check_save_load_predict_odd_size(kind, config, tmp_path)

    def test_unknown_config_key_is_a_checkpoint_error(self, kind, config, tmp_path):
        self.check_unknown_config_key(kind, config, tmp_path)


def test_a_toy_kind_registered_outside_core_is_built_and_checked() -> None:
    """A newcomer's kind: one register_kind call; core needs no edit (the conftest toy kind)."""
    from medtools.core import ckpt, registry

    model = ckpt.new_model("test", {"in_features": 3, "out_features": 2})
    assert model.in_features == 3
    with pytest.raises(Exception, match="unknown test config key"):
        ckpt.new_model("test", {"in_features": 3, "width": 2})
    assert registry.get("test").family == "tests"


def test_unknown_arch_in_a_checkpoint_exits_3(tmp_path: Path) -> None:
    from conftest import run_cli
    from medtools.core import ckpt, registry

    config = dict(registry.get("seg").tiny[0])
    model = ckpt.new_model("seg", config)
    path = ckpt.save(tmp_path / "seg.safetensors", model.state_dict(), kind="seg", config={**config, "arch": "no-such-net"})
    proc = run_cli("info", path)  # metadata only: fine
    assert proc.returncode == 0
    image = tmp_path / "a.nii.gz"
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 3).astype(np.float32), np.eye(4)), image)
    proc = run_cli("segment", image, "-m", path, "-o", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    assert "no-such-net" in proc.stderr and "Traceback" not in proc.stderr


def test_registry_is_torch_free() -> None:
    code = "import sys; from medtools.core import registry; registry.discover(); print(sorted(registry.KINDS)); assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "seg" in proc.stdout
