"""core.ckpt: safetensors + medtools metadata; every problem is a CheckpointError (exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from medtools.core import ckpt  # noqa: E402
from medtools.core.errors import EXIT_CHECKPOINT, CheckpointError  # noqa: E402

CONFIG = {"in_features": 4, "out_features": 2}


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Linear(**CONFIG)
    return ckpt.save(
        tmp_path / "m.safetensors",
        model.state_dict(),
        kind="test",
        config=CONFIG,
        norm={"method": "percentile", "low": 0.5},
        provenance={"seed": 7, "epochs": 2, "manifest": "abc"},
    )


def test_round_trip_rebuilds_model_from_config_alone(saved: Path) -> None:
    loaded = ckpt.load(saved, kind="test")
    assert loaded.kind == "test" and loaded.config == CONFIG
    assert loaded.norm == {"method": "percentile", "low": 0.5}
    assert loaded.provenance["seed"] == 7 and loaded.provenance["manifest"] == "abc"
    assert loaded.provenance["version"]
    model = ckpt.build_model(loaded)
    torch.manual_seed(0)
    reference = torch.nn.Linear(**CONFIG)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), reference(x))
    assert not model.training


def test_metadata_is_readable_without_torch_tensors(saved: Path) -> None:
    metadata = ckpt.read_metadata(saved)
    assert metadata["medtools.kind"] == "test"
    assert json.loads(metadata["medtools.config"]) == CONFIG


def test_kind_tuple_accepts_any_listed_kind(saved: Path) -> None:
    assert ckpt.load(saved, kind=("seg", "test")).kind == "test"


def test_wrong_kind_names_expected_and_found(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="expected a seg checkpoint, found kind 'test'") as info:
        ckpt.load(saved, kind="seg")
    assert info.value.exit_code == EXIT_CHECKPOINT == 3


@pytest.mark.parametrize("keep", [0, 5, 60, -4])
def test_truncated_checkpoint(saved: Path, tmp_path: Path, keep: int) -> None:
    data = saved.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        ckpt.load(broken, kind="test")


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError):
        ckpt.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a medtools checkpoint"):
        ckpt.load(tmp_path / "plain.safetensors")


def test_config_that_does_not_build_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = torch.nn.Linear(**CONFIG)
    bad = ckpt.save(tmp_path / "bad.safetensors", model.state_dict(), kind="test", config={"in_features": 4, "colour": "red"})
    with pytest.raises(CheckpointError, match="unknown test config key"):
        ckpt.build_model(ckpt.load(bad))
    wrong = ckpt.save(tmp_path / "wrong.safetensors", model.state_dict(), kind="test", config={"in_features": "four", "out_features": 2})
    with pytest.raises(CheckpointError, match="config does not build"):
        ckpt.build_model(ckpt.load(wrong))
    other = ckpt.save(tmp_path / "other.safetensors", model.state_dict(), kind="test", config={"in_features": 5, "out_features": 2})
    with pytest.raises(CheckpointError, match="weights do not match"):
        ckpt.build_model(ckpt.load(other))
    klt = ckpt.save(tmp_path / "klt.safetensors", {"q": torch.eye(2)}, kind="klt-key", config={})
    with pytest.raises(CheckpointError, match="no model to build"):
        ckpt.build_model(ckpt.load(klt))


def test_ddp_and_compile_prefixes_are_stripped_on_save(tmp_path: Path) -> None:
    state = {"module.weight": torch.ones(2, 4), "_orig_mod.module.bias": torch.zeros(2), "enc.module.keep": torch.ones(1)}
    path = ckpt.save(tmp_path / "p.safetensors", state, kind="test", config=CONFIG)
    assert set(ckpt.load(path).tensors) == {"weight", "bias", "enc.module.keep"}


def test_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("boom")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(RuntimeError):
        ckpt.save(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, kind="test", config={})
    assert list(tmp_path.iterdir()) == []
