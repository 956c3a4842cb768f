"""Split a medtools manifest into first visits and the other visits of each patient.

Usage: python split_visits.py cases.csv first.csv rest.csv
Attackers are trained on one visit and tested on another (a split of slices of one
scan flatters them); this is the same rule `medtools reid-train` applies by default.
"""

import csv
import sys

source, first_path, rest_path = sys.argv[1:4]
with open(source, newline="") as handle:
    reader = csv.DictReader(handle)
    rows, fields = list(reader), reader.fieldnames
first_case = {}
for row in sorted(rows, key=lambda r: (r["visit"], r["case"])):
    first_case.setdefault(row["patient"], row["case"])
for path, keep in ((first_path, True), (rest_path, False)):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in rows if (first_case[r["patient"]] == r["case"]) == keep)
