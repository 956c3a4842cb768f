"""Class-conditional synthesis: conditioning works, guidance 0 is the unconditional path, the
default attention fits every width list, and old unconditional checkpoints are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SIZE = 16


def write_two_classes(root: Path, n: int, *, seed: int, prefix: str = "p") -> Path:
    """Two visibly different classes: TOP (bright upper half) and BOTTOM (bright lower half), one image per patient."""
    from medtools.core.io import Image, write_image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(("BOTTOM", "TOP")):
        for i in range(n):
            image = np.full((SIZE, SIZE), 30.0) + rng.normal(0, 12, (SIZE, SIZE))
            rows = slice(0, SIZE // 2) if name == "TOP" else slice(SIZE // 2, SIZE)
            image[rows] += 170 + rng.normal(0, 15)
            write_image(Image(np.clip(image, 0, 255).astype(np.uint8), format="png"), root / name / f"{prefix}{c * 1000 + i + seed * 10000:04d}-01-{name.lower()}.png")
    return root


def top_minus_bottom(paths) -> np.ndarray:
    from medtools.core.preprocess import load_image

    images = np.stack([load_image(p, SIZE, 1)[0] for p in paths])
    return images[:, : SIZE // 2].mean((1, 2)) - images[:, SIZE // 2 :].mean((1, 2))


@pytest.fixture(scope="module")
def cond_ddpm(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny conditional DDPM (16×16, 100 cosine timesteps: a linear 100-step schedule does not
    reach pure noise) trained 150 full-batch steps on two classes."""
    import torch

    from medtools.synth.train import train_ddpm

    torch.set_num_threads(1)
    root = write_two_classes(tmp_path_factory.mktemp("two"), 8, seed=0)
    out = tmp_path_factory.mktemp("cond") / "cond.safetensors"
    train_ddpm(inputs=[str(root)], output=out, size=SIZE, widths=(16, 32), layers_per_block=1, timesteps=100, beta_schedule="squaredcos_cap_v2", epochs=150, batch_size=16, lr=3e-3, ema_decay=0, classes_from=root, label_dropout=0.2)
    return out, root


def _sample(model: Path, out: Path, **kw):
    from medtools.synth.sample import synthesize

    written: list[Path] = []
    result = synthesize(model=model, output=out, sampler="ddim", steps=10, on_written=written.append, **kw)
    return written, result


def test_checkpoint_records_classes(cond_ddpm):
    from medtools.core import ckpt

    meta = ckpt.load(cond_ddpm[0], kind="ddpm", tensors=False)
    assert meta.config["class_names"] == ["BOTTOM", "TOP"]
    assert meta.config["num_class_embeds"] == 3 and meta.config["null_class"] == 2
    assert meta.provenance["label_dropout"] == 0.2 and meta.provenance["class_counts"] == {"BOTTOM": 8, "TOP": 8}
    assert meta.config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]  # default attention at the lowest level


def test_samples_follow_the_requested_class(cond_ddpm, tmp_path):
    """A nearest-centroid classifier fitted on the real images assigns samples to the class asked for."""
    model, root = cond_ddpm
    real = {c: top_minus_bottom(sorted((root / c).glob("*.png"))) for c in ("BOTTOM", "TOP")}
    threshold = (real["BOTTOM"].mean() + real["TOP"].mean()) / 2  # the classifier: 1-D centroid midpoint
    written, result = _sample(model, tmp_path / "all", n=8, class_name="all", guidance=2.0)
    assert result["classes"] == ["BOTTOM", "TOP"] and len(written) == 16
    correct = 0
    for c in ("BOTTOM", "TOP"):
        paths = sorted((tmp_path / "all" / c).glob("sample-*.png"))
        assert len(paths) == 8
        predicted_top = top_minus_bottom(paths) > threshold
        correct += int(predicted_top.sum()) if c == "TOP" else int((~predicted_top).sum())
    assert correct / 16 >= 0.75, correct  # chance is 0.5


def test_guidance_zero_is_the_unconditional_path(cond_ddpm, tmp_path):
    from medtools.core.io import read_image

    model, _ = cond_ddpm
    plain, _ = _sample(model, tmp_path / "plain", n=3, seed=5)
    zero, _ = _sample(model, tmp_path / "zero", n=3, seed=5, class_name="TOP", guidance=0.0)
    guided, _ = _sample(model, tmp_path / "guided", n=3, seed=5, class_name="TOP", guidance=2.0)
    for a, b, g in zip(plain, zero, guided):
        assert np.array_equal(read_image(a).array, read_image(b).array)
        assert not np.array_equal(read_image(a).array, read_image(g).array)


def test_class_errors(cond_ddpm, tmp_path):
    from medtools.core.errors import UsageError

    with pytest.raises(UsageError, match="not one of this model's classes"):
        _sample(cond_ddpm[0], tmp_path / "x", n=1, class_name="LEFT")


def test_unconditional_checkpoint_refuses_class_and_samples_as_before(tmp_path):
    """An old unconditional checkpoint: plain sampling works, --class is a usage error."""
    import torch

    from medtools.core import ckpt
    from medtools.core.errors import UsageError
    from medtools.synth.models import build_unet, unet_config
    from medtools.synth.schedule import scheduler_config

    config = unet_config(size=SIZE, widths=(8, 16), attention=(), layers_per_block=1, norm_groups=4)
    assert "num_class_embeds" not in config and "class_names" not in config
    torch.manual_seed(0)
    path = ckpt.save(tmp_path / "u.safetensors", build_unet(**config).state_dict(), kind="ddpm", config=config, norm={"method": "unit", "model_range": [-1.0, 1.0]}, provenance={"scheduler": scheduler_config(timesteps=50)})
    written, _ = _sample(path, tmp_path / "u", n=2)
    assert len(written) == 2
    with pytest.raises(UsageError, match="not class-conditional"):
        _sample(path, tmp_path / "v", n=1, class_name="TOP")


@pytest.mark.parametrize("widths,level", [((16, 32), 1), ((32, 64, 128), 2), ((16,), 0), ((8, 16, 32, 64), 3)])
def test_default_attention_fits_every_width_list(widths, level):
    from medtools.synth.models import unet_config

    config = unet_config(size=32, widths=widths, layers_per_block=1)
    assert [i for i, b in enumerate(config["down_block_types"]) if b.startswith("Attn")] == [level]
    assert config["up_block_types"][0].startswith("Attn")  # the first up block is the lowest resolution
