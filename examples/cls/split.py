"""Split a medtools manifest by patient: python split.py all.csv TEST_FRACTION SEED OUTDIR.

Writes OUTDIR/train.csv and OUTDIR/test.csv (no patient in both, core.data.split_by_patient)
and prints the patient and image counts per split and class.
"""

import sys
from collections import Counter
from pathlib import Path

from medtools.core.data import split_by_patient
from medtools.core.manifest import read_csv, to_csv

rows = read_csv(sys.argv[1])
train, test = split_by_patient(rows, float(sys.argv[2]), int(sys.argv[3]))
assert not {r["patient"] for r in train} & {r["patient"] for r in test}
out = Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
for name, part in (("train", train), ("test", test)):
    (out / f"{name}.csv").write_text(to_csv(part))
    print(name, "patients", len({r["patient"] for r in part}), "images", len(part), dict(Counter(r["class"] for r in part)))
