"""`medtools convert` and `medtools info` through the CLI: mirroring, skipping, stdin, shards, geometry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from medtools.core.io import read_image


@pytest.fixture()
def volumes(tmp_path: Path) -> Path:
    """in/{a,b}/scan.nii.gz (float32, oblique affine) + in/a/scan_seg.nii.gz (labels)."""
    rng = np.random.default_rng(0)
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])
    for case in ("a", "b"):
        (tmp_path / "in" / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.normal(100, 30, (12, 10, 4)).astype(np.float32), affine), tmp_path / "in" / case / "scan.nii.gz")
    labels = np.zeros((12, 10, 4), np.uint8)
    labels[2:5, 3:6, 1:3] = 4
    labels[6:8, 1:2, 0] = 2
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "in" / "a" / "scan_seg.nii.gz")
    return tmp_path / "in"


def restore(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a volume from PNG slices with volume.json, as docs/cli.md describes."""
    meta = json.loads((folder / "volume.json").read_text())
    slices = [read_image(folder / f"slice_{i:04d}.png").array for i in range(meta["shape"][meta["axis"]])]
    volume = np.moveaxis(np.stack(slices).astype(np.float64) * meta["scale"] + meta["offset"], 0, meta["axis"])
    return volume, np.array(meta["affine"])


def test_convert_mirrors_layout_then_skips_then_overwrites(volumes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("convert", volumes, "-o", out, "--to", "npz")
    assert proc.returncode == 0, proc.stderr
    expected = [str(out / rel) for rel in ("a/scan.npz", "a/scan_seg.npz", "b/scan.npz")]
    assert sorted(proc.stdout.split()) == expected
    back = read_image(out / "b" / "scan.npz")
    original = read_image(volumes / "b" / "scan.nii.gz")
    np.testing.assert_array_equal(back.array, original.array)
    np.testing.assert_allclose(back.affine, original.affine)

    stamp = (out / "a" / "scan.npz").stat().st_mtime_ns
    proc = run_cli("convert", volumes, "-o", out, "--to", "npz")  # all exist: nothing to do
    assert proc.returncode == 0 and proc.stdout == ""
    assert (out / "a" / "scan.npz").stat().st_mtime_ns == stamp
    os.utime(out / "a" / "scan.npz", ns=(0, 0))
    proc = run_cli("convert", volumes, "-o", out, "--to", "npz", "--overwrite")
    assert proc.returncode == 0 and len(proc.stdout.split()) == 3
    assert (out / "a" / "scan.npz").stat().st_mtime_ns != 0


def test_interrupted_batch_resumes_with_the_missing_items(volumes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("convert", volumes, "-o", out, "--to", "npy", check=True)
    (out / "b" / "scan.npy").unlink()
    proc = run_cli("convert", volumes, "-o", out, "--to", "npy")
    assert proc.stdout.split() == [str(out / "b" / "scan.npy"), str(out / "b" / "scan.json")]  # + its affine
    assert json.loads((out / "b" / "scan.json").read_text())["affine"] == read_image(volumes / "b" / "scan.nii.gz").affine.tolist()


def test_stdin_paths(volumes: Path, tmp_path: Path) -> None:
    listing = "\n".join(str(p) for p in sorted(volumes.rglob("scan.nii.gz"))) + "\n"
    proc = run_cli("convert", "-", "-o", tmp_path / "out", "--to", "npz", input=listing)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == [str(tmp_path / "out" / "a" / "scan.npz"), str(tmp_path / "out" / "b" / "scan.npz")]


def test_shards_split_a_batch_without_overlap(volumes: Path, tmp_path: Path) -> None:
    outputs = []
    for k in (1, 2):
        proc = run_cli("convert", volumes, "-o", tmp_path / "out", "--to", "npz", "--shard", f"{k}/2")
        assert proc.returncode == 0, proc.stderr
        outputs.append(set(proc.stdout.split()))
    assert not outputs[0] & outputs[1]
    assert len(outputs[0] | outputs[1]) == 3
    proc = run_cli("convert", volumes, "-o", tmp_path / "out", "--to", "npz", env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"})
    assert proc.returncode == 0 and proc.stdout == ""  # task 1 of 0-1 is shard 2/2: already done


def test_volume_to_png_slices_and_back(volumes: Path, tmp_path: Path) -> None:
    proc = run_cli("convert", volumes / "a", "-o", tmp_path / "png", "--to", "png", "--axis", "2")
    assert proc.returncode == 0, proc.stderr
    scan_dir, seg_dir = tmp_path / "png" / "scan", tmp_path / "png" / "scan_seg"
    assert sorted(p.name for p in scan_dir.iterdir()) == [f"slice_{i:04d}.png" for i in range(4)] + ["volume.json"]
    original = read_image(volumes / "a" / "scan.nii.gz")
    volume, affine = restore(scan_dir)
    span = float(original.array.max() - original.array.min())
    np.testing.assert_allclose(volume, original.array, atol=span / 65535)  # 16-bit quantisation
    np.testing.assert_allclose(affine, original.affine)
    assert read_image(scan_dir / "slice_0000.png").meta["bits"] == 16
    labels, _ = restore(seg_dir)  # label slices alongside: exact, 8-bit
    np.testing.assert_array_equal(labels, read_image(volumes / "a" / "scan_seg.nii.gz").array)
    assert read_image(seg_dir / "slice_0001.png").array.dtype == np.uint8


def test_dicom_file_to_nifti_in_hounsfield_units(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    proc = run_cli("convert", source, "-o", tmp_path / "ct.nii.gz")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "ct.nii.gz")
    dicom, nifti = read_image(source), read_image(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(nifti.array, dicom.array.astype(np.int32) - 1024)
    np.testing.assert_allclose(nifti.affine, dicom.affine, atol=1e-5)


def test_single_input_output_name(volumes: Path, tmp_path: Path) -> None:
    scan = volumes / "a" / "scan.nii.gz"
    assert run_cli("convert", scan, "-o", tmp_path / "one.npy", "--to", "npy", check=True).stdout.split()[0] == str(tmp_path / "one.npy")
    proc = run_cli("convert", scan, "-o", tmp_path / "run.v2", "--to", "npy", check=True)  # a dotted folder
    assert proc.stdout.split()[0] == str(tmp_path / "run.v2" / "scan.npy")
    assert run_cli("convert", scan, "-o", tmp_path / "x.png", "--to", "npy").returncode == 2


def test_info_text_and_json(volumes: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    scan = volumes / "a" / "scan.nii.gz"
    proc = run_cli("info", scan)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(scan) and "  shape: [12, 10, 4]" in proc.stdout
    proc = run_cli("info", "--json", scan, get_testdata_file("CT_small.dcm"))
    assert proc.returncode == 0, proc.stderr
    nifti, dicom = (json.loads(line) for line in proc.stdout.splitlines())
    assert nifti["format"] == "nifti" and nifti["shape"] == [12, 10, 4] and nifti["dtype"] == "float32"
    np.testing.assert_allclose(nifti["spacing"], [0.9, 1.2, 3.0])
    assert nifti["orientation"] == "".join(nib.aff2axcodes(read_image(scan).affine))
    assert dicom["format"] == "dicom" and dicom["dicom"]["Modality"] == "CT" and dicom["dicom"]["Rows"] == "128"
    assert dicom["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert dicom["dicom"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"


def test_probability_map_named_seg_is_not_truncated_to_labels(tmp_path: Path) -> None:
    probabilities = np.random.default_rng(2).random((6, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(probabilities, np.eye(4)), tmp_path / "case_seg_prob.nii.gz")
    run_cli("convert", tmp_path / "case_seg_prob.nii.gz", "-o", tmp_path / "png", "--to", "png", check=True)
    volume, _ = restore(tmp_path / "png" / "case_seg_prob")
    np.testing.assert_allclose(volume, probabilities, atol=1.0 / 65535)


def test_interrupted_png_volume_leaves_no_slices(volumes: Path, tmp_path: Path, monkeypatch) -> None:
    from medtools.core.inputs import Item
    from medtools.utility import convert as convert_module

    real_write, calls = convert_module.write_image, []

    def write_twice_then_interrupt(image, path, **kwargs):
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_write(image, path, **kwargs)

    monkeypatch.setattr(convert_module, "write_image", write_twice_then_interrupt)
    item = Item(volumes / "a" / "scan.nii.gz", Path("a/scan.nii.gz"))
    with pytest.raises(KeyboardInterrupt):
        convert_module.convert(item, tmp_path / "png", to="png")
    assert [p for p in (tmp_path / "png").rglob("*") if p.is_file()] == []


def test_volume_png_cannot_hold_is_an_item_error_not_a_stop(volumes: Path, tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.int16), np.eye(4)), volumes / "b" / "dwi.nii.gz")  # 4-D
    proc = run_cli("convert", volumes, "-o", tmp_path / "png", "--to", "png")
    assert proc.returncode == 1, proc.stderr
    assert "dwi.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert sum(p.name == "volume.json" for p in (tmp_path / "png").rglob("*")) == 3
    assert not (tmp_path / "png" / "b" / "dwi").exists() or not any((tmp_path / "png" / "b" / "dwi").iterdir())


def test_info_recognises_a_checkpoint_by_content_not_name(tmp_path: Path) -> None:
    """A safetensors file named like a key (klt-keygen writes client.key) is described as one;
    a non-checkpoint file with that name is not mistaken for one."""
    from safetensors.numpy import save_file

    key = tmp_path / "client.key"
    save_file({"q": np.eye(2, dtype=np.float32)}, str(key), metadata={"medtools.kind": "klt-key"})
    out = run_cli("info", key, "--json", check=True)
    assert json.loads(out.stdout)["kind"] == "klt-key"
    other = tmp_path / "other.key"
    other.write_bytes(b"0123456789abcdef" * 4)
    assert run_cli("info", other, "--json").returncode != 0
