#!/usr/bin/env python3
"""Split HC18 (shared/data/hc18_ultrasound) into two clients and a held-out part, by exam_id.

    split_hc18.py DATA OUT [--test-fraction 0.25] [--seed 0] [--limit N]

Examinations (exam_id, SOURCE.md: never split frames of one exam) are shuffled with the
seed; a share is held out; every examination goes to client a or b alternately. Writes
symlinks OUT/{a,b}/{train,test}/{images,masks}/ and OUT/split.json (exam ids per part).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examinations (quick runs)")
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.data / "labels.csv")))
    exams = sorted({r["exam_id"] for r in rows})
    random.Random(args.seed).shuffle(exams)
    if args.limit:
        exams = exams[: args.limit]
    parts: dict[str, list[str]] = {"a/train": [], "b/train": [], "a/test": [], "b/test": []}
    for index, exam in enumerate(exams):
        client = "ab"[index % 2]
        held_out = (index // 2) % round(1 / args.test_fraction) == 0
        parts[f"{client}/{'test' if held_out else 'train'}"].append(exam)
    lookup = {exam: part for part, members in parts.items() for exam in members}
    counts = {part: 0 for part in parts}
    for r in rows:
        part = lookup.get(r["exam_id"])
        if part is None:
            continue
        for sub, name in (("images", r["filename"]), ("masks", r["mask"])):
            target = args.out / part / sub / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to((args.data / sub / name).resolve())
        counts[part] += 1
    (args.out / "split.json").write_text(json.dumps({"seed": args.seed, "exams": parts, "images": counts}, indent=1))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
