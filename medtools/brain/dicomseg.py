"""DICOM SEG output (highdicom) for segmentations of DICOM series.

The label volume lives in the NIfTI voxel grid that dcm2niix produced; for each source
DICOM slice we compute the world position of every pixel (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing; LPS → RAS) and sample the label volume there
(nearest voxel), so the SEG frames line up with the source images whatever the slice
order or orientation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtools.brain.cases import LoadedCase
from medtools.core.errors import InputError
from medtools.core.io import atomic_path, dicom_series_files

# raw label value → (segment label, SNOMED property type attribute on pydicom codes.SCT)
SEGMENT_NAMES = {1: ("Necrotic core", "Necrosis"), 2: ("Edema", "Edema"), 3: ("Non-enhancing tumor", "Neoplasm"), 4: ("Enhancing tumor", "Neoplasm")}


def labels_on_source_grid(labels: np.ndarray, affine: np.ndarray, datasets: list) -> np.ndarray:
    """(frames, rows, cols) labels sampled at the source slices' pixel positions."""
    inverse = np.linalg.inv(affine)
    frames = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        orient = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = origin[None, None, :] + c[..., None] * col_spacing * orient[None, None, :3] + r[..., None] * row_spacing * orient[None, None, 3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        homogeneous = np.concatenate([ras, np.ones((rows, cols, 1))], axis=-1)
        voxel = np.rint(homogeneous @ inverse.T)[..., :3].astype(int)
        inside = np.all((voxel >= 0) & (voxel < np.asarray(labels.shape)[None, None, :]), axis=-1)
        frame = np.zeros((rows, cols), dtype=np.uint8)
        v = voxel[inside]
        frame[inside] = labels[v[:, 0], v[:, 1], v[:, 2]]
        frames.append(frame)
    return np.stack(frames)


def write_dicom_seg(loaded: LoadedCase, labels: np.ndarray, target: Path) -> Path:
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("--format dicom-seg needs highdicom: pip install 'medtools[dicomseg]'") from None
    import pydicom
    from pydicom.sr.codedict import codes

    import medtools

    source = Path(loaded.images[0].meta.get("source", ""))
    if not source.is_dir():
        raise InputError("--format dicom-seg needs a DICOM series folder as input")
    datasets = [pydicom.dcmread(str(p)) for p in dicom_series_files(source)]
    affine = loaded.images[0].affine
    mask = labels_on_source_grid(labels, affine, datasets)
    present = [int(v) for v in np.unique(mask) if v != 0]
    numbering = {value: i + 1 for i, value in enumerate(present)}
    label_map = np.zeros_like(mask)
    for value, number in numbering.items():
        label_map[mask == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(name="medtools segment", version=medtools.__version__, family=codes.DCM.ArtificialIntelligence)
    descriptions = []
    for value, number in numbering.items():
        name, code = SEGMENT_NAMES.get(value, (f"Label {value}", "Neoplasm"))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name if len(numbering) > 1 or value != 1 else "Tumor",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=getattr(codes.SCT, code),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    if not descriptions:  # SEG needs at least one segment; an empty tumor segment is still informative
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=1, segment_label="Tumor", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medtools",
        manufacturer_model_name="medtools segment",
        software_versions=medtools.__version__,
        device_serial_number="0",
    )
    with atomic_path(target) as tmp:
        seg.save_as(str(tmp))
    return target
