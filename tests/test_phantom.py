"""Phantoms: BraTS layout and labels, real affine, determinism, stable patient identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medtools.core.io import read_image
from medtools.phantom.generate import BRAIN_MODALITIES, brain_volume, cxr_image, write_cxr_phantoms

SIZE, SLICES = 48, 12


def volumes(seed: int, patient: int, visit: int):
    return brain_volume(seed, patient, visit, size=SIZE, slices=SLICES)


def test_brain_layout_labels_and_affine(brain_phantom: Path) -> None:
    cases = sorted(p.name for p in brain_phantom.iterdir())
    assert cases == [f"phantom-p{p:03d}_v{v}" for p in range(1, 5) for v in (1, 2)]
    case = brain_phantom / cases[0]
    assert sorted(p.name for p in case.iterdir()) == sorted(f"{cases[0]}_{m}.nii.gz" for m in (*BRAIN_MODALITIES, "seg"))
    label = read_image(case / f"{cases[0]}_seg.nii.gz")
    assert label.array.dtype == np.uint8
    values = set()
    for seg in brain_phantom.glob("*/*_seg.nii.gz"):
        found = set(np.unique(read_image(seg).array).tolist())
        assert {0, 2, 4} <= found <= {0, 1, 2, 4}, seg  # BraTS: 1 necrotic core, 2 edema, 4 enhancing
        values |= found
    assert values == {0, 1, 2, 4}
    flair = read_image(case / f"{cases[0]}_flair.nii.gz")
    assert flair.array.shape == label.array.shape == (64, 64, 12)
    np.testing.assert_allclose(flair.affine, label.affine)
    np.testing.assert_allclose(flair.spacing, (1.5, 1.5, 4.0))
    assert abs(np.linalg.det(flair.affine[:3, :3])) > 0
    centre = flair.affine @ [31.5, 31.5, 5.5, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-6)  # volume centred on the origin


def test_tumor_shows_in_every_modality_where_labelled() -> None:
    mods, label = volumes(0, 1, 1)
    brain = mods["t1"] > 0.5 * np.percentile(mods["t1"], 99)
    for name in ("flair", "t1ce"):
        inside = mods[name][label == 4].mean() if name == "t1ce" else mods[name][label == 2].mean()
        assert inside > mods[name][brain & (label == 0)].mean()  # enhancing bright on t1ce, edema on flair


def test_same_seed_same_arrays_other_seed_different() -> None:
    a_mods, a_label = volumes(0, 2, 1)
    b_mods, b_label = volumes(0, 2, 1)
    c_mods, _ = volumes(1, 2, 1)
    for name in BRAIN_MODALITIES:
        np.testing.assert_array_equal(a_mods[name], b_mods[name])
        assert not np.array_equal(a_mods[name], c_mods[name])
    np.testing.assert_array_equal(a_label, b_label)
    np.testing.assert_array_equal(cxr_image(0, 3, 1, pneumonia=True, size=32), cxr_image(0, 3, 1, pneumonia=True, size=32))
    assert not np.array_equal(cxr_image(0, 3, 1, pneumonia=True, size=32), cxr_image(1, 3, 1, pneumonia=True, size=32))


def test_cli_brain_is_deterministic_on_disk(tmp_path: Path) -> None:
    for name in ("a", "b"):
        proc = run_cli("phantom", "brain", "-n", "1", "--visits", "1", "--size", "16", "--slices", "4", "--seed", "3", "-o", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
    for path in sorted((tmp_path / "a").rglob("*.nii.gz")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        np.testing.assert_array_equal(read_image(path).array, read_image(twin).array)


def test_patient_identity_is_stable_across_visits() -> None:
    """A visit looks more like the same patient's other visit than like anyone else's."""
    patients = range(1, 6)
    first = {p: volumes(0, p, 1) for p in patients}
    second = {p: volumes(0, p, 2) for p in patients}

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    same = [corr(first[p][0]["t1"], second[p][0]["t1"]) for p in patients]
    other = [corr(first[p][0]["t1"], second[q][0]["t1"]) for p in patients for q in patients if p != q]
    assert np.mean(same) > np.mean(other) + 0.03, (same, other)

    # the tumor stays where it was (pose moves it by a voxel or two) and grows
    def centre(label: np.ndarray) -> np.ndarray:
        return np.argwhere(label > 0).mean(axis=0)

    for p in patients:
        assert np.linalg.norm(centre(first[p][1]) - centre(second[p][1])) < 4.0, p
        assert (second[p][1] > 0).sum() > (first[p][1] > 0).sum(), p


def test_visits_differ() -> None:
    (a, _), (b, _) = volumes(0, 1, 1), volumes(0, 1, 2)
    assert not np.array_equal(a["flair"], b["flair"])


def test_cxr_names_classes_and_patients(tmp_path: Path) -> None:
    written = write_cxr_phantoms(tmp_path, n=12, patients=6, size=32, seed=0)
    assert len(written) == 12
    by_class = {c: sorted(p.name for p in (tmp_path / c).iterdir()) for c in ("NORMAL", "PNEUMONIA")}
    assert len(by_class["NORMAL"]) == len(by_class["PNEUMONIA"]) == 6  # half of the patients each
    for cls, names in by_class.items():
        for name in names:
            patient, index, suffix = name[:-4].split("-")
            assert patient.startswith("p") and suffix == cls.lower() and index in ("01", "02")
    patients_per_class = [{n.split("-")[0] for n in names} for names in by_class.values()]
    assert not patients_per_class[0] & patients_per_class[1]  # a patient has one class
    image = read_image(written[0])
    assert image.array.shape == (32, 32) and image.array.dtype == np.uint8 and image.meta["bits"] == 8


@pytest.mark.parametrize("patients", [2, 3, 4])
def test_small_cxr_sets_have_both_classes(tmp_path: Path, patients: int) -> None:
    for seed in range(4):
        folder = tmp_path / f"{patients}-{seed}"
        write_cxr_phantoms(folder, n=patients, patients=patients, size=16, seed=seed)
        assert sorted(p.name for p in folder.iterdir()) == ["NORMAL", "PNEUMONIA"], seed


@pytest.mark.parametrize("patient", [1, 2, 3])
def test_pneumonia_image_is_its_normal_twin_plus_opacities(patient: int) -> None:
    normal = cxr_image(0, patient, 1, pneumonia=False, size=64).astype(int)
    sick = cxr_image(0, patient, 1, pneumonia=True, size=64).astype(int)
    difference = sick - normal
    assert difference.min() >= 0 and difference.max() > 30
    assert (difference > 10).mean() > 0.01  # a visible blob, not a speck


def test_existing_phantoms_are_skipped_unless_overwrite(tmp_path: Path) -> None:
    args = ("phantom", "cxr", "-n", "2", "--size", "16", "-o", tmp_path)
    assert len(run_cli(*args, check=True).stdout.split()) == 2
    assert run_cli(*args, check=True).stdout == ""
    assert len(run_cli(*args, "--overwrite", check=True).stdout.split()) == 2
