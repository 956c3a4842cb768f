"""`medtools manifest` on the real data in ../shared/data and on phantoms; patient ids come from here."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from conftest import run_cli
from medtools.core.errors import InputError
from medtools.core.manifest import COLUMNS, discover, load_rows, read_csv, split_visit


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def shared_rows(shared_data: Path) -> list[dict[str, str]]:
    proc = run_cli("manifest", shared_data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ",".join(COLUMNS)
    return rows_of(proc.stdout)


def test_brain_tumor_progression(shared_rows, shared_data: Path) -> None:
    rows = [r for r in shared_rows if "brain_tumor_progression" in (r["t1"] or r["label"])]
    assert len(rows) == 10
    assert sorted({r["patient"] for r in rows}) == ["01", "02", "03", "04", "05"]
    for patient in ("01", "02", "03", "04", "05"):
        mine = sorted((r["visit"], r["case"]) for r in rows if r["patient"] == patient)
        assert mine == [("Post", f"{patient}_Post"), ("Pre", f"{patient}_Pre")]
    for row in rows:
        folder = shared_data / "brain_tumor_progression" / row["patient"]
        assert row["t1"] == str((folder / f"{row['visit']}_Scan_T1.nii.gz").resolve())
        assert row["label"] == str((folder / f"{row['visit']}_Mask.nii.gz").resolve())
        assert Path(row["t1"]).is_file() and Path(row["label"]).is_file()
        assert row["flair"] == row["image"] == row["class"] == ""


def test_brats(shared_rows, shared_data: Path) -> None:
    rows = [r for r in shared_rows if "/brats/" in r["label"]]
    assert [(r["patient"], r["case"], r["visit"]) for r in rows] == [
        ("brats_2013_pat0001", "brats_2013_pat0001_1", "1"),
        ("brats_2013_pat0002", "brats_2013_pat0002_1", "1"),
    ]
    for row in rows:
        assert Path(row["flair"]).name == "Flair_subtrMeanDivStd.nii.gz"
        assert Path(row["t1ce"]).name == "T1c_subtrMeanDivStd.nii.gz"
        assert Path(row["label"]).name == "OTMultiClass.nii.gz"
        assert row["t1"] == row["t2"] == ""  # brainmask and the licence are not modalities


def test_cxr_patients_come_from_its_manifest(shared_rows, shared_data: Path) -> None:
    rows = [r for r in shared_rows if r["image"] and "/cxr/" in r["image"]]  # ../shared/data also holds nih_cxr now
    assert len(rows) == 800
    assert {r["class"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert sum(r["class"] == "NORMAL" for r in rows) == 400
    with open(shared_data / "cxr" / "manifest.csv", newline="") as handle:
        truth = {str((shared_data / "cxr" / r["file"]).resolve()): (r["patient_id"], r["label"]) for r in csv.DictReader(handle)}
    assert {r["image"]: (r["patient"], r["class"]) for r in rows} == truth
    assert len({r["patient"] for r in rows}) == 535


def test_manifest_to_file_relative_paths_read_back(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "cases.csv"
    proc = run_cli("manifest", shared_data / "brats", "-o", out, "--relative")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert not Path(rows_of(out.read_text())[0]["flair"]).is_absolute()
    rows = read_csv(out)  # relative paths resolve against the CSV's folder
    assert all(Path(r["flair"]).is_file() and Path(r["label"]).is_file() for r in rows)
    assert load_rows(out) == rows


def test_phantom_brats_layout(brain_phantom: Path) -> None:
    rows = discover([brain_phantom])
    assert len(rows) == 8
    assert sorted({r["patient"] for r in rows}) == [f"phantom-p{p:03d}" for p in range(1, 5)]
    assert sorted({r["visit"] for r in rows}) == ["v1", "v2"]
    for row in rows:
        for column in ("flair", "t1", "t1ce", "t2", "label"):
            assert Path(row[column]).name == f"{row['case']}_{'seg' if column == 'label' else column}.nii.gz"


def test_phantom_cxr_class_folders(cxr_phantom: Path) -> None:
    rows = discover([cxr_phantom])
    assert len(rows) == 24
    for row in rows:
        name = Path(row["image"]).name
        assert row["patient"] == name.split("-")[0] and row["class"] == Path(row["image"]).parent.name


def test_per_patient_folders_are_not_merged_by_a_trailing_number(tmp_path: Path) -> None:
    for name in ("Patient_01", "Patient_02", "sub-03"):
        (tmp_path / name).mkdir()
        for modality in ("flair", "t1", "seg"):
            (tmp_path / name / f"{modality}.nii.gz").write_bytes(b"x")
    rows = discover([tmp_path])
    assert sorted(r["patient"] for r in rows) == ["Patient_01", "Patient_02", "sub-03"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("brats_2013_pat0001_1", ("brats_2013_pat0001", "1")),
        ("phantom-p004_v2", ("phantom-p004", "v2")),
        ("UPENN-GBM-00001_11", ("UPENN-GBM-00001", "11")),
        ("BraTS2021_00000", ("BraTS2021_00000", "1")),
        ("Patient_01", ("Patient_01", "1")),
    ],
)
def test_split_visit(name: str, expected: tuple[str, str]) -> None:
    assert split_visit(name) == expected


def test_no_cases_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        discover([tmp_path])
    with pytest.raises(InputError):
        discover([tmp_path / "absent"])
    proc = run_cli("manifest", tmp_path, "-o", tmp_path)
    assert proc.returncode == 2
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a medtools manifest"):
        read_csv(tmp_path / "bad.csv")
