"""The same anatomy gets the same answer whatever its storage order, spacing or dimensionality,
and a shared checkpoint names no patient.

A tiny segmenter is trained once (32² phantoms, 6 epochs of 8 steps, about 10 s); one phantom scan is
then stored again with permuted and flipped array axes (a consistent affine: identical world
geometry) and resampled in-plane ×2, and every copy is segmented by the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

nib = pytest.importorskip("nibabel")


def _reordered(array: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored in another array order: axes ``perm`` of the original, then the
    axes ``flips`` of the result reversed; the affine follows, so world positions are unchanged."""
    out = np.transpose(array, perm)
    aff = affine[:, [*perm, 3]].copy()
    for axis in flips:
        out = np.flip(out, axis)
        aff[:3, 3] += aff[:3, axis] * (out.shape[axis] - 1)
        aff[:3, axis] *= -1
    return np.ascontiguousarray(out), aff


def _back(array: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]) -> np.ndarray:
    """Undo :func:`_reordered` on an output stored like its input (extra trailing axes kept)."""
    for axis in reversed(flips):
        array = np.flip(array, axis)
    inverse = np.argsort(perm)
    return np.transpose(array, (*inverse, *range(3, array.ndim)))


def _upsampled(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane ×2 with half the spacing over the same field of view (voxel centres moved by a
    quarter of an old voxel so the grids cover the same world box)."""
    from skimage.transform import resize

    up = resize(array.astype(np.float32), (array.shape[0] * 2, array.shape[1] * 2, array.shape[2]), order=1, mode="edge", preserve_range=True)
    aff = affine.copy()
    aff[:3, 3] -= 0.25 * (aff[:3, 0] + aff[:3, 1])
    aff[:3, :2] /= 2
    return up.astype(np.float32), aff


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


PERMS = {"permuted": ((2, 0, 1), ()), "flipped": ((0, 1, 2), (0, 2)), "permuted-flipped": ((1, 2, 0), (1,))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-patient phantom, a one-modality segmenter trained by seg-train, and the scan copies."""
    from medtools.phantom.generate import write_brain_phantoms

    work = tmp_path_factory.mktemp("geometry")
    data = work / "data"
    write_brain_phantoms(data, patients=3, visits=1, size=32, slices=6, seed=0)
    run_cli("manifest", data, "-o", work / "cases.csv", check=True)
    model = work / "seg.safetensors"
    run_cli("seg-train", work / "cases.csv", "-o", model, "--encoder", "tu-test_resnet", "--size", "32", "--epochs", "6", "--steps-per-epoch", "8", "-b", "8", "--modalities", "flair", "--binary", "-q", check=True)
    scan = nib.load(str(next(data.rglob("*_flair.nii.gz"))))
    array, affine = np.asarray(scan.dataobj).astype(np.float32), scan.affine
    inputs = work / "inputs"
    _save(array, affine, inputs / "original.nii.gz")
    for name, (perm, flips) in PERMS.items():
        _save(*_reordered(array, affine, perm, flips), inputs / f"{name}.nii.gz")
    _save(*_upsampled(array, affine), inputs / "resampled.nii.gz")
    out = work / "out"
    proc = run_cli("segment", inputs, "-m", model, "-o", out, "--probabilities", "-b", "64")
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "data": data, "model": model, "inputs": inputs, "out": out, "array": array, "affine": affine}


def _outputs(trained, name: str) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    labels = nib.load(str(trained["out"] / f"{name}_seg.nii.gz"))
    probs = np.asarray(nib.load(str(trained["out"] / f"{name}_seg_prob.nii.gz")).dataobj)
    return np.asarray(labels.dataobj), probs, labels


def test_the_checkpoint_records_its_training_geometry(trained) -> None:
    from medtools.core import ckpt

    norm = json.loads(ckpt.read_metadata(trained["model"])["medtools.norm"])
    assert norm["geometry"] == {"orientation": "".join(nib.aff2axcodes(trained["affine"])), "spacing": [1.5, 1.5, 4.0], "axis": 2}
    info = run_cli("info", trained["model"], check=True)
    assert "geometry" in info.stdout and "LPS" in info.stdout


@pytest.mark.parametrize("name", sorted(PERMS))
def test_permuted_and_flipped_storage_gives_the_same_labels(trained, name) -> None:
    """Same voxels and world geometry, another array order: the same label map once mapped
    back (the model sees identical slices), on the input's own shape and affine."""
    perm, flips = PERMS[name]
    reference, reference_probs, _ = _outputs(trained, "original")
    labels, probs, image = _outputs(trained, name)
    source = nib.load(str(trained["inputs"] / f"{name}.nii.gz"))
    assert labels.shape == source.shape and np.allclose(image.affine, source.affine)
    back = _back(labels, perm, flips)
    assert back.shape == reference.shape
    assert reference.any() and _dice(back, reference) >= 0.99 and (back == reference).mean() >= 0.99
    np.testing.assert_allclose(_back(probs, perm, flips), reference_probs, atol=1e-4)


def test_an_in_plane_resampled_copy_gives_nearly_the_same_labels(trained) -> None:
    from skimage.transform import resize

    reference, reference_probs, _ = _outputs(trained, "original")
    labels, probs, image = _outputs(trained, "resampled")
    source = nib.load(str(trained["inputs"] / "resampled.nii.gz"))
    assert labels.shape == source.shape and np.allclose(image.affine, source.affine)
    down = resize(labels, reference.shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    assert reference.any() and (down == reference).mean() >= 0.97 and _dice(down, reference) >= 0.9
    down_probs = resize(probs, reference_probs.shape, order=1, preserve_range=True, anti_aliasing=True)
    assert np.abs(down_probs - reference_probs).mean() < 0.05


def test_grid_map_is_exact_both_ways() -> None:
    """nibabel's orientation tools: a reordered array maps onto the original grid exactly and
    back onto its own; a ×2 in-plane copy maps onto the training grid's shape."""
    from medtools.core.io.geometry import GridMap, axcodes, training_geometry, voxel_sizes

    rng = np.random.default_rng(0)
    array = rng.random((10, 8, 5)).astype(np.float32)
    affine = np.diag([-1.5, -1.5, 4.0, 1.0])
    geometry = training_geometry([(axcodes(affine), voxel_sizes(affine))])
    assert geometry == {"orientation": "LPS", "spacing": [1.5, 1.5, 4.0], "axis": 2}
    for perm, flips in PERMS.values():
        stored, aff = _reordered(array, affine, perm, flips)
        grid = GridMap.build(stored.shape, aff, geometry)
        np.testing.assert_array_equal(grid.to_model(stored), array)
        np.testing.assert_array_equal(grid.from_model(array), stored)
        extra = np.stack([array, 2 * array], axis=-1)  # trailing class axis
        np.testing.assert_array_equal(grid.from_model(extra), np.stack([stored, 2 * stored], axis=-1))
    up, aff = _upsampled(array, affine)
    grid = GridMap.build(up.shape, aff, geometry)
    assert grid.model == array.shape and grid.from_model(array).shape == up.shape
    assert GridMap.build(up.shape, aff, geometry, resample=False).model == up.shape


def test_a_bad_recorded_geometry_is_a_checkpoint_error() -> None:
    from medtools.core.errors import CheckpointError
    from medtools.core.preprocess import canonical_norm

    assert "geometry" not in canonical_norm({})  # old checkpoints: nothing added
    with pytest.raises(CheckpointError, match="axis codes"):
        canonical_norm({"geometry": {"orientation": "LLS", "spacing": [1, 1, 1], "axis": 2}})
    with pytest.raises(CheckpointError, match="spacing"):
        canonical_norm({"geometry": {"orientation": "RAS", "spacing": [1, 0, 1], "axis": 2}})


def test_a_4d_series_is_an_item_error_or_one_chosen_volume(trained, tmp_path) -> None:
    array = np.stack([trained["array"], trained["array"][::-1]], axis=-1)  # 32×32×6×2
    series = _save(array, trained["affine"], tmp_path / "in" / "series.nii.gz")
    _save(trained["array"], trained["affine"], tmp_path / "in" / "plain.nii.gz")
    proc = run_cli("segment", tmp_path / "in", "-m", trained["model"], "-o", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "series" in proc.stderr and "32×32×6×2" in proc.stderr and "--volume N" in proc.stderr
    assert (tmp_path / "out" / "plain_seg.nii.gz").is_file()  # the batch went on
    proc = run_cli("segment", series, "-m", trained["model"], "-o", tmp_path / "one", "--volume", "0")
    assert proc.returncode == 0, proc.stderr
    out = nib.load(str(tmp_path / "one" / "series_seg.nii.gz"))
    assert out.shape == (32, 32, 6) and np.allclose(out.affine, trained["affine"])
    reference = np.asarray(nib.load(str(trained["out"] / "original_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(np.asarray(out.dataobj), reference)
    proc = run_cli("segment", series, "-m", trained["model"], "-o", tmp_path / "bad", "--volume", "5")
    assert proc.returncode == 5 and "out of range" in proc.stderr and "Traceback" not in proc.stderr  # every item failed: no usable input
    # the other readers of volumes: a 4-D prediction or truth is an input error, not a traceback
    proc = run_cli("seg-eval", tmp_path / "in", tmp_path / "in")
    assert "Traceback" not in proc.stderr and proc.returncode != 0 and "--volume" in proc.stderr
    proc = run_cli("info", series)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


def test_a_checkpoint_without_geometry_keeps_slicing_as_stored_and_says_so(trained, tmp_path) -> None:
    """An old checkpoint (no geometry in medtools.norm): the array's last axis, as before."""
    from safetensors.torch import load_file, save_file

    from medtools.core import ckpt

    meta = ckpt.read_metadata(trained["model"])
    norm = json.loads(meta["medtools.norm"])
    del norm["geometry"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(trained["model"])), str(old), metadata={**meta, "medtools.norm": json.dumps(norm)})
    proc = run_cli("segment", trained["inputs"] / "permuted.nii.gz", trained["inputs"] / "original.nii.gz", "-m", old, "-o", tmp_path / "out", "--probabilities")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no training geometry recorded") == 1
    original = np.asarray(nib.load(str(tmp_path / "out" / "original_seg_prob.nii.gz")).dataobj)
    np.testing.assert_allclose(original, _outputs(trained, "original")[1], atol=1e-5)  # the training orientation: unchanged


def test_a_trained_checkpoint_names_no_patient_case_or_path(trained) -> None:
    """Scan every checkpoint seg-train wrote (header bytes and metadata) for the manifest's
    patient and case ids and any path: only counts and the manifest's hash are there."""
    from medtools.core import ckpt
    from medtools.core.manifest import read_csv

    rows = read_csv(trained["work"] / "cases.csv")
    ids = {r["patient"] for r in rows} | {r["case"] for r in rows}
    assert ids
    stem = trained["model"].name[: -len(".safetensors")]
    written = sorted(trained["model"].parent.glob(f"{stem}*.safetensors"))  # seg-train's files only (the attacker fixture writes a reid checkpoint beside them)
    assert trained["model"] in written
    for path in written:
        raw = path.read_bytes()
        header = raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()
        for secret in ids | {str(trained["work"]), str(trained["data"]), "/tmp", str(Path.home())}:
            assert secret not in header, f"{path.name} holds {secret!r}"
    meta = ckpt.load(trained["model"], tensors=False).provenance
    assert meta["train_cases"] + meta["val_cases"] == len(rows) and len(meta["data_sha256"]) == 64
    info = run_cli("info", trained["model"], check=True).stdout
    assert "data_sha256" in info and not any(i in info for i in ids)


@pytest.fixture(scope="module")
def attacker(trained):
    """A tiny re-identification attacker trained by reid-train on the same phantom cases."""
    model = trained["work"] / "reid.safetensors"
    run_cli("reid-train", trained["work"] / "cases.csv", "-o", model, "--arch", "test_resnet", "--size", "32", "--epochs", "1", "--steps-per-epoch", "2", "-b", "4", "--modalities", "flair", "-q", check=True)
    return model


def test_a_reid_checkpoint_holds_no_path_or_case_id(trained, attacker) -> None:
    """The attacker names the identities it outputs (class_names: its job), nothing else:
    no manifest path, no case ids, no data folder."""
    from medtools.core.manifest import read_csv

    raw = attacker.read_bytes()
    header = raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()
    for secret in {r["case"] for r in read_csv(trained["work"] / "cases.csv")} | {str(trained["work"]), "/tmp"}:
        assert secret not in header, secret
    assert "data_sha256" in header


def test_the_attacker_records_its_geometry_and_reads_any_storage_order_alike(trained, attacker) -> None:
    """reid-train records the training geometry; the attacker's scores of a scan do not depend
    on the order its axes are stored in (api.reid_scores, the path serve takes)."""
    from medtools import api
    from medtools.core import ckpt
    from medtools.core.io import read_image

    norm = json.loads(ckpt.read_metadata(attacker)["medtools.norm"])
    assert norm["geometry"] == {"orientation": "".join(nib.aff2axcodes(trained["affine"])), "spacing": [1.5, 1.5, 4.0], "axis": 2}
    reference = api.reid_scores(read_image(trained["inputs"] / "original.nii.gz"), attacker, top=3)
    for name in PERMS:
        scores = api.reid_scores(read_image(trained["inputs"] / f"{name}.nii.gz"), attacker, top=3)
        assert [t["identity"] for t in scores["top"]] == [t["identity"] for t in reference["top"]] and scores["slices"] == reference["slices"]
        np.testing.assert_allclose([t["probability"] for t in scores["top"]], [t["probability"] for t in reference["top"]], atol=1e-5)


def test_reid_eval_maps_stored_orders_into_the_training_geometry(trained, attacker, tmp_path) -> None:
    """The same cases stored with permuted axes: reid-eval scores them exactly as the originals."""
    import csv

    from medtools.core.manifest import read_csv

    rows = read_csv(trained["work"] / "cases.csv")
    perm, flips = PERMS["permuted-flipped"]
    moved = []
    for row in rows:
        scan = nib.load(row["flair"])
        path = _save(*_reordered(np.asarray(scan.dataobj).astype(np.float32), scan.affine, perm, flips), tmp_path / f"{row['case']}_flair.nii.gz")
        moved.append({**{k: v for k, v in row.items() if k not in ("label", "t1", "t1ce", "t2")}, "flair": str(path)})
    with open(tmp_path / "moved.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(moved[0]))
        writer.writeheader()
        writer.writerows(moved)
    plain = json.loads(run_cli("reid-eval", trained["work"] / "cases.csv", "-m", attacker, "--json", check=True).stdout)
    permuted = json.loads(run_cli("reid-eval", tmp_path / "moved.csv", "-m", attacker, "--json", check=True).stdout)
    assert permuted["items"] == plain["items"] and permuted["top1"] == pytest.approx(plain["top1"])


def test_protect_gives_the_same_voxels_whatever_the_storage_order(trained, attacker, tmp_path) -> None:
    """The noise is computed in the training geometry and mapped back exactly: a permuted and
    flipped copy, protected with the same seed, holds the original's protected voxels in its own
    order, on its own shape, affine and header."""
    outputs = {}
    for name in ("original", "permuted-flipped"):
        source = trained["inputs"] / f"{name}.nii.gz"
        run_cli("protect", source, "-a", attacker, "-o", tmp_path / name, "--steps", "2", "--seed", "0", "-q", check=True)
        out = nib.load(str(tmp_path / name / f"{name}.nii.gz"))
        given = nib.load(str(source))
        assert out.shape == given.shape and np.allclose(out.affine, given.affine) and out.get_data_dtype() == given.get_data_dtype()
        outputs[name] = np.asarray(out.dataobj)
    perm, flips = PERMS["permuted-flipped"]
    noise = outputs["original"] - trained["array"]
    assert np.abs(noise).max() > 0
    np.testing.assert_allclose(_back(outputs["permuted-flipped"], perm, flips), outputs["original"], atol=1e-5)


def test_protect_maps_noise_back_onto_a_resampled_grid(trained, attacker, tmp_path) -> None:
    """An in-plane ×2 copy: protected on the training spacing, written on its own grid, the noise
    within the budget and the voxels otherwise the input's."""
    source = trained["inputs"] / "resampled.nii.gz"
    first = run_cli("protect", source, "-a", attacker, "-o", tmp_path, "--steps", "2", "--json", check=True).stdout.splitlines()[0]
    assert json.loads(first)["case"] == "resampled"
    given = nib.load(str(source))
    out = nib.load(str(tmp_path / "resampled.nii.gz"))
    assert out.shape == given.shape and np.allclose(out.affine, given.affine)
    raw = np.asarray(given.dataobj)
    noise = np.asarray(out.dataobj) - raw
    assert 0 < np.abs(noise).max() <= 0.05 * (raw.max() - raw.min()) + 1e-4


def test_a_4d_series_is_an_item_error_for_every_reader_of_volumes(trained, attacker, tmp_path) -> None:
    """protect, slices, seg-eval and info given a 4-D series: the documented item error (its
    shape, one 3-D volume needed) or, for info, a description; never a traceback."""
    array = np.stack([trained["array"], trained["array"][::-1]], axis=-1)  # 32×32×6×2
    series = _save(array, trained["affine"], tmp_path / "in" / "series.nii.gz")
    proc = run_cli("protect", series, "-a", attacker, "-o", tmp_path / "protected", "--steps", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "32×32×6×2" in proc.stderr and "one 3-D volume" in proc.stderr
    case = tmp_path / "data" / "P1" / "V1"
    _save(array, trained["affine"], case / "P1_V1_flair.nii.gz")
    _save((array > array.mean()).astype(np.uint8), trained["affine"], case / "P1_V1_seg.nii.gz")
    proc = run_cli("slices", tmp_path / "data", "-o", tmp_path / "slices")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "32×32×6×2" in proc.stderr and "one 3-D volume" in proc.stderr
    proc = run_cli("seg-eval", series, series)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "32×32×6×2" in proc.stderr
    proc = run_cli("info", series)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "32" in proc.stdout


def test_slices_cuts_a_permuted_case_in_the_data_sets_geometry(trained, tmp_path) -> None:
    """slices: one case stored with permuted and flipped axes among cases stored as usual gives
    the same axial PNG slices as when it is stored as usual."""
    import shutil

    perm, flips = PERMS["permuted-flipped"]
    moved = tmp_path / "moved"
    shutil.copytree(trained["data"], moved)
    folder = sorted(p for p in moved.iterdir() if p.is_dir())[0]
    for path in folder.glob("*.nii.gz"):
        scan = nib.load(str(path))
        _save(*_reordered(np.asarray(scan.dataobj), scan.affine, perm, flips), path)
    run_cli("slices", trained["data"], "-o", tmp_path / "plain", "--min-area", "1", "-q", check=True)
    run_cli("slices", moved, "-o", tmp_path / "moved-slices", "--min-area", "1", "-q", check=True)
    plain = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob(f"*{folder.name}*.png"))
    assert plain and plain == sorted(p.relative_to(tmp_path / "moved-slices") for p in (tmp_path / "moved-slices").rglob(f"*{folder.name}*.png"))
    for rel in plain:
        assert (tmp_path / "plain" / rel).read_bytes() == (tmp_path / "moved-slices" / rel).read_bytes(), rel


def test_index_features_and_explain_read_a_volume_in_the_training_geometry(trained, attacker, tmp_path) -> None:
    """The index's features take a volume's middle slice in the model's training geometry (the
    same for any storage order; a 4-D series is an input error), and a reid saliency map of a
    permuted copy is the original's map in the copy's order."""
    from medtools import api
    from medtools.core.errors import InputError
    from medtools.core.io import read_image
    from medtools.core.predict import Predictor
    from medtools.index.features import load

    predictor = Predictor(attacker, kind="reid")
    perm, flips = PERMS["permuted-flipped"]
    original = read_image(trained["inputs"] / "original.nii.gz")
    moved = read_image(trained["inputs"] / "permuted-flipped.nii.gz")
    np.testing.assert_array_equal(load(predictor, moved), load(predictor, original))
    series = _save(np.stack([trained["array"]] * 2, axis=-1), trained["affine"], tmp_path / "series.nii.gz")
    with pytest.raises(InputError, match="one 3-D volume"):
        load(predictor, series)
    reference, _ = api.explain(original, attacker, method="gradcam")  # a fresh load each: a reused Predictor's second map differs
    saliency, _ = api.explain(moved, attacker, method="gradcam")
    assert saliency.array.shape == moved.array.shape
    np.testing.assert_allclose(_back(saliency.array, perm, flips), reference.array, atol=1e-5)


def test_seg_eval_attack_scores_a_permuted_case_as_the_original(trained, tmp_path) -> None:
    """seg-eval --attack maps each case and its truth into the training geometry: the same case
    stored with permuted axes gets the same Dice curve."""
    import shutil

    perm, flips = PERMS["permuted"]
    case = sorted(p for p in trained["data"].iterdir() if p.is_dir())[0]
    shutil.copytree(case, tmp_path / "plain" / case.name)
    moved = tmp_path / "moved" / case.name
    shutil.copytree(case, moved)
    for path in moved.glob("*.nii.gz"):
        scan = nib.load(str(path))
        _save(*_reordered(np.asarray(scan.dataobj), scan.affine, perm, flips), path)
    curves = [json.loads(run_cli("seg-eval", tmp_path / name, "--attack", "fgsm", "-m", trained["model"], "--eps", "0,0.02", "--json", check=True).stdout)["dice"] for name in ("plain", "moved")]
    assert curves[0] and set(curves[0]) == set(curves[1])
    for region in curves[0]:
        assert curves[0][region] == pytest.approx(curves[1][region], abs=1e-6)


def test_an_attacker_without_geometry_reads_volumes_as_stored_and_says_so(trained, attacker, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from medtools.core import ckpt

    meta = ckpt.read_metadata(attacker)
    norm = json.loads(meta["medtools.norm"])
    del norm["geometry"]
    old = tmp_path / "old-reid.safetensors"
    save_file(load_file(str(attacker)), str(old), metadata={**meta, "medtools.norm": json.dumps(norm)})
    proc = run_cli("reid-eval", trained["work"] / "cases.csv", "-m", old, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no training geometry recorded") == 1
    assert json.loads(proc.stdout)["items"] > 0
