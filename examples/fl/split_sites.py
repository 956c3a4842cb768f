"""Split a manifest CSV by patient into held-out test cases and N site manifests (one hospital each).

    python split_sites.py cases.csv OUT --sites 3 [--test-fraction 0.2] [--seed 0]

Patients (HC18: the exam id) are shuffled with the seed; the first share is held out
(OUT/test.csv), the rest dealt round-robin to OUT/site-1.csv … OUT/site-N.csv, and
OUT/pooled.csv holds every site's cases (the pooled baseline). No patient is in two files.
"""

import argparse
import csv
import json
import random
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("manifest")
parser.add_argument("out", type=Path)
parser.add_argument("--sites", type=int, default=3)
parser.add_argument("--test-fraction", type=float, default=0.2)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

with open(args.manifest, newline="") as handle:
    reader = csv.DictReader(handle)
    fields, rows = reader.fieldnames, list(reader)
patients = sorted({r["patient"] for r in rows})
random.Random(args.seed).shuffle(patients)
n_test = max(1, round(args.test_fraction * len(patients)))
parts = {"test": patients[:n_test]}
for index, patient in enumerate(patients[n_test:]):
    parts.setdefault(f"site-{index % args.sites + 1}", []).append(patient)
parts["pooled"] = patients[n_test:]
args.out.mkdir(parents=True, exist_ok=True)
counts = {}
for name, members in parts.items():
    chosen = [r for r in rows if r["patient"] in set(members)]
    with open(args.out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    counts[name] = {"patients": len(members), "cases": len(chosen)}
print(json.dumps(counts))
