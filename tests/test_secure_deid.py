"""deid: PS3.15 basic profile on pydicom's bundled files (pixels untouched), UID mapping, dates, NIfTI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli

pydicom = pytest.importorskip("pydicom")
BUNDLED = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm")  # shipped in the wheel, no download


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("dicom")
    for name in BUNDLED:
        shutil.copy(get_testdata_file(name), root / name)
    (root / "again").mkdir()
    shutil.copy(root / "CT_small.dcm", root / "again" / "CT_copy.dcm")  # same study twice in one run
    return root


def test_basic_profile_removes_identity_and_keeps_pixels(tmp_path, dicom_folder):
    out = tmp_path / "out"
    proc = run_cli("deid", dicom_folder, "-o", out, "--mapping", tmp_path / "map.csv", check=True)
    written = sorted(proc.stdout.split())
    assert len(written) == len(BUNDLED) + 1 and all(p.startswith(str(out)) for p in written)
    for name in BUNDLED:
        before = pydicom.dcmread(dicom_folder / name)
        after = pydicom.dcmread(out / name)
        assert before.get("PatientName") and before.get("PatientID")
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            assert not after.get(keyword), (name, keyword)
        for keyword in ("InstitutionName", "OperatorsName", "PatientAge", "ReferringPhysicianName", "StationName"):
            assert not after.get(keyword), (name, keyword)
        assert not [e for e in after.iterall() if e.tag.is_private]
        assert after.PatientIdentityRemoved == "YES"
        assert after.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        if "PixelData" in before:
            assert after.PixelData == before.PixelData  # bytes identical, compressed or not
            assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        assert after.SOPInstanceUID != before.SOPInstanceUID and after.SOPInstanceUID.startswith("2.25.")
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPClassUID == before.SOPClassUID  # registered UIDs stay
    copy = pydicom.dcmread(out / "again" / "CT_copy.dcm")
    original = pydicom.dcmread(out / "CT_small.dcm")
    assert copy.StudyInstanceUID == original.StudyInstanceUID and copy.SeriesInstanceUID == original.SeriesInstanceUID
    rows = list(csv.DictReader(open(tmp_path / "map.csv")))
    assert {"kind", "original", "replacement"} <= set(rows[0])
    assert any(r["original"] == pydicom.dcmread(dicom_folder / "CT_small.dcm").StudyInstanceUID and r["replacement"] == original.StudyInstanceUID for r in rows)
    assert (tmp_path / "map.csv").stat().st_mode & 0o077 == 0


def test_mapping_only_when_asked_keyed_runs_repeat_and_dates_shift(tmp_path, dicom_folder):
    from medtools.secure.keystore import generate_key_file

    key = generate_key_file(tmp_path / "k.key")
    ct = dicom_folder / "CT_small.dcm"
    for run in ("a", "b"):
        run_cli("deid", ct, "-o", tmp_path / run / "ct.dcm", "--key", key, "--date-shift", "-10", "--pseudonymize", check=True)
    run_cli("deid", ct, "-o", tmp_path / "c" / "ct.dcm", check=True)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ct.dcm", "ct.dcm", "ct.dcm", "k.key"]
    a, b, c = (pydicom.dcmread(tmp_path / run / "ct.dcm") for run in "abc")
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.PatientID.startswith("ANON-") and a.PatientID == b.PatientID
    before = pydicom.dcmread(ct)
    from datetime import datetime, timedelta

    expected = (datetime.strptime(before.StudyDate, "%Y%m%d") - timedelta(days=10)).strftime("%Y%m%d")
    assert a.StudyDate == expected and not a.get("PatientBirthDate")
    assert a.LongitudinalTemporalInformationModified == "MODIFIED" and not c.get("StudyDate")
    assert "-10" not in a.DeidentificationMethod and "10" not in a.DeidentificationMethod


def test_nifti_header_text_and_extensions_cleared_voxels_kept(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = b"Doe^John 1970-01-01"
    img.header["aux_file"] = b"MRN123"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=Doe^John"))
    nib.save(img, tmp_path / "scan.nii.gz")
    out = run_cli("deid", tmp_path / "scan.nii.gz", "-o", tmp_path / "out", "--json", check=True)
    record = json.loads(out.stdout)
    assert record["format"] == "nifti"
    clean = nib.load(record["output"])
    assert bytes(clean.header["descrip"]).strip(b"\x00") == b"" and bytes(clean.header["aux_file"]).strip(b"\x00") == b""
    assert len(clean.header.extensions) == 0
    assert np.array_equal(np.asarray(clean.dataobj), data) and np.allclose(clean.affine, affine)
    raw = (tmp_path / "out" / "scan.nii.gz").read_bytes()
    import gzip

    assert b"Doe^John" not in gzip.decompress(raw) and b"MRN123" not in gzip.decompress(raw)
