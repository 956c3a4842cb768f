"""Reproducibility of every trainer on CPU: the same seed gives bit-identical weights and the
same metadata apart from wall times; another seed gives other weights; a run stopped after
one epoch and resumed ends with the same weights as an uninterrupted one.

Tiny sizes (32², two steps per epoch) on the shared session phantoms, in-process."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medtools.core import ckpt  # noqa: E402
from medtools.core.train import TrainOptions, derive_seed  # noqa: E402

SEED, OTHER = 7, 8
SHARED = dict(epochs=2, steps_per_epoch=2, device="cpu")


def _seg(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.brain.segment import train_segmenter

    train_segmenter(data["brain"], out, options=options.replace(batch_size=4), modalities=["flair", "t1ce"], encoder="tu-test_resnet", size=32, val_fraction=0.25)


def _reid(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.brain.reid import train_reid

    train_reid(data["brain"], out, options=options.replace(batch_size=8), arch="test_resnet", size=32, modalities=["flair", "t1ce"])


def _cls(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.cls.train import train_classifier

    train_classifier(data["cxr"], out, options=options.replace(batch_size=4), arch="test_resnet", size=32, block_size=16, val_fraction=0.25)


def _synth(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.synth.train import train_ddpm

    train_ddpm(inputs=[str(data["cxr"])], output=out, options=options.replace(batch_size=4), size=16, widths=(8, 16), layers_per_block=1, norm_groups=4, timesteps=20)


def _ae(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.collab.autoencoder import train_autoencoder

    train_autoencoder([str(data["cxr"])], out, options=options.replace(batch_size=4), size=32, widths=(8, 16), latent_channels=(2, 4))


def _umn(data: dict, out: Path, options: TrainOptions) -> None:
    from medtools.collab.umn import train_umn

    train_umn([str(data["latents"])], out, options=options.replace(batch_size=4), keys=None, widths=(8, 16))


TRAINERS = {"seg": _seg, "reid": _reid, "cls": _cls, "ddpm": _synth, "ae": _ae, "umn": _umn}


@pytest.fixture(scope="module")
def data(brain_phantom: Path, cxr_phantom: Path, tmp_path_factory) -> dict:
    """The session phantoms, plus protected-space latent pairs for the UMN (random, fixed)."""
    from medtools.collab.latents import write_latent

    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    for case in range(8):
        image = [rng.normal(size=(2, 16, 16)), rng.normal(size=(4, 8, 8))]
        mask = [np.tanh(z[:1].repeat(c, 0)) for z, c in zip(image, (2, 4))]
        write_latent(root / f"img{case}.safetensors", image, {"source": "ae-image", "case": f"c{case}"})
        write_latent(root / f"mask{case}.safetensors", mask, {"source": "ae-mask", "case": f"c{case}"})
    return {"brain": brain_phantom, "cxr": cxr_phantom, "latents": root}


def _checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata without the wall times)."""
    from safetensors.torch import load_file

    metadata = ckpt.read_metadata(path)
    assert "medtools.timings" in metadata and '"seconds"' not in metadata["medtools.history"]
    return load_file(str(path)), {k: v for k, v in metadata.items() if k != "medtools.timings"}


def _same(a: Path, b: Path) -> None:
    (ta, ma), (tb, mb) = _checkpoint(a), _checkpoint(b)
    assert ma == mb
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@contextlib.contextmanager
def _interrupt_after_first_epoch():
    """Ctrl-C right after the first training state is written (as a killed job would stop)."""
    save = ckpt.save

    def save_then_stop(path, *args, **kwargs):
        written = save(path, *args, **kwargs)
        if kwargs.get("kind") == "train-state":
            raise KeyboardInterrupt
        return written

    ckpt.save = save_then_stop
    try:
        yield
    finally:
        ckpt.save = save


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_trainer_is_reproducible_and_resumable(trainer: str, data: dict, tmp_path: Path) -> None:
    train = TRAINERS[trainer]
    options = TrainOptions(**SHARED, seed=SEED)
    train(data, tmp_path / "a.safetensors", options)
    train(data, tmp_path / "b.safetensors", options)
    _same(tmp_path / "a.safetensors", tmp_path / "b.safetensors")

    train(data, tmp_path / "other.safetensors", options.replace(seed=OTHER))
    a, other = _checkpoint(tmp_path / "a.safetensors")[0], _checkpoint(tmp_path / "other.safetensors")[0]
    assert any(not torch.equal(a[k], other[k]) for k in a if torch.is_floating_point(a[k]))

    # interrupted once epoch 1 is saved, resumed in a new call: the uninterrupted run's weights
    with pytest.raises(KeyboardInterrupt), _interrupt_after_first_epoch():
        train(data, tmp_path / "resumed.safetensors", options)
    assert ckpt.load(tmp_path / "resumed.train-state.safetensors", kind="train-state", tensors=False).config["epoch"] == 1
    train(data, tmp_path / "resumed.safetensors", options.replace(resume=True))
    _same(tmp_path / "a.safetensors", tmp_path / "resumed.safetensors")


def test_loader_workers_do_not_change_the_model(data: dict, tmp_path: Path) -> None:
    """cls draws its augmentation inside the dataset: per-item seeds, not per-worker streams."""
    options = TrainOptions(**{**SHARED, "epochs": 1}, seed=SEED)
    _cls(data, tmp_path / "w0.safetensors", options)
    _cls(data, tmp_path / "w2.safetensors", options.replace(workers=2))
    _same(tmp_path / "w0.safetensors", tmp_path / "w2.safetensors")


def test_seeds_of_streams_are_fixed_functions() -> None:
    assert derive_seed(7, "init") == derive_seed(7, "init") != derive_seed(8, "init")
    assert derive_seed(7, "step", 0, 1) != derive_seed(7, "step", 1, 1) != derive_seed(7, "step", 0, 2)
    assert 0 <= derive_seed(2**40, "x") < 2**63


def test_phantoms_and_synth_sampling_are_byte_identical_for_a_seed(data: dict, tmp_path: Path) -> None:
    from medtools.phantom.generate import write_brain_phantoms, write_cxr_phantoms
    from medtools.synth.sample import synthesize

    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name in ("one", "two"):
        write_brain_phantoms(tmp_path / name / "brain", patients=2, visits=1, size=16, slices=4, seed=3)
        write_cxr_phantoms(tmp_path / name / "cxr", n=4, patients=2, size=16, seed=3)
    assert files(tmp_path / "one") == files(tmp_path / "two")

    model = tmp_path / "ddpm.safetensors"
    _synth(data, model, TrainOptions(**{**SHARED, "epochs": 1}, seed=SEED))
    for name, seed in (("s1", 5), ("s2", 5), ("s3", 6)):
        synthesize(model=model, n=2, output=tmp_path / name, steps=5, seed=seed, device="cpu", on_written=lambda p: None)
    assert files(tmp_path / "s1") == files(tmp_path / "s2") != files(tmp_path / "s3")
