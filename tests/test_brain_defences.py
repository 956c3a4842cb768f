"""Attacker defences (brain/defences.py): each transform does what docs/brain.md says, the
scheme-aware attacker removes a planted signature, defences live in the checkpoint and are
re-applied by reid-eval and protect, and reid-eval --verify ranks same-patient pairs.
Tiny phantoms (4 patients × 2 visits, 32×32×8, flair) and timm's test_resnet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import run_cli
from medtools.brain import defences as d
from medtools.core.errors import UsageError

FLAGS = ["--arch", "test_resnet", "--size", "32", "--modalities", "flair", "-b", "16", "-q"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medtools.core.manifest import discover, to_csv
    from medtools.phantom.generate import write_brain_phantoms

    root = tmp_path_factory.mktemp("defences")
    write_brain_phantoms(root / "data", patients=4, visits=2, size=32, slices=8, seed=0)
    (root / "cases.csv").write_text(to_csv(discover([root / "data"])))
    lines = (root / "cases.csv").read_text().splitlines()
    (root / "v2.csv").write_text("\n".join([lines[0]] + [l for l in lines[1:] if l.split(",")[2] == "v2"]) + "\n")
    return root


def _images(seed: int = 0, n: int = 3, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, 2, size, size)).astype(np.float32)


def test_parse_defences_canonical_and_strict():
    assert d.parse_defences(["jpeg:10,blur:1.0", "aware:signature", "adv:0.020"]) == ["jpeg:10", "blur:1", "aware", "adv:0.02"]
    for bad in ("jpeg:0", "jpeg:10.5", "lowpass:0.7", "median:1", "quantise:0", "blur:-1", "sharpen:2", "aware:decoy", "jpeg:x"):
        with pytest.raises(UsageError):
            d.parse_defences(bad)
    assert d.adv_eps(["jpeg:10", "adv:0.02"]) == 0.02 and d.image_defences(["adv:0.02", "blur:1"]) == ["blur:1"]


def test_jpeg_applies_the_given_quality():
    x = _images()
    for quality in (10, 75):
        out = d.apply_defences(x, [f"jpeg:{quality}"])
        buffer = io.BytesIO()
        PILImage.fromarray(np.rint(x[1, 0] * 255).astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=quality)
        np.testing.assert_array_equal(out[1, 0], np.asarray(PILImage.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255)
    assert np.abs(d.apply_defences(x, ["jpeg:10"]) - x).mean() > 2 * np.abs(d.apply_defences(x, ["jpeg:75"]) - x).mean()


def test_blur_sigma_median_lowpass_and_bits():
    impulse = np.zeros((1, 1, 41, 41), np.float32)
    impulse[0, 0, 20, 20] = 1.0
    response = d.apply_defences(impulse, ["blur:2"])[0, 0]
    offsets = np.arange(41) - 20
    variance = float((response.sum(0) * offsets**2).sum() / response.sum())
    assert variance == pytest.approx(4.0, rel=0.05)  # sigma² of the impulse response
    salt = np.full((1, 1, 16, 16), 0.5, np.float32)
    salt[0, 0, 7, 9] = 1.0
    np.testing.assert_allclose(d.apply_defences(salt, ["median:3"]), 0.5)
    cols = np.arange(32)
    stripes = np.broadcast_to(0.5 + 0.4 * np.cos(2 * np.pi * 0.25 * cols), (1, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(d.apply_defences(stripes, ["lowpass:0.2"]), 0.5, atol=1e-5)  # 0.25 cycles/px removed
    np.testing.assert_allclose(d.apply_defences(stripes, ["lowpass:0.3"]), stripes, atol=1e-5)  # kept
    levels = np.unique(d.apply_defences(_images(), ["quantise:3"]))
    assert len(levels) <= 8 and np.allclose(levels * 7, np.rint(levels * 7))
    assert len(np.unique(d.apply_defences(_images(), ["quantise:8"]))) > 8


def test_aware_attacker_removes_a_planted_signature(phantom):
    """A release (8 cases) protected with a constant block pattern per case (signature_pattern, the
    same on every slice) → after `aware` the block high-pass of what the attacker sees barely
    correlates with the case's pattern any more."""
    from medtools.brain.pgd import SIGNATURE_GRID, signature_pattern
    from medtools.core.data import load_case_slices
    from medtools.core.manifest import read_csv

    clean, released, groups, signs = [], [], [], []
    for number, row in enumerate(read_csv(phantom / "cases.csv")):
        slices, _ = load_case_slices(row, ["flair"], size=32)
        slices = slices[slices.reshape(len(slices), -1).max(1) > 0]
        pattern = signature_pattern(b"key", row["case"], 1, 32, 32, 0.045)
        clean.append(slices)
        released.append(np.clip(slices + pattern[None] * (slices > 0), 0, 1))
        groups.append(np.full(len(slices), number))
        signs.append(np.sign(pattern[:, :: 32 // SIGNATURE_GRID, :: 32 // SIGNATURE_GRID]).ravel())
    clean, released, groups = np.concatenate(clean), np.concatenate(released), np.concatenate(groups)
    defended = d.apply_defences(released, ["aware"], groups=groups)

    def correlation(images: np.ndarray) -> float:
        # per case: the block high-pass of what the attacker sees (mean over slices) against the planted pattern
        seen = [d.block_highpass(images[groups == g]).mean(0).ravel() for g in range(len(signs))]
        return float(np.mean([np.corrcoef(v, s)[0, 1] for v, s in zip(seen, signs)]))

    def left(images: np.ndarray) -> float:  # energy of the pattern still in the images
        return float(np.square(d.block_highpass(images - clean)).sum())

    before, after = correlation(released), correlation(defended)
    assert before > 0.45 and after < 0.65 * before, (before, after)  # measured 0.55 → 0.29 (clean 0.0)
    assert left(defended) < 0.5 * left(released)  # measured 0.39
    sliced = d.apply_defences(released, ["aware:slice"])  # per-slice block means: the pattern is gone exactly
    reference = d.apply_defences(clean, ["aware:slice"])
    usable = (clean > 0) & (released < 1) & (sliced > 0) & (sliced < 1) & (reference > 0) & (reference < 1)  # foreground, not clipped
    difference = sliced - reference  # up to one offset per slice
    offsets = np.array([np.median(difference[z][usable[z]]) for z in range(len(difference))])[:, None, None, None]
    left = np.abs(difference - offsets)[usable]
    # exact on 80 % of the foreground; blocks where protect clipped at 0 keep a little (measured 0.008 vs 0.045)
    assert (left < 2e-3).mean() > 0.7 and left.mean() < 0.25 * np.abs(released - clean)[usable].mean()
    single = d.apply_defences(released[groups == 0], ["aware"])  # one case alone: no centring, weaker
    assert np.abs(single - clean[groups == 0]).mean() < np.abs(released - clean)[groups == 0].mean()


def test_defences_stored_in_checkpoint_and_reapplied(phantom, tmp_path):
    """reid-train --defence (CLI) → checkpoint config → reid-eval (same numbers as the defended
    images by hand) and protect's attacker (forward on the defended input)."""
    import torch

    from medtools.brain.pgd import load_attackers
    from medtools.brain.reid import eval_reid, load_items
    from medtools.core import ckpt
    from medtools.core.manifest import read_csv
    from medtools.core.predict import Predictor

    model = tmp_path / "jpeg.safetensors"
    run_cli("reid-train", phantom / "cases.csv", "-o", model, "--defence", "jpeg:20,blur:0.8", "--epochs", "1", "--steps-per-epoch", "3", *FLAGS, check=True)
    assert ckpt.load(model, kind="reid").config["defence"] == ["jpeg:20", "blur:0.8"]
    result = eval_reid(phantom / "v2.csv", model)  # in-process: one torch start fewer than the CLI
    assert result["defence"] == ["jpeg:20", "blur:0.8"]
    predictor = Predictor(model, kind="reid", device="cpu")
    items, targets, _ = load_items(read_csv(phantom / "v2.csv"), modalities=["flair"], size=32, label="patient", class_names=predictor.class_names, norm=predictor.norm)
    defended = predictor.predict(d.apply_defences(items.images, ["jpeg:20", "blur:0.8"])).argmax(1)
    plain = predictor.predict(items.images)
    assert result["top1"] == pytest.approx(float((defended == targets).mean()))
    (attacker,) = load_attackers([model], torch.device("cpu"))
    x = torch.from_numpy(items.images[:4]).requires_grad_(True)
    out = attacker.forward(x)
    np.testing.assert_allclose(out.detach().numpy(), predictor.predict(d.apply_defences(items.images[:4], ["jpeg:20", "blur:0.8"])), atol=1e-4)
    assert not np.allclose(out.detach().numpy(), plain[:4], atol=1e-4)
    out.sum().backward()  # straight-through: protect's PGD still gets a gradient
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.fixture(scope="module")
def identities(tmp_path_factory) -> Path:
    """2-D phantom: 8 patients × 7 images (4 train, 3 test); a patient is a fixed ±0.2 4×4 block
    texture under per-image smooth nuisance and noise."""
    import csv

    from scipy.ndimage import gaussian_filter

    root = tmp_path_factory.mktemp("identities")
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(8):
        texture = np.kron(np.sign(rng.standard_normal((4, 4))), np.ones((8, 8))) * 0.2
        for number in range(7):
            nuisance = gaussian_filter(rng.standard_normal((32, 32)), 3)
            image = np.clip(0.5 + 0.2 * nuisance / nuisance.std() + texture + 0.05 * rng.standard_normal((32, 32)), 0, 1)
            path = root / f"p{patient}_{number}.png"
            PILImage.fromarray((image * 255).astype(np.uint8)).save(path)
            rows.append({"patient": f"p{patient}", "case": path.stem, "visit": "a" if number < 4 else "b", "image": str(path)})
    test = [r for r in rows if r["visit"] == "b"]
    shuffled = [{**r, "patient": p} for r, p in zip(test, rng.permutation([r["patient"] for r in test]))]
    for name, subset in (("all", rows), ("test", test), ("shuffled", shuffled)):
        with open(root / f"{name}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(subset)
    return root


def test_verification_auc(identities, tmp_path):
    """reid-eval --verify: a trained attacker ranks held-out same-patient pairs above the others;
    where images carry no identity (shuffled patients) any attacker, trained or not, is near 0.5."""
    import torch

    from medtools.brain.reid import eval_reid, train_reid
    from medtools.core import ckpt

    trained = tmp_path / "reid.safetensors"
    train_reid(identities / "all.csv", trained, arch="test_resnet", size=32, train_visits=["a"], epochs=4, steps_per_epoch=10, batch_size=16, seed=0)
    loaded = ckpt.load(trained, kind="reid")
    torch.manual_seed(1)
    untrained = ckpt.save(tmp_path / "untrained.safetensors", ckpt.new_model("reid", loaded.config).state_dict(), kind="reid", config=loaded.config, norm=loaded.norm)
    result = {(name, data): eval_reid(identities / f"{data}.csv", path, verify=True)["verify"] for name, path in (("trained", trained), ("untrained", untrained)) for data in ("test", "shuffled")}
    assert result["trained", "test"]["pairs"] == 24 * 23 // 2 and result["trained", "test"]["same_patient_pairs"] == 8 * 3
    assert result["trained", "test"]["auc"] > 0.65, result  # measured 0.81 (untrained 0.70: raw similarity, see docs/results.md)
    for name in ("trained", "untrained"):
        assert abs(result[name, "shuffled"]["auc"] - 0.5) < 0.15, result
