"""NIfTI volumes → DICOM MR series (one file per slice), as a scanner would send them to a PACS.

    python make_series.py OUT VOLUME.nii.gz [...]

Each volume becomes OUT/<case>/IM0000.dcm…: geometry from the NIfTI affine, 16-bit pixels, one
study per patient folder, and identifying tags (name, ID, birth date, institution, accession
number) so that de-identification has something to remove. Paths of the series folders on stdout.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=list(parts))


def write_series(volume: Path, out: Path) -> Path:
    image = nib.as_closest_canonical(nib.load(volume))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = np.round((data - data.min()) / max(float(np.ptp(data)), 1e-6) * 4000).astype(np.int16)
    case = volume.name.split(".")[0]
    patient = volume.parent.name.split("_")[0] if volume.parent.name != volume.parent.parent.name else case
    digest = hashlib.sha256(patient.encode()).hexdigest()[:6]
    study, series, frame = uid("study", patient, volume.parent.name), uid("series", case), uid("frame", case)
    folder = out / case
    folder.mkdir(parents=True, exist_ok=True)
    spacing = image.header.get_zooms()[:3]
    ras_to_lps = np.diag([-1, -1, 1, 1])
    affine = ras_to_lps @ image.affine
    for k in range(data.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid("sop", case, str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Phantom^{patient}", f"MRN{digest}", "19700101", "O"
        ds.InstitutionName, ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "Phantom General Hospital", "Doe^John", f"A{digest}", "1"
        ds.StudyDate = ds.SeriesDate = "20240131"
        ds.StudyTime, ds.Manufacturer = "101500", "medtools phantom"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "MR", 1, k + 1, case
        position = affine @ np.array([0, 0, k, 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position[:3]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing[1]), float(spacing[0])], float(spacing[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()  # rows = y, columns = x
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: make_series.py OUT VOLUME.nii.gz [...]")
    for path in sys.argv[2:]:
        print(write_series(Path(path), Path(sys.argv[1])))
