"""DICOM SEG output lines up with the source DICOM slices, whatever their file order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from conftest import run_cli
from medtools.core.io import dicom_series_files, read_image
from test_core_io import write_dicom_series


def test_labels_are_sampled_at_each_source_slice(tmp_path: Path) -> None:
    from medtools.brain.dicomseg import labels_on_source_grid

    folder = write_dicom_series(tmp_path / "series")
    volume = read_image(folder)
    labels = (volume.array > -1024).astype(np.uint8) * 4  # the marker block of every slice
    datasets = [pydicom.dcmread(p) for p in dicom_series_files(folder)]
    frames = labels_on_source_grid(labels, volume.affine, datasets)
    for ds, frame in zip(datasets, frames):
        expected = (ds.pixel_array > 0).astype(np.uint8) * 4
        assert (frame == expected).mean() > 0.999, ds.InstanceNumber


def test_segment_writes_dicom_seg_for_a_series(tmp_path: Path) -> None:
    import highdicom as hd

    from medtools.core import ckpt

    config = {"arch": "unet", "encoder": "resnet18", "in_channels": 1, "classes": 2, "modalities": ["t1"], "image_size": 64, "label_values": [0, 1]}
    ckpt.save(tmp_path / "seg.safetensors", ckpt.new_model("seg", config).state_dict(), kind="seg", config=config, norm={"method": "percentile", "low": 0.5, "high": 99.5})
    folder = write_dicom_series(tmp_path / "in" / "series")
    proc = run_cli("segment", tmp_path / "in", "-m", tmp_path / "seg.safetensors", "-o", tmp_path / "out", "--format", "dicom-seg", check=True)
    written = [Path(p) for p in proc.stdout.split()]
    assert len(written) == 1 and written[0].suffix == ".dcm"
    seg = hd.seg.segread(written[0])
    assert seg.Modality == "SEG"
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in dicom_series_files(folder)}
