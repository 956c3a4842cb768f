"""Split a manifest CSV by patient into train and test CSVs: fold K of N (patients shuffled with a seed).

    python split_patients.py cases.csv train.csv test.csv --folds 5 --fold 0 [--seed 0]
    python split_patients.py cases.csv train.csv test.csv --test-patients 01,02

No patient is in both files (HC18: the patient column is the exam id).
"""

import argparse
import csv
import random

parser = argparse.ArgumentParser()
parser.add_argument("manifest")
parser.add_argument("train")
parser.add_argument("test")
parser.add_argument("--folds", type=int, default=5)
parser.add_argument("--fold", type=int, default=0)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--test-patients", default=None)
args = parser.parse_args()

with open(args.manifest, newline="") as handle:
    reader = csv.DictReader(handle)
    fields, rows = reader.fieldnames, list(reader)
patients = sorted({r["patient"] for r in rows})
if args.test_patients:
    test = set(args.test_patients.split(","))
else:
    random.Random(args.seed).shuffle(patients)
    test = set(patients[args.fold :: args.folds])
for path, keep in ((args.train, lambda r: r["patient"] not in test), (args.test, lambda r: r["patient"] in test)):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in rows if keep(r))
print(f"test patients ({len(test)}): {','.join(sorted(test))}")
