"""core.train: checkpoints every epoch, --resume continues exactly, EMA, errors are exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from medtools.core import ckpt  # noqa: E402
from medtools.core.errors import CheckpointError, UsageError  # noqa: E402
from medtools.core.train import TrainSpec, fit, state_path  # noqa: E402

CONFIG = {"in_features": 4, "out_features": 2}


def dataset():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())


def step(model, batch):
    images, target = batch
    return torch.nn.functional.cross_entropy(model(images), target)


def train(output: Path, epochs: int, *, resume: bool = False, seed: int = 3, **extra) -> dict:
    torch.manual_seed(0)
    spec = TrainSpec(output=output, kind="test", config=CONFIG, epochs=epochs, batch_size=8, lr=0.05, seed=seed, device="cpu", resume=resume, **extra)
    return fit(torch.nn.Linear(**CONFIG), dataset(), step, spec, validate=lambda m: {"acc": 0.5})


def weights(path: Path) -> dict:
    return ckpt.load(path, kind="test").tensors


def test_checkpoint_each_epoch_with_history_and_rebuildable(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = train(out, 2)
    assert result["epochs"] == 2 and len(result["history"]) == 2 and result["final"]["acc"] == 0.5
    loaded = ckpt.load(out, kind="test")
    assert loaded.provenance["epochs"] == 2 and loaded.provenance["seed"] == 3
    assert [h["epoch"] for h in loaded.provenance["history"]] == [1, 2]
    ckpt.build_model(loaded)  # rebuilt from config alone
    assert ckpt.load(state_path(out), kind="train-state").config["epoch"] == 2


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    train(tmp_path / "straight.safetensors", 3)
    train(tmp_path / "resumed.safetensors", 1)
    result = train(tmp_path / "resumed.safetensors", 3, resume=True)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    straight, resumed = weights(tmp_path / "straight.safetensors"), weights(tmp_path / "resumed.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)


def test_resume_of_a_finished_run_whose_model_is_gone_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    train(out, 2)
    assert train(out, 2, resume=True)["epochs"] == 2 and out.exists()  # -o present: nothing to do
    out.unlink()
    with pytest.raises(CheckpointError, match="already holds all 2 epochs"):
        train(out, 2, resume=True)
    assert not out.exists()
    train(out, 3, resume=True)  # one more epoch writes it again
    assert ckpt.load(out, kind="test").provenance["epochs"] == 3


def test_seed_makes_training_reproducible(tmp_path: Path) -> None:
    train(tmp_path / "a.safetensors", 1, seed=5)
    train(tmp_path / "b.safetensors", 1, seed=5)
    train(tmp_path / "c.safetensors", 1, seed=6)
    a, b, c = (weights(tmp_path / f"{n}.safetensors") for n in "abc")
    torch.testing.assert_close(a["weight"], b["weight"], rtol=0, atol=0)
    assert not torch.equal(a["weight"], c["weight"])


def test_ema_weights_are_saved(tmp_path: Path) -> None:
    train(tmp_path / "plain.safetensors", 1)
    train(tmp_path / "ema.safetensors", 1, ema_decay=0.9)
    assert not torch.equal(weights(tmp_path / "plain.safetensors")["weight"], weights(tmp_path / "ema.safetensors")["weight"])


def test_resume_problems_are_checkpoint_errors(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="no training state"):
        train(out, 1, resume=True)
    train(out, 1)
    spec = TrainSpec(output=out, kind="seg", config=CONFIG, epochs=2, batch_size=8, device="cpu", resume=True)
    with pytest.raises(CheckpointError, match="not seg"):
        fit(torch.nn.Linear(**CONFIG), dataset(), step, spec)
    spec = TrainSpec(output=out, kind="test", config={}, epochs=2, batch_size=8, device="cpu", resume=True)
    with pytest.raises(CheckpointError, match="does not match"):
        fit(torch.nn.Linear(4, 3), dataset(), step, spec)


def test_batch_larger_than_data_with_drop_last_is_a_usage_error(tmp_path: Path) -> None:
    spec = TrainSpec(output=tmp_path / "m.safetensors", kind="test", config=CONFIG, epochs=1, batch_size=64, drop_last=True, device="cpu")
    with pytest.raises(UsageError, match="leaves no batch"):
        fit(torch.nn.Linear(**CONFIG), dataset(), step, spec)


def test_every_trainer_takes_one_options_object_with_the_cli_defaults() -> None:
    """The shared settings have one set of defaults per trainer, and the CLI shows those."""
    import dataclasses
    import importlib
    import inspect

    from medtools.core.train import OPTION_NAMES, TrainOptions, train_options

    trainers = {
        "medtools.brain.segment:train_segmenter": "medtools.brain.commands:seg_train",
        "medtools.brain.reid:train_reid": "medtools.brain.commands:reid_train",
        "medtools.cls.train:train_classifier": "medtools.cls.commands:cls_train",
        "medtools.synth.train:train_ddpm": "medtools.synth.commands:synth_train",
        "medtools.collab.autoencoder:train_autoencoder": "medtools.collab.commands:ae_train",
        "medtools.collab.umn:train_umn": "medtools.collab.commands:umn_train",
    }
    for function, command in trainers.items():
        module, name = function.split(":")
        train = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(train).parameters
        assert "options" in parameters and not set(OPTION_NAMES) & set(parameters), function  # declares only its own settings
        defaults = importlib.import_module(module).TRAIN_DEFAULTS
        cli_module, cli_name = command.split(":")
        cli = getattr(importlib.import_module(cli_module), cli_name)
        assert cli.train_defaults == {k: getattr(defaults, k) for k in ("epochs", "batch_size", "lr")}, command
        flags = inspect.signature(cli).parameters
        assert set(OPTION_NAMES) <= set(flags) and "options" not in flags, command
        assert {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name not in ("epochs", "batch_size", "lr")} == {n: flags[n].default for n in OPTION_NAMES if n not in ("epochs", "batch_size", "lr")}
    assert train_options(None, TrainOptions(epochs=4), lr=0.5) == TrainOptions(epochs=4, lr=0.5)
    with pytest.raises(TypeError, match="epoch"):
        train_options(None, TrainOptions(), epoch=3)


def test_resume_with_another_seed_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    train(out, 1, seed=3)
    with pytest.raises(CheckpointError, match="--seed 3"):
        train(out, 2, seed=4, resume=True)


def test_timings_are_kept_apart_from_the_history(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = train(out, 2)
    loaded = ckpt.load(out, kind="test")
    assert all("seconds" not in h for h in loaded.provenance["history"]) and all("seconds" not in h for h in result["history"])
    assert [t["epoch"] for t in loaded.provenance["timings"]] == [1, 2] and all(t["seconds"] >= 0 for t in loaded.provenance["timings"])
    assert loaded.provenance["deterministic"] is False
