"""explain on phantoms: Grad-CAM of a segmenter trained for seconds sits on the tumour, its
randomised twin's does not (and the checks flag it); the map keeps the input's geometry;
occlusion gives zero where the model does not look; a wrong --layer is a usage error."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("monai")
pytest.importorskip("captum")

from conftest import run_cli  # noqa: E402

SEG_FLAGS = ["--encoder", "resnet18", "--size", "64", "--epochs", "3", "--steps-per-epoch", "10", "-b", "8", "--modalities", "flair", "--binary", "--val-fraction", "0", "-q"]


@pytest.fixture(scope="module")
def seg(tmp_path_factory, brain_phantom):
    work = tmp_path_factory.mktemp("explain")
    run_cli("manifest", brain_phantom, "-o", work / "cases.csv", check=True)
    run_cli("seg-train", work / "cases.csv", "-o", work / "seg.safetensors", *SEG_FLAGS, check=True)
    return work / "seg.safetensors"


def _case(brain_phantom):
    folder = sorted(brain_phantom.iterdir())[0]
    return folder / f"{folder.name}_flair.nii.gz", folder / f"{folder.name}_seg.nii.gz"


def test_gradcam_on_the_tumour_and_the_randomised_twin_is_flagged(seg, brain_phantom):
    from medtools import api
    from medtools.explain.saliency import cascade_stages, reinitialised

    flair, label = _case(brain_phantom)
    image, mask = api.read_image(flair), api.read_image(label)
    model = api.load_model(seg, device="cpu")
    saliency, result = api.explain([image], model, mask=mask, check=True, ctx=api.RunContext(device="cpu"))
    assert saliency.array.shape == image.array.shape and np.allclose(saliency.affine, image.affine)
    trained = result["targets"][0]
    assert trained["localisation_mask"]["mass_inside"] > 0.5
    assert trained["faithfulness"]["deletion_auc"] < trained["faithfulness"]["deletion_auc_random"]
    assert not any(f.startswith("randomisation") for f in trained["flags"])

    twin = reinitialised(model, [s for step in cascade_stages(model.model) for s in step], seed=1)
    _, random_result = api.explain([image], twin, target="1", mask=mask, check=True)
    randomised = random_result["targets"][0]
    assert randomised["localisation_mask"]["mass_inside"] < 0.5 * trained["localisation_mask"]["mass_inside"]
    assert randomised["flags"] and not randomised["trusted"]


def test_cli_map_keeps_the_input_geometry_and_json(seg, brain_phantom, tmp_path):
    from medtools.core.io import read_image

    flair, label = _case(brain_phantom)
    proc = run_cli("explain", flair, "-m", seg, "-o", tmp_path, "--regions", label, "--json", "-q", check=True)
    record = json.loads(proc.stdout.splitlines()[0])
    shares = record["targets"][0]["regions"]  # the phantom's labels as regions: the tumour labels hold most of the mass
    assert sum(v["mass"] for v in shares.values()) == pytest.approx(1.0)
    assert shares["0"]["mass"] < 0.5 < shares["0"]["area"]
    written = read_image(record["outputs"][0])
    source = read_image(flair)
    assert written.array.shape == source.array.shape and written.array.dtype == np.float32
    assert np.allclose(written.affine, source.affine)
    assert record["layer"] == "decoder" and record["targets"][0]["target"] == "1"


def test_wrong_layer_is_exit_2_naming_the_valid_ones(seg, brain_phantom, tmp_path):
    flair, _ = _case(brain_phantom)
    proc = run_cli("explain", flair, "-m", seg, "-o", tmp_path, "--layer", "no.such.layer")
    assert proc.returncode == 2
    assert "encoder.layer4" in proc.stderr and "decoder" in proc.stderr


def test_occlusion_is_zero_where_the_model_does_not_look():
    import torch

    from medtools import api
    from medtools.core.io import Image
    from medtools.core.predict import Predictor

    class LeftHalf(torch.nn.Module):
        """Looks only at the left 16 columns of a 32×32 image."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x[..., :16])).mean((-2, -1)))

    predictor = Predictor.from_model(LeftHalf().eval(), kind="cls", config={"image_size": 32, "class_names": ["a", "b"], "in_channels": 1})
    rng = np.random.default_rng(0)
    image = Image(rng.integers(0, 255, (32, 32)).astype(np.uint8), format="png")
    saliency, result = api.explain([image], predictor, method="occlusion", target="a")
    left, right = saliency.array[:, :16], saliency.array[:, 20:]
    assert left.max() > 0
    assert np.all(right == 0)
    assert result["targets"][0]["target"] == "a"


def test_gradcam_leaves_no_hooks_on_a_shared_model_and_repeats():
    """A loaded model is reused across calls (api, serve): Grad-CAM must not leave hooks on it."""
    import torch

    from medtools import api
    from medtools.core.io import Image
    from medtools.core.predict import Predictor

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.layer4 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.layer4(torch.relu(self.conv(x)))).mean((-2, -1)))

    predictor = Predictor.from_model(Net().eval(), kind="cls", config={"image_size": 32, "class_names": ["a", "b"], "in_channels": 1})
    image = Image(np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8), format="png")
    first, _ = api.explain([image], predictor, method="gradcam", target="a", layer="layer4")
    second, _ = api.explain([image], predictor, method="gradcam", target="a", layer="layer4")
    assert np.array_equal(first.array, second.array)
    assert not predictor.model.layer4._forward_hooks and not predictor.model.layer4._backward_hooks


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_explain_leaves_a_shared_model_in_eval_mode_with_its_statistics(method):
    """A model with BatchNorm, loaded once: explaining must not switch it to training (its
    running statistics would drift and the next segmentation would change)."""
    import torch

    from medtools import api
    from medtools.core.io import Image
    from medtools.core.predict import Predictor

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer4 = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.layer4(x).mean((-2, -1)))

    predictor = Predictor.from_model(Net().eval(), kind="cls", config={"image_size": 32, "class_names": ["a", "b"], "in_channels": 1})
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    image = Image(np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8), format="png")
    api.explain([image], predictor, method=method, target="a", layer="layer4")
    assert not predictor.model.training
    assert all(torch.equal(v, before[k]) for k, v in predictor.model.state_dict().items())


def test_block_cipher_maps_return_to_the_plain_frame():
    from medtools.imagecipher import block

    key = bytes(range(32))
    plain = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    cipher = block.encrypt(plain, key, bits=16, block=8)
    positions = block.unshuffle(cipher, key, block=8)
    # negated values aside, every pixel is back where it was
    assert np.all((positions == plain) | (positions == (1 << 16) - 1 - plain))


# ----------------------------------------------------------------------------- the map in the same pass


def test_segment_explain_writes_the_map_beside_the_labels_as_explain_does(seg, brain_phantom, tmp_path):
    from medtools.core.io import read_image

    flair, _ = _case(brain_phantom)
    proc = run_cli("segment", flair, "-m", seg, "-o", tmp_path / "seg", "--explain", "gradcam", check=True)
    paths = proc.stdout.splitlines()
    stem = flair.name.replace(".nii.gz", "")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"{stem}_seg.nii.gz", f"{stem}_gradcam.nii.gz"]  # the map after the labels
    assert paths[0].rsplit("/", 1)[0] == paths[1].rsplit("/", 1)[0]  # beside it
    beside, source = read_image(paths[1]), read_image(flair)
    assert beside.array.shape == source.array.shape and np.allclose(beside.affine, source.affine)
    alone = run_cli("explain", flair, "-m", seg, "-o", tmp_path / "explain", check=True).stdout.splitlines()
    assert alone[0].rsplit("/", 1)[-1] == f"{stem}_gradcam.nii.gz"  # the name explain gives it
    assert np.array_equal(read_image(alone[0]).array, beside.array)  # and the same map

    record = json.loads(run_cli("segment", flair, "-m", seg, "-o", tmp_path / "json", "--explain", "gradcam", "--json", check=True).stdout.splitlines()[0])
    assert record["outputs"][1].endswith("_gradcam.nii.gz") and record["explain"]["method"] == "gradcam"
    assert record["explain"]["targets"][0]["localisation_prediction"]["mass_inside"] > record["explain"]["targets"][0]["localisation_prediction"]["area_share"]
    bad = run_cli("segment", flair, "-m", seg, "-o", tmp_path / "bad", "--explain", "lime")
    assert bad.returncode == 2 and "gradcam" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def block_cls(tmp_path_factory):
    """A tiny classifier trained behind the block cipher (8×8 blocks, 32×32) on phantom slices."""
    from medtools.phantom.generate import write_brain_phantoms

    root = tmp_path_factory.mktemp("explain-cls")
    write_brain_phantoms(root / "vol", patients=3, visits=1, size=32, slices=8, seed=0)
    key = root / "k.key"
    key.write_text(bytes(range(32)).hex() + "\n")
    key.chmod(0o600)
    run_cli("slices", root / "vol", "-o", root / "sl", "-q", check=True)
    run_cli("cls-train", root / "sl", "-o", root / "cls.safetensors", "--arch", "resnet10t", "--size", "32", "--block-size", "8",
            "--encryption", "block", "--key", key, "--epochs", "1", "--val-fraction", "0", "-q", check=True)
    return {"root": root, "key": key, "model": root / "cls.safetensors", "images": sorted((root / "sl" / "Tumor").glob("*.png"))[:2]}


def test_classify_explain_writes_the_plain_frame_map_as_explain_does(block_cls, tmp_path):
    import PIL.Image

    from medtools.core.io import read_image

    images, key, model = block_cls["images"], block_cls["key"], block_cls["model"]
    proc = run_cli("classify", *images, "-m", model, "--key", key, "--explain", "gradcam", "--explain-dir", tmp_path / "maps", check=True)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]
    for image, record in zip(images, records):
        assert record["explain"]["frame"] == "plain" and "block permutation" in record["explain"]["notes"][0]
        [written] = record["explain"]["outputs"]
        assert written == str(tmp_path / "maps" / image.name.replace(".png", "_gradcam.png"))
        overlay, source = np.asarray(PIL.Image.open(written)), read_image(image).array
        assert overlay.shape == (*source.shape[:2], 3)  # an RGB overlay on the plain image's grid
        alone = run_cli("explain", image, "-m", model, "--key", key, "-o", tmp_path / "alone", check=True).stdout.splitlines()
        assert np.array_equal(np.asarray(PIL.Image.open(alone[0])), overlay)
    table = run_cli("classify", images[0], "-m", model, "--key", key, "--csv", "--explain", "gradcam", "--explain-dir", tmp_path / "csv", check=True)
    header, row = table.stdout.splitlines()
    assert header.endswith(",explain") and row.endswith("_gradcam.png")
    assert run_cli("classify", images[0], "-m", model, "--key", key, "--explain", "gradcam").returncode == 2  # no --explain-dir


def _one_pixel_classifier(key: bytes | None, at: tuple[int, int]):
    """A classifier behind the block cipher (8×8 blocks, 32×32) whose score reads one cipher pixel."""
    import torch

    from medtools.cls.cipher import Encryption
    from medtools.cls.classify import Classifier
    from medtools.core.predict import Predictor

    class OnePixel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
            torch.nn.init.ones_(self.conv.weight)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value = self.conv(x)[:, 0, at[0], at[1]]
            return torch.stack([5 * value, -5 * value], 1)

    classifier = Classifier.__new__(Classifier)
    classifier.predictor = Predictor.from_model(OnePixel().eval(), kind="cls", config={"image_size": 32, "class_names": ["a", "b"], "in_channels": 1})
    classifier.encryption = Encryption("block", key, 8) if key is not None else None
    classifier.method, classifier.size, classifier.class_names, classifier.positive = "block", 32, ["a", "b"], "b"
    classifier.config = classifier.predictor.config
    return classifier


def test_block_cipher_map_comes_back_in_the_plain_frame():
    """The model reads one cipher pixel: with the key, the map sits on the plain pixel the cipher
    moves there (found by encrypting a changed plain image), not on the cipher position."""
    from medtools import api
    from medtools.core.io import Image
    from medtools.imagecipher import block

    key, at = bytes(range(32)), (13, 22)
    plain = np.random.default_rng(0).integers(20, 235, (32, 32)).astype(np.uint8)
    saliency, result = api.explain([Image(plain, format="png")], _one_pixel_classifier(key, at), method="ig", target="a")
    assert result["frame"] == "plain"
    hot = np.unravel_index(int(np.argmax(saliency.array)), saliency.array.shape)
    assert np.count_nonzero(saliency.array) == 1 and hot != at
    changed = plain.copy()
    changed[hot] += 10
    differs = np.argwhere(block.encrypt(changed, key, bits=8, block=8) != block.encrypt(plain, key, bits=8, block=8))
    assert [tuple(int(v) for v in d) for d in differs] == [at]  # the plain pixel behind the cipher pixel the model reads

    cipher = block.encrypt(plain, key, bits=8, block=8)
    in_cipher, without_key = api.explain([Image(cipher, format="png")], _one_pixel_classifier(None, at), method="ig", target="a")
    assert without_key["frame"] == "cipher" and np.unravel_index(int(np.argmax(in_cipher.array)), (32, 32)) == at


def test_regions_give_each_label_its_share_of_the_mass():
    import torch

    from medtools import api
    from medtools.core.errors import InputError
    from medtools.core.io import Image
    from medtools.core.predict import Predictor

    class LeftHalf(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x[..., :12])).mean((-2, -1)))

    predictor = Predictor.from_model(LeftHalf().eval(), kind="cls", config={"image_size": 32, "class_names": ["a", "b"], "in_channels": 1})
    image = Image(np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8), format="png")
    labels = np.full((32, 32), 2, np.uint8)
    labels[:, :16] = 1
    labels[:4] = 0
    _, result = api.explain([image], predictor, method="ig", target="a", regions=Image(labels, format="png"))
    shares = result["targets"][0]["regions"]
    assert shares["2"]["mass"] == 0.0 and shares["2"]["area"] == pytest.approx(16 * 28 / 1024)
    assert shares["1"]["mass"] > 0.8 and shares["0"]["mass"] + shares["1"]["mass"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="region label map"):
        api.explain([image], predictor, method="ig", target="a", regions=Image(labels[:16], format="png"))
