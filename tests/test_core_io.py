"""core.io: every format round-trips with its geometry; writes are atomic."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from medtools.core import io
from medtools.core.errors import InputError, UsageError
from medtools.core.io import Image, read_image, write_image

pydicom = pytest.importorskip("pydicom")


def ct_small() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic, shifted affine: any axis or sign mix-up changes it."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [-12.5, 30.0, 7.25]
    return affine


# ------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_nifti_round_trip_keeps_affine_header_dtype(tmp_path: Path, dtype) -> None:
    array = (np.arange(6 * 5 * 4).reshape(6, 5, 4) % 100).astype(dtype)
    source = nib.Nifti1Image(array, oblique_affine())
    source.header["descrip"] = b"medtools test"
    source.header.set_xyzt_units("mm", "sec")
    nib.save(source, tmp_path / "in.nii.gz")

    image = read_image(tmp_path / "in.nii.gz")
    assert image.format == "nifti" and image.array.dtype == dtype
    write_image(image.with_array(image.array), tmp_path / "out.nii.gz")

    back = nib.load(tmp_path / "out.nii.gz")
    assert back.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), array)
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-5)
    assert back.header["descrip"].tobytes().rstrip(b"\0") == b"medtools test"
    assert back.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(read_image(tmp_path / "out.nii.gz").spacing, (0.9, 1.1, 3.0), rtol=1e-5)


def test_nifti_with_scl_slope_reads_as_float32_values(tmp_path: Path) -> None:
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, tmp_path / "scaled.nii.gz")

    image = read_image(tmp_path / "scaled.nii.gz")
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, stored * 0.5 - 10.0)
    write_image(image, tmp_path / "again.nii.gz")  # real values survive a rewrite
    np.testing.assert_allclose(read_image(tmp_path / "again.nii.gz").array, stored * 0.5 - 10.0)


@pytest.mark.parametrize(("values", "expected"), [((0, 4), np.uint8), ((-3, 300), np.int16), ((0, 70_000), np.int32)])
def test_nifti_int64_labels_written_as_smallest_integer(tmp_path: Path, values, expected) -> None:
    array = np.array(values * 4, dtype=np.int64).reshape(2, 2, 2)  # torch argmax gives int64
    write_image(Image(array, affine=np.eye(4), format="nifti"), tmp_path / "seg.nii.gz")
    back = read_image(tmp_path / "seg.nii.gz")
    assert back.array.dtype == expected
    np.testing.assert_array_equal(back.array, array)


# ------------------------------------------------------------------ DICOM


def test_dicom_file_round_trip_keeps_tags_and_pixels(tmp_path: Path) -> None:
    image = read_image(ct_small())
    source = image.meta["dataset"]
    assert image.format == "dicom" and image.array.shape == (128, 128)
    assert image.meta["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    np.testing.assert_allclose(image.spacing[:2], [float(v) for v in source.PixelSpacing])

    write_image(image.with_array(image.array + 1), tmp_path / "out.dcm")
    back = read_image(tmp_path / "out.dcm")
    np.testing.assert_array_equal(back.array, image.array + 1)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "Modality", "PixelSpacing", "ImagePositionPatient", "RescaleIntercept"):
        assert back.meta["dataset"].get(tag) == source.get(tag), tag
    np.testing.assert_allclose(back.affine, image.affine)
    # changed pixels are a new object: new SOP and series UIDs (reproducible), ImageType DERIVED
    written = back.meta["dataset"]
    assert written.SOPInstanceUID != source.SOPInstanceUID and written.SOPInstanceUID.startswith("2.25.")
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert written.SeriesInstanceUID != source.SeriesInstanceUID and written.ImageType[0] == "DERIVED"
    write_image(image.with_array(image.array + 1), tmp_path / "again.dcm")
    assert read_image(tmp_path / "again.dcm").meta["dataset"].SOPInstanceUID == written.SOPInstanceUID
    write_image(image, tmp_path / "same.dcm")  # unchanged pixels: the same object, UIDs kept
    assert read_image(tmp_path / "same.dcm").meta["dataset"].SOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_jpeg_dcmd.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"],
)
def test_dicom_colour_compressed_and_big_endian_files_write_back(tmp_path: Path, name: str) -> None:
    from pydicom.data import get_testdata_file

    if "jpeg_ls" in name:
        pytest.importorskip("jpeg_ls")  # pyjpegls decodes JPEG-LS (installed with highdicom)
    source = get_testdata_file(name)  # bundled with pydicom (no download)
    if source is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    image = read_image(source)
    write_image(image, tmp_path / "out.dcm")
    back = read_image(tmp_path / "out.dcm")
    np.testing.assert_array_equal(back.array, image.array)
    assert back.meta["dataset"].PatientName == image.meta["dataset"].PatientName
    assert back.meta["dataset"].file_meta.TransferSyntaxUID.is_little_endian


def test_dicom_file_affine_follows_orientation_and_spacing_order() -> None:
    """Anisotropic pixels on an oblique plane: (row, col) → world must follow PS3.3 C.7.6.2."""
    ds = pydicom.dcmread(ct_small())
    ds.PixelSpacing = [0.5, 0.8]  # between rows, between columns
    row_cos = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col_cos = np.array([0.0, 0.0, -1.0])
    ds.ImageOrientationPatient = [*row_cos, *col_cos]
    ds.ImagePositionPatient = [10.0, -20.0, 30.0]
    affine = io._dicom_affine(ds)
    row, col = 7, 11
    lps = np.array([10.0, -20.0, 30.0]) + row * 0.5 * col_cos + col * 0.8 * row_cos
    ras = lps * [-1, -1, 1]
    np.testing.assert_allclose((affine @ [row, col, 0, 1])[:3], ras, atol=1e-9)


def write_dicom_series(folder: Path, n: int = 5, spacing: float = 2.5, file_order: tuple[int, ...] = (3, 0, 4, 1, 2)) -> Path:
    """A small CT series from CT_small: slice k has a block of value 100·(k+1) at rows 0-9, cols 0-19.

    Files are named in a shuffled order so that only ImagePositionPatient gives the slice order.
    """
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(ct_small())
    folder.mkdir(parents=True)
    series = generate_uid()
    for name_index, k in enumerate(file_order[:n]):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-100.0, -120.0, -50.0 + spacing * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.8]
        ds.SliceThickness = spacing
        pixels = np.zeros((ds.Rows, ds.Columns), dtype=np.int16)
        pixels[:10, :20] = 100 * (k + 1)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"IM{name_index:04d}.dcm")
    return folder


def _marker_world(image: Image, value: float) -> np.ndarray:
    """World (RAS) centre of the voxels equal to ``value``."""
    index = np.argwhere(np.isclose(image.array, value)).mean(axis=0)
    index = np.concatenate([index, np.zeros(3 - len(index)), [1.0]])[:4]
    return (image.affine @ index)[:3]


def test_dicom_series_folder_to_volume_through_dcm2niix(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "series")
    volume = read_image(folder)
    assert volume.format == "dicom-series"
    assert volume.array.shape == (128, 128, 5)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.5, 2.5), rtol=1e-4)  # x = columns, y = rows, z
    # slice order follows position, not file names; values in HU through the rescale
    markers = [float(volume.array[..., z].max()) for z in range(5)]
    assert markers == [100.0 * (k + 1) - 1024.0 for k in range(5)]
    # the series and one of its files agree on where the marker of the first slice lies
    first = read_image(folder / "IM0001.dcm")  # file_order[1] == slice 0
    np.testing.assert_allclose(_marker_world(volume, 100.0 - 1024.0), _marker_world(first, 100.0), atol=1e-3)


def test_folder_without_dicom_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError):
        read_image(tmp_path)


# ------------------------------------------------------------------ raster, arrays


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gray16.png", (np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)),
        ("gray8.png", (np.arange(40 * 30).reshape(40, 30) % 256).astype(np.uint8)),
        ("rgb.png", np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)),
        ("gray16.tif", (np.arange(40 * 30).reshape(40, 30) * 50).astype(np.uint16)),
        ("gray8.tiff", (np.arange(40 * 30).reshape(40, 30) % 256).astype(np.uint8)),
    ],
)
def test_raster_round_trip_keeps_bit_depth(tmp_path: Path, name: str, array: np.ndarray) -> None:
    write_image(Image(array, format=io.format_of(name)), tmp_path / name)
    back = read_image(tmp_path / name)
    assert back.array.dtype == array.dtype and back.array.shape == array.shape
    np.testing.assert_array_equal(back.array, array)
    assert back.meta["bits"] == 8 * array.dtype.itemsize


def test_png_16_bit_stays_16_bit_on_disk(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    write_image(Image(np.full((4, 4), 40_000, dtype=np.uint16), format="png"), tmp_path / "x.png")
    with PILImage.open(tmp_path / "x.png") as pil:
        assert pil.mode.startswith("I")  # 'I;16' (or 'I' on old Pillow), not 8-bit 'L'
    assert read_image(tmp_path / "x.png").array.max() == 40_000


def test_grayscale_stored_as_rgb_jpeg_comes_back_2d(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    PILImage.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "x.jpg", quality=100)
    image = read_image(tmp_path / "x.jpg")
    assert image.array.ndim == 2 and image.array.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("x.png", np.zeros((4, 4), np.float32)),  # no silent scaling
        ("x.jpg", np.zeros((4, 4), np.uint16)),
        ("x.png", np.full((4, 4), 70_000, np.int32)),
        ("x.png", np.zeros((4, 4, 3), np.uint16)),
        ("x.png", np.zeros((4, 4, 6), np.uint8)),  # a volume is not a picture
    ],
)
def test_arrays_a_raster_cannot_hold_are_item_errors(tmp_path: Path, name: str, array: np.ndarray) -> None:
    with pytest.raises(InputError):
        write_image(Image(array, format=io.format_of(name)), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_image(Image(np.zeros((2, 2), np.uint8)), tmp_path / "x.bmp")
    with pytest.raises(UsageError):
        write_image(Image(np.zeros((2, 2), np.uint8)), tmp_path / "x.dcm")  # no DICOM source to copy tags from


def test_npy_and_npz_round_trip(tmp_path: Path) -> None:
    array = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    write_image(Image(array), tmp_path / "a.npy")
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy").array, array)
    write_image(Image(array, affine=oblique_affine()), tmp_path / "a.npz")
    back = read_image(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, oblique_affine())


@pytest.mark.parametrize("name", ["broken.nii.gz", "broken.png", "broken.dcm", "broken.npy"])
def test_unreadable_file_is_an_input_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x00not an image at all" * 3)
    with pytest.raises(InputError, match="broken"):
        read_image(tmp_path / name)


def test_missing_and_unsupported_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "notes.txt")


def test_split_ext_counts_nii_gz_as_one() -> None:
    assert io.split_ext("a/scan.v2.nii.gz") == ("scan.v2", ".nii.gz")
    assert io.split_ext("x.PNG") == ("x", ".PNG")
    assert io.split_ext("README") == ("README", "")


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path: Path, monkeypatch) -> None:
    def half_then_fail(image, tmp, *args):
        Path(tmp).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io.images, "write_nifti", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_image(Image(np.zeros((2, 2, 2), np.uint8), affine=np.eye(4), format="nifti"), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_an_overwrite_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.png"
    write_image(Image(np.full((3, 3), 7, np.uint8), format="png"), target)

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.images, "write_raster", fail)
    with pytest.raises(KeyboardInterrupt):
        write_image(Image(np.zeros((3, 3), np.uint8), format="png"), target)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert read_image(target).array[0, 0] == 7


def test_written_files_get_the_umask_mode_not_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_image(Image(np.zeros((2, 2), np.uint8), format="png"), tmp_path / "x.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644


# ------------------------------------------------------------------ through the CLI


def test_convert_dicom_series_to_nifti_keeps_geometry(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "in" / "ct-series")
    proc = run_cli("convert", tmp_path / "in", "-o", tmp_path / "out", "--to", "nifti")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "out" / "ct-series.nii.gz")]
    converted = read_image(tmp_path / "out" / "ct-series.nii.gz")
    direct = read_image(folder)
    np.testing.assert_allclose(converted.affine, direct.affine, atol=1e-4)
    np.testing.assert_array_equal(converted.array, direct.array)
