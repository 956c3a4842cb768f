"""Markdown table of examples/cls/evaluate.sh results: python summarise.py RESULTS_DIR."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])


def fmt(result, key):
    value, ci = result.get(key), (result.get("ci95") or {}).get(key)
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


print("| set | arch | encryption | test patients / images | accuracy % | balanced acc. % | AUC % | sens. % | spec. % | train s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(root.glob("*.json")):
    if path.name.endswith(".train.json"):
        continue
    set_, arch, enc = path.stem.split("-", 2)
    result = json.loads(path.read_text())
    train = json.loads((root / f"{path.stem}.train.json").read_text())
    print(f"| {set_} | {arch} | {enc} | {result['patients']} / {result['n']} | {fmt(result, 'accuracy')} | {fmt(result, 'balanced_accuracy')} | {fmt(result, 'auc')} | {fmt(result, 'sensitivity')} | {fmt(result, 'specificity')} | {train['train_seconds']:.0f} |")
