"""Pooled vs site-only vs federated vs federated+DP on one data set split into sites, scored on held-out patients.

    python goal_table.py cases.csv WORK [--sites 3] [--rounds 10] [--local-epochs 2] [--dp-epsilon 8]
                         [--medtools .venv/bin/medtools] [-- EXTRA seg-train/fl-train FLAGS]

Splits the manifest by patient (split_sites.py: held-out test patients, N sites), then trains
with the same flags and the same number of epochs (rounds × local epochs):
pooled (seg-train on every site's cases), one model per site (seg-train on that site alone),
federated (fl-train, FedAvg) and federated with DP-SGD at each site (fl-train --dp-epsilon);
each model segments the held-out cases (segment) and is scored (seg-eval, mean Dice).
Prints a Markdown table and writes WORK/table.json. Every step is a medtools command.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
parser = argparse.ArgumentParser()
parser.add_argument("manifest")
parser.add_argument("work", type=Path)
parser.add_argument("--sites", type=int, default=3)
parser.add_argument("--rounds", type=int, default=10)
parser.add_argument("--local-epochs", type=int, default=2)
parser.add_argument("--dp-epsilon", type=float, default=8.0)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--medtools", default=str(Path(sys.executable).with_name("medtools")))
parser.add_argument("--only", default=None, help="comma-separated rows to run (pooled,site-1,...,federated,federated-dp)")
argv = sys.argv[1:]
extra = argv[argv.index("--") + 1:] if "--" in argv else []  # flags for seg-train and fl-train alike
args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
args.extra = extra

work = args.work
split = work / "split"
subprocess.run([sys.executable, str(HERE / "split_sites.py"), args.manifest, str(split), "--sites", str(args.sites), "--seed", str(args.seed)], check=True)
sites = [split / f"site-{i}.csv" for i in range(1, args.sites + 1)]
epochs = args.rounds * args.local_epochs
common = ["--seed", str(args.seed), "-q", *args.extra]
runs = {"pooled": [args.medtools, "seg-train", str(split / "pooled.csv"), "--epochs", str(epochs), "--keep-last", *common]}
for site in sites:
    runs[site.stem] = [args.medtools, "seg-train", str(site), "--epochs", str(epochs), "--keep-last", *common]
fl = [args.medtools, "fl-train", "seg", *map(str, sites), "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs), *common]
runs["federated"] = fl
runs["federated-dp"] = [*fl, "--dp-epsilon", str(args.dp_epsilon)]
only = set(args.only.split(",")) if args.only else set(runs)

table_path = work / "table.json"
table = json.loads(table_path.read_text()) if table_path.exists() else {}
for name, command in runs.items():
    if name not in only:
        continue
    model = work / f"{name}.safetensors"
    started = time.time()
    subprocess.run([*command, "-o", str(model)], check=True, stdout=subprocess.DEVNULL)
    train_seconds = time.time() - started
    pred = work / f"pred-{name}"
    subprocess.run([args.medtools, "segment", str(split / "test.csv"), "-m", str(model), "-o", str(pred), "--overwrite", "-q"], check=True, stdout=subprocess.DEVNULL)
    scores = json.loads(subprocess.run([args.medtools, "seg-eval", str(pred), str(split / "test.csv"), "--json", "--no-hd95", "-q"], check=True, capture_output=True, text=True).stdout)
    dice = [v["dice"] for v in scores["mean"].values()][0]
    row = {"dice": round(dice, 4), "train_seconds": round(train_seconds, 1)}
    if name.startswith("federated"):
        info = json.loads(subprocess.run([args.medtools, "info", str(model), "--json", "-q"], check=True, capture_output=True, text=True).stdout)
        meta = info.get("metadata", info)
        dp = meta.get("dp") or meta.get("medtools.dp")
        if isinstance(dp, str):
            dp = json.loads(dp)
        if dp:
            row["epsilon"] = round(dp["epsilon"], 3)
    table[name] = row
    table_path.write_text(json.dumps(table, indent=1))
    print(f"{name}: {row}", file=sys.stderr, flush=True)

print("| model | held-out Dice | train time (s) |\n|---|---|---|")
for name, row in table.items():
    eps = f" (ε = {row['epsilon']})" if "epsilon" in row else ""
    print(f"| {name}{eps} | {row['dice']:.4f} | {row['train_seconds']:.0f} |")
print(f"total train time: {sum(r['train_seconds'] for r in table.values()):.0f} s", file=sys.stderr)
