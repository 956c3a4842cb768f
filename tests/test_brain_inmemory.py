"""In-memory entry points (what serve and the index call): segment_images and protect_images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medtools.core.io import Image  # noqa: E402

LEGACY = Path(__file__).parent / "data" / "legacy"


def _volume(seed: int) -> Image:
    rng = np.random.default_rng(seed)
    array = (rng.random((36, 36, 3)) * 1000).astype(np.int16)
    array[:4] = 0  # background
    return Image(array, affine=np.diag([1.2, 1.2, 3.0, 1.0]), format="nifti")


def test_segment_images_keeps_geometry_and_matches_predict() -> None:
    from medtools.brain.segment import label_volume, load_segmenter, segment_images
    from medtools.core.preprocess import volumes_to_slices

    seg = load_segmenter(LEGACY / "seg.safetensors", device="cpu")
    images = [_volume(0), _volume(1)]
    labels = segment_images(images, seg)
    assert labels.array.shape == (36, 36, 3) and np.allclose(labels.affine, images[0].affine)
    slices, _ = volumes_to_slices([i.array for i in images], seg.norm)
    np.testing.assert_array_equal(labels.array, label_volume(seg, seg.predict(slices, softmax=True)))
    with pytest.raises(Exception, match="expects 2 modalities"):
        segment_images(images[:1], seg)


def test_protect_images_stays_in_budget_and_keeps_dtype() -> None:
    from medtools.brain.protect import load_protect_models, protect_images
    from medtools.core.preprocess import normalise_intensity

    models = load_protect_models([LEGACY / "reid.safetensors"], LEGACY / "seg.safetensors", device="cpu")
    assert models.modalities == ["flair", "t1ce"]
    images = [_volume(2), _volume(3)]
    protected, result = protect_images(images, models, case_id="c1", patient="p1", eps=0.05, steps=2, key=b"k" * 32)
    for before, after in zip(images, protected):
        assert after.array.dtype == before.array.dtype and after.array.shape == before.array.shape
        _, window = normalise_intensity(before.array.astype(np.float32))
        change = np.abs(after.array.astype(np.int64) - before.array.astype(np.int64))
        assert 0 < change.max() <= np.floor(0.05 * (window["high"] - window["low"]) + 1e-9)
    assert result["linf"] <= 0.05 + 1e-6 and result["psnr"] > 20
    assert "whitebox_top1_protected[reid.safetensors]" in result


def test_protect_refuses_a_context_segmenter_as_utility() -> None:
    """A 2.5-D segmenter (seg-train --context) would get the wrong channels from protect's
    per-slice utility term: refused with a usage error naming --context."""
    from medtools.brain.protect import load_protect_models
    from medtools.core import ckpt
    from medtools.core.errors import UsageError
    from medtools.core.predict import Predictor

    seg = ckpt.load(LEGACY / "seg.safetensors", kind="seg")
    config = {**seg.config, "context": 1, "in_channels": 3 * len(seg.config["modalities"])}
    net = ckpt.new_model("seg", config)
    utility = Predictor.from_model(net, kind="seg", config=config, norm=seg.norm)
    attacker = Predictor(LEGACY / "reid.safetensors", kind="reid", device=utility.device)
    with pytest.raises(UsageError, match="--context"):
        load_protect_models([attacker], utility)
