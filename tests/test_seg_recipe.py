"""Segmentation recipe (issue 19): foreground oversampling, crops, augmentation, 2.5-D context,
LR schedules, best-epoch checkpoint, TTA, largest component, preprocessing stored and re-applied,
2-D image/mask discovery, modality aliases; one CLI pipeline on a 2-D ultrasound-like phantom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402
from medtools.core import ckpt  # noqa: E402
from medtools.core.train import TrainSpec, fit, lr_factor, sibling_path  # noqa: E402

TINY = {"arch": "unet", "encoder": "tu-test_resnet", "in_channels": 1, "classes": 2, "encoder_depth": 3, "image_size": 32, "label_values": [0, 1]}


# -- sampling and batches ------------------------------------------------------------------
def test_foreground_oversampling_changes_the_batch_composition() -> None:
    from medtools.core.data import ForegroundBatchSampler

    foreground = np.zeros(300, dtype=bool)
    foreground[::10] = True  # 10 % of the slices contain the target
    def share(sampler) -> float:
        batches = list(sampler)
        return float(np.mean([foreground[b].mean() for b in batches]))

    plain = ForegroundBatchSampler(foreground, 6, share=0.0, batches=200, seed=1)
    over = ForegroundBatchSampler(foreground, 6, share=1 / 3, batches=200, seed=1)
    assert over.n_foreground == 2 and plain.n_foreground == 0
    assert abs(share(plain) - 0.1) < 0.03
    assert share(over) >= 1 / 3  # two forced + the uniform rest
    assert all(foreground[b[-2:]].all() for b in over)  # the forced ones are last (crops centre on them)
    over.set_epoch(1)
    first = list(over)
    over.set_epoch(1)
    assert first == list(over)  # a function of (seed, epoch): resume sees the same batches


def test_crops_centre_on_the_target_for_the_oversampled_items() -> None:
    from medtools.core.augment import crop_batch

    images = torch.zeros(4, 1, 96, 96)
    labels = torch.zeros(4, 96, 96, dtype=torch.long)
    labels[:, 80:84, 5:9] = 1  # a small target in a corner
    images[labels[:, None] > 0] = 1
    out_images, out_labels = crop_batch(images, labels, 32, n_foreground=2, generator=torch.Generator().manual_seed(0))
    assert out_images.shape == (4, 1, 32, 32) and out_labels.shape == (4, 32, 32)
    assert (out_labels[2:] > 0).flatten(1).any(1).all()
    assert torch.equal(out_images[:, 0] > 0, out_labels > 0)  # image and label cropped alike


def test_augmentation_moves_images_and_labels_together() -> None:
    from medtools.core.augment import NO_AUGMENT, augment_batch, parse_augment

    labels = torch.zeros(8, 40, 40, dtype=torch.long)
    labels[:, 5:15, 8:30] = 1
    images = labels[:, None].float()
    spec = parse_augment("rotate=30,scale=0.2,elastic=0.03,gamma=0,brightness=0,mirror=xy,p=1")
    out_images, out_labels = augment_batch(images, labels, spec, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out_labels, labels)  # something moved
    agree = ((out_images[:, 0] > 0.5) == (out_labels > 0)).float().mean()
    assert agree > 0.98  # bilinear edges aside, the label follows the image
    assert parse_augment("none") == NO_AUGMENT and parse_augment("mirror=y").mirror == "y"
    with pytest.raises(Exception, match="KEY=VALUE"):
        parse_augment("twist=3")


def test_context_stacks_neighbouring_slices_as_channels() -> None:
    from medtools.core.preprocess import stack_context

    slices = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 3, 3), np.float32)
    slices[:, 1] += 100  # second modality
    out = stack_context(slices, 1)
    assert out.shape == (5, 6, 3, 3)
    assert out[0, :, 0, 0].tolist() == [0, 100, 0, 100, 1, 101]  # edge repeats; offsets −1, 0, +1
    assert out[4, :, 0, 0].tolist() == [3, 103, 4, 104, 4, 104]


# -- the training loop: schedules and the best epoch ---------------------------------------
def test_lr_schedules() -> None:
    assert lr_factor(None, 5, 10) == 1.0
    assert lr_factor("poly", 0, 10) == 1.0 and lr_factor("poly", 10, 10) == 0.0
    assert abs(lr_factor("poly", 5, 10) - 0.5 ** 0.9) < 1e-9
    assert abs(lr_factor("cosine", 5, 10) - 0.5) < 1e-9


def test_keep_best_keeps_the_better_epoch(tmp_path: Path) -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    scores = iter([0.2, 0.9, 0.4])  # epoch 2 is the best
    snapshots = []

    def validate(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val_dice_mean": next(scores)}

    out = tmp_path / "m.safetensors"
    spec = TrainSpec(output=out, kind="test", config={"in_features": 4, "out_features": 2}, epochs=3, batch_size=4, lr=0.1, device="cpu", monitor="val_dice_mean", keep_best=True, schedule="cosine")
    result = fit(torch.nn.Linear(4, 2), data, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), spec, validate=validate)
    assert result["best_epoch"] == 2 and result["best"] == 0.9
    best, last = ckpt.load(out, kind="test"), ckpt.load(sibling_path(out, "last"), kind="test")
    assert best.provenance["best_epoch"] == 2
    torch.testing.assert_close(best.tensors["weight"], snapshots[1]["weight"])
    torch.testing.assert_close(last.tensors["weight"], snapshots[2]["weight"])
    assert not torch.equal(best.tensors["weight"], last.tensors["weight"])


# -- inference: TTA and post-processing -----------------------------------------------------
def test_tta_is_the_mean_of_the_flipped_predictions() -> None:
    from medtools.brain.segment import predict_probs
    from medtools.core.predict import Predictor

    torch.manual_seed(0)
    net = ckpt.new_model("seg", TINY).eval()
    predictor = Predictor.from_model(net, kind="seg", config=TINY)
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    expected = np.mean([np.flip(predictor.predict(np.ascontiguousarray(np.flip(x, d)), softmax=True), d) if d else predictor.predict(x, softmax=True) for d in ((), (-1,), (-2,), (-2, -1))], axis=0)
    got = predict_probs(predictor, x, tta=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, predictor.predict(x, softmax=True), atol=1e-4)  # it did something


def test_largest_component() -> None:
    from medtools.brain.segment import largest_component

    labels = np.zeros((10, 10, 3), np.uint8)
    labels[1:5, 1:5, :] = 1
    labels[7:9, 7:9, 1] = 4
    out = largest_component(labels)
    assert out[1:5, 1:5].min() == 1 and out[7:9, 7:9].max() == 0


# -- preprocessing stored and re-applied ----------------------------------------------------
def test_preprocessing_is_stored_and_reapplied(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from medtools.brain.segment import train_segmenter
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import apply_optional_steps, canonical_norm, load_image, normalise

    root = _ellipse_phantom(tmp_path / "us", n=4, size=48)
    out = tmp_path / "seg.safetensors"
    train_segmenter(root, out, encoder="tu-test_resnet", size=32, resize=[32, 48], epochs=1, batch_size=2, steps_per_epoch=1, val_fraction=0.25, strip_background=True, equalize="clahe", device="cpu", augment="none")
    loaded = ckpt.load(out, kind="seg")
    assert loaded.norm["strip_background"] == 0.05 and loaded.norm["equalize"] == "clahe" and loaded.config["image_size"] == [32, 48]
    predictor = Predictor(out, kind="seg", device="cpu")
    assert predictor.norm == canonical_norm(loaded.norm) and predictor.size == (32, 48)
    picture = next((root / "images").iterdir())
    raw = np.asarray(PILImage.open(picture), dtype=np.float32)
    plain, _ = normalise(raw, {"method": "percentile", "low": 0.5, "high": 99.5})
    expected = apply_optional_steps(plain, predictor.norm)
    np.testing.assert_allclose(load_image(picture, None, 1, predictor.norm)[0], expected, atol=1e-6)
    assert not np.allclose(expected, plain, atol=1e-3)  # the steps changed the image
    assert canonical_norm({}) == {"schema": 1, "method": "percentile", "low": 0.5, "high": 99.5}  # old checkpoints: unchanged


# -- manifests: 2-D pairs and modality aliases ----------------------------------------------
def test_manifest_pairs_images_with_masks_and_aliases(tmp_path: Path) -> None:
    from medtools.core.manifest import apply_aliases, discover

    root = _ellipse_phantom(tmp_path / "us", n=3, size=24)
    rows = discover([root])
    assert len(rows) == 3 and all(r["label"].endswith("_mask.png") and "masks" in r["label"] for r in rows)
    assert {r["patient"] for r in rows} == {"exam0", "exam1"}  # from labels.csv, not the file name
    beside = tmp_path / "beside"
    beside.mkdir()
    for path in (root / "images").iterdir():
        (beside / path.name).write_bytes(path.read_bytes())
        mask = root / "masks" / f"{path.stem}_mask.png"
        (beside / mask.name).write_bytes(mask.read_bytes())
    assert len(discover([beside])) == 3
    pooled = apply_aliases([{"patient": "01", "case": "01_Pre", "t1": "a.nii.gz"}], ["t1=t1ce"])
    assert pooled[0].get("t1ce") == "a.nii.gz" and "t1" not in pooled[0]


def _ellipse_phantom(root: Path, *, n: int, size: int, seed: int = 0) -> Path:
    """Ultrasound-like pictures: a bright elliptical rim with a darker inside on speckle, and
    the filled ellipse as the mask; images/ and masks/ folders and a labels.csv (exam ids)."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["filename,exam_id"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2) * size
        ry, rx = rng.uniform(0.18, 0.3, 2) * size
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        mask = r <= 1
        image = 40 + 25 * rng.rayleigh(1.0, (size, size)) + 120 * (np.abs(r - 1) < 0.25) + 30 * mask
        name = f"{i:03d}_HC"
        PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        PILImage.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{name}_mask.png")
        lines.append(f"{name}.png,exam{i % 2 if n <= 3 else i // 2}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


# -- one CLI pipeline: a 2-D ultrasound-like phantom learns above an empty mask --------------
def test_2d_pipeline_learns_above_an_empty_mask(tmp_path: Path) -> None:
    root = _ellipse_phantom(tmp_path / "us", n=16, size=64)
    model = tmp_path / "seg.safetensors"
    run_cli("seg-train", root, "-o", model, "--encoder", "tu-test_resnet", "--size", "64", "--epochs", "6", "--steps-per-epoch", "8",
            "-b", "4", "--lr", "3e-3", "--binary", "--val-fraction", "0.25", "--foreground-share", "0.5", "-q", check=True)
    assert sibling_path(model, "last").exists()
    held_out = _ellipse_phantom(tmp_path / "test", n=6, size=64, seed=1)  # pictures the model never saw
    proc = run_cli("segment", held_out / "images", "-m", model, "-o", tmp_path / "pred", "--tta", "--largest-component", "--json", check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["summary"]["ok"] == 6 and summary["run"]["options"] == {"tta": True, "largest_component": True, "resample": True}
    assert len(list((tmp_path / "pred").glob("*_seg.png"))) == 6
    scores = json.loads(run_cli("seg-eval", tmp_path / "pred", held_out, "--no-hd95", "--json", check=True).stdout)
    dice = scores["mean"]["label_255"]["dice"]  # the 0/255 masks are written back as 0/255
    assert dice > 0.8, scores["mean"]  # an empty mask scores 0 here (0.99 seen)


def test_an_input_size_the_architecture_cannot_take_is_refused_before_training():
    """smp's FPN needs sides divisible by 32: seg-train says so up front (exit 2), not mid-run."""
    from medtools.brain.segment import check_input_sizes
    from medtools.core import ckpt, registry
    from medtools.core.errors import UsageError

    registry.discover()
    model = ckpt.new_model("seg", {"arch": "fpn", "encoder": "tu-test_resnet", "in_channels": 1, "classes": 2})
    check_input_sizes(model, [(64, 64)], 1, "fpn")
    with pytest.raises(UsageError, match="divisible by 32"):
        check_input_sizes(model, [(72, 72)], 1, "fpn")
