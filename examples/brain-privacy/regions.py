"""Region label maps for `medtools explain --regions`: 0 background (air), 1 head outside the
tumour (skull, scalp and brain together), 2 tumour. The head is the largest connected component
above Otsu's threshold of the volume, holes filled slice by slice; the tumour is the case's
label image (any label > 0). Skull and brain are not told apart (a T1 scan has no brain mask).

Usage: python regions.py cases.csv OUT_DIR [MODALITY]
Writes OUT_DIR/<case>_regions.nii.gz (the scan's geometry) for every case of a medtools manifest
that has a label, and prints the paths.
"""

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

source, out = sys.argv[1], Path(sys.argv[2])
modality = sys.argv[3] if len(sys.argv) > 3 else None
out.mkdir(parents=True, exist_ok=True)
with open(source, newline="") as handle:
    rows = list(csv.DictReader(handle))
for row in rows:
    if not row.get("label"):
        continue
    column = modality or next(m for m in ("t1ce", "t1", "flair", "t2", "image") if row.get(m))
    scan = nib.load(row[column])
    volume = np.asarray(scan.dataobj, dtype=np.float32)
    head = volume > threshold_otsu(volume)
    components, count = ndimage.label(head)
    if count:
        sizes = ndimage.sum(head, components, range(1, count + 1))
        head = components == 1 + int(np.argmax(sizes))
    head = np.stack([ndimage.binary_fill_holes(head[:, :, z]) for z in range(head.shape[2])], axis=2)
    tumour = np.asarray(nib.load(row["label"]).dataobj) > 0
    labels = np.where(tumour, 2, np.where(head, 1, 0)).astype(np.uint8)
    target = out / f"{row['case']}_regions.nii.gz"
    nib.save(nib.Nifti1Image(labels, scan.affine, scan.header), target)
    print(target)
