"""Segmentation metrics against the references medical reports use (MONAI's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from medtools.brain.metrics import dice, hd95


def _blobs(seed: int, shape=(24, 20, 12)) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    b = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_is_monais_directed_maximum(seed: int) -> None:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    pred, truth = _blobs(seed)
    assert pred.any() and truth.any()
    spacing = (1.0, 1.5, 3.0)
    ours = hd95(pred, truth, spacing)
    theirs = metrics.compute_hausdorff_distance(
        torch.from_numpy(pred[None, None]), torch.from_numpy(truth[None, None]), percentile=95, spacing=list(spacing)
    ).item()
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def test_empty_masks() -> None:
    empty = np.zeros((8, 8), bool)
    assert dice(empty, empty) == 1.0 and np.isnan(hd95(empty, empty))
