"""Chest X-ray re-identification split: earlier follow-ups train, the latest follow-up tests.

Usage: python cxr_followups.py cases.csv split.csv late.csv [verify.csv]
cases.csv is `medtools manifest shared/data/nih_cxr` (NIH file names <patient>_<follow-up>.png).
Only patients with at least two images are kept (closed set); in split.csv each row's visit is
"early" (every follow-up but the patient's last) or "late" (the last), for
`medtools reid-train split.csv --train-visits early --val-visits late`; late.csv holds the late rows.
verify.csv (optional) is the patient-disjoint split for verification: every image, visit "train"
for 70 % of the patients with several images (sorted by a seeded shuffle), "heldout" for the
others and for every patient with one image (negatives only), for
`reid-train verify.csv --train-visits train --val-visits heldout` and `reid-eval --verify` on the
held-out rows.
"""

import csv
import sys

source, split_path, late_path = sys.argv[1:4]
with open(source, newline="") as handle:
    reader = csv.DictReader(handle)
    rows, fields = list(reader), reader.fieldnames


def follow_up(row):
    return int(row["case"].rsplit("_", 1)[1])


by_patient = {}
for row in rows:
    by_patient.setdefault(row["patient"], []).append(row)
kept = []
for patient, group in sorted(by_patient.items()):
    if len(group) < 2:
        continue
    last = max(follow_up(r) for r in group)
    for row in sorted(group, key=follow_up):
        kept.append({**row, "visit": "late" if follow_up(row) == last else "early"})
for path, subset in ((split_path, kept), (late_path, [r for r in kept if r["visit"] == "late"])):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(subset)
if len(sys.argv) > 4:
    import random

    several = sorted(p for p, g in by_patient.items() if len(g) >= 2)
    random.Random(0).shuffle(several)
    train_patients = set(several[: int(0.7 * len(several))])
    with open(sys.argv[4], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "visit": "train" if r["patient"] in train_patients else "heldout"} for r in rows)
    with open(sys.argv[4].replace(".csv", "-heldout.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "visit": "heldout"} for r in rows if r["patient"] not in train_patients)
    print(f"verification: {len(train_patients)} training patients, {len(by_patient) - len(train_patients)} held out", file=sys.stderr)
print(f"{len({r['patient'] for r in kept})} patients, {sum(r['visit'] == 'early' for r in kept)} early, {sum(r['visit'] == 'late' for r in kept)} late images", file=sys.stderr)
