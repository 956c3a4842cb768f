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

    flair, _ = _case(brain_phantom)
    proc = run_cli("explain", flair, "-m", seg, "-o", tmp_path, "--json", "-q", check=True)
    record = json.loads(proc.stdout.splitlines()[0])
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
