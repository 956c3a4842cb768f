"""core.data: patient splits, 2-D image sets and multi-modal slice sets from manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtools.core.data import build_image_set, build_slice_set, map_labels, split_by_patient
from medtools.core.preprocess import denormalise_intensity, load_image, normalise_intensity
from medtools.core.errors import InputError
from medtools.core.io import Image, write_image
from medtools.core.manifest import discover


def test_split_by_patient_never_shares_a_patient() -> None:
    rows = [{"patient": f"p{i % 7}", "case": str(i)} for i in range(30)]
    train, val = split_by_patient(rows, 0.3, seed=1)
    assert len(train) + len(val) == 30 and val
    assert not {r["patient"] for r in train} & {r["patient"] for r in val}
    assert split_by_patient(rows, 0.3, seed=1) == (train, val)  # deterministic
    assert split_by_patient(rows, 0.0, seed=1) == (rows, [])
    one = [{"patient": "only", "case": "a"}, {"patient": "only", "case": "b"}]
    assert split_by_patient(one, 0.5, seed=0) == (one, [])


def test_image_set_from_cxr_phantom(cxr_phantom: Path) -> None:
    rows = discover([cxr_phantom])
    data = build_image_set(rows, size=16)
    assert data.images.shape == (24, 1, 16, 16) and data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.classes == ["NORMAL", "PNEUMONIA"]
    for row, p, c in zip(rows, data.patient_index, data.class_index):
        assert data.patients[p] == row["patient"] and data.classes[c] == row["class"]


def test_slice_set_from_brain_phantom(brain_phantom: Path) -> None:
    rows = [r for r in discover([brain_phantom]) if r["patient"] in ("phantom-p001", "phantom-p002")]
    data = build_slice_set(rows, ["flair", "t1ce"], size=32, label_map={0: 0, 1: 1, 2: 2, 4: 3}, need_label=True)
    assert data.images.shape[1:] == (2, 32, 32)
    assert data.labels.shape == (len(data.images), 32, 32)
    assert set(np.unique(data.labels).tolist()) <= {0, 1, 2, 3} and 3 in data.labels
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.patients == ["phantom-p001", "phantom-p002"]
    assert set(data.patient_index.tolist()) == {0, 1} and len(data.cases) == 4
    dataset = data.torch_dataset("patient")
    assert len(dataset) == len(data)


def test_missing_modality_is_an_input_error(brain_phantom: Path) -> None:
    rows = discover([brain_phantom])[:1]
    del rows[0]["t2"]
    with pytest.raises(InputError, match="no t2"):
        build_slice_set(rows, ["t2"])


def test_load_gray_scales_by_bit_depth(tmp_path: Path) -> None:
    write_image(Image(np.array([[0, 65535], [32768, 0]], np.uint16), format="png"), tmp_path / "a.png")
    write_image(Image(np.array([[0, 255], [51, 0]], np.uint8), format="png"), tmp_path / "b.png")
    np.testing.assert_allclose(load_image(tmp_path / "a.png")[0], [[0, 1], [32768 / 65535, 0]], atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "b.png")[0], [[0, 1], [0.2, 0]], atol=1e-6)


def test_normalisation_ignores_background_and_is_invertible_inside_the_window() -> None:
    volume = np.zeros((8, 8, 4), np.float32)  # background at the minimum, as in MRI
    volume[2:6, 2:6] = np.random.default_rng(0).normal(500, 100, (4, 4, 4))
    normed, window = normalise_intensity(volume, low=0.0, high=100.0)
    head = volume > 0
    assert window == {"low": float(volume[head].min()), "high": float(volume[head].max())}
    assert normed[~head].max() == 0.0 and normed.max() == 1.0
    np.testing.assert_allclose(denormalise_intensity(normed, window)[head], volume[head], rtol=1e-5)


def test_map_labels_rejects_unknown_values() -> None:
    np.testing.assert_array_equal(map_labels(np.array([0, 1, 2, 4]), {0: 0, 1: 1, 2: 2, 4: 3}), [0, 1, 2, 3])
    with pytest.raises(InputError, match=r"\[3\]"):
        map_labels(np.array([0, 3]), {0: 0, 1: 1, 2: 2, 4: 3})
