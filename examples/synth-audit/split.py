"""Split a medtools manifest by patient for the synthesis audit (stdlib only).

    python split.py all.csv OUTDIR [--seed 0] [--small 32]

Writes OUTDIR/train.csv and OUTDIR/heldout.csv (about half the images each, no patient in
both), and OUTDIR/overfit.csv / OUTDIR/overfit-heldout.csv: SMALL images of SMALL different
training patients and SMALL images of SMALL different held-out patients, for the
memorisation check (a model overfit on few images must be caught by the attack).
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path


def write(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def one_per_patient(rows: list[dict[str, str]], count: int, rng: random.Random) -> list[dict[str, str]]:
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_patient[row["patient"]].append(row)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    # alternate classes so that both subsets are balanced like the data
    by_class: dict[str, list[str]] = defaultdict(list)
    for patient in patients:
        by_class[by_patient[patient][0].get("class", "")].append(patient)
    chosen: list[str] = []
    while len(chosen) < count and any(by_class.values()):
        for name in sorted(by_class):
            if by_class[name] and len(chosen) < count:
                chosen.append(by_class[name].pop())
    return [sorted(by_patient[p], key=lambda r: r["image"])[0] for p in chosen]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("outdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=32)
    args = parser.parse_args()
    with open(args.manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("image")]
    rng = random.Random(args.seed)
    patients = sorted({r["patient"] for r in rows})
    rng.shuffle(patients)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["patient"]] += 1
    train_patients: set[str] = set()
    total = 0
    for patient in patients:  # take whole patients until half of the images
        if total >= len(rows) / 2:
            break
        train_patients.add(patient)
        total += counts[patient]
    train = [r for r in rows if r["patient"] in train_patients]
    heldout = [r for r in rows if r["patient"] not in train_patients]
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.csv", train, fields)
    write(out / "heldout.csv", heldout, fields)
    write(out / "overfit.csv", one_per_patient(train, args.small, rng), fields)
    write(out / "overfit-heldout.csv", one_per_patient(heldout, args.small, rng), fields)
    print(f"train {len(train)} images / {len(train_patients)} patients; held out {len(heldout)} images / {len({r['patient'] for r in heldout})} patients")


if __name__ == "__main__":
    main()
