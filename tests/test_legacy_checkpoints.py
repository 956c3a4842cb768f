"""Checkpoints written before the model layer (by commit 2e0abca's code) still load and predict.

tests/data/legacy/ holds a seg, a reid and a ddpm checkpoint saved by that code and the
outputs its own inference gave on a fixed input (expected.npz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medtools.core.predict import Predictor  # noqa: E402

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(LEGACY / "expected.npz"))


def test_reid_and_ddpm_give_the_old_outputs(expected) -> None:
    x = expected["x"]
    reid = Predictor(LEGACY / "reid.safetensors", kind="reid", device="cpu")
    assert reid.norm == {"schema": 1, "method": "percentile", "low": 0.5, "high": 99.5}
    np.testing.assert_allclose(reid.predict(x[:, :, :32, :32]), expected["reid"], rtol=1e-5, atol=1e-5)
    ddpm = Predictor(LEGACY / "ddpm.safetensors", kind="ddpm", device="cpu")
    model_input = x[:1, :1, :16, :16] * 2 - 1
    np.testing.assert_allclose(ddpm.predict(model_input, model_space=True, timesteps=10), expected["ddpm"], rtol=1e-5, atol=1e-5)


def test_seg_at_its_own_size_is_unchanged_and_resized_inputs_follow_training(expected) -> None:
    seg = Predictor(LEGACY / "seg.safetensors", kind="seg", device="cpu")
    x = expected["x"]  # 40×40 slices for a 32×32 model
    new = seg.predict(x, softmax=True)
    assert new.shape == expected["seg"].shape
    # the old inference resized without antialiasing while training resized with it; inference
    # now resizes as training did, so outputs move a little and the labels almost never
    assert (new.argmax(1) == expected["seg"].argmax(1)).mean() > 0.9
    assert not np.allclose(new, expected["seg"], atol=1e-6)
    crop = x[:, :, :32, :32]  # no resizing: exactly the old model output
    import torch.nn.functional as F  # noqa: F401

    again = seg.predict(crop, softmax=True)
    with torch.no_grad():
        direct = seg.model(torch.from_numpy(np.ascontiguousarray(crop))).softmax(1).numpy()
    np.testing.assert_allclose(again, direct, rtol=1e-5, atol=1e-6)


def test_bf16_inference_matches_fp32_within_tolerance(expected) -> None:
    x = expected["x"]
    fp32 = Predictor(LEGACY / "seg.safetensors", kind="seg", device="cpu", precision="fp32").predict(x, softmax=True)
    bf16 = Predictor(LEGACY / "seg.safetensors", kind="seg", device="cpu", precision="bf16").predict(x, softmax=True)
    assert np.abs(fp32 - bf16).max() < 0.05
    assert (fp32.argmax(1) == bf16.argmax(1)).mean() > 0.98


def test_run_record_names_the_device_the_predictor_used() -> None:
    from medtools.core import report

    Predictor(LEGACY / "reid.safetensors", kind="reid", device="cpu")
    assert report.RunRecord().as_dict()["device"] == "cpu"
