"""Print the synthesis-audit results under OUT as a markdown table (stdlib only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    out = Path(sys.argv[1])
    if "--samplers" in sys.argv:
        print("| sampler | fd_medtools vs held-out | vs DDPM-1000 |\n|---|---|---|")
        fd = {name: load(out / f"fid-cmp-{name}.json").get("metrics", {}).get("fd_medtools", float("nan")) for name in ("ddpm", "ddim", "dpm-solver")}
        for name, value in fd.items():
            print(f"| {name} | {value:.4f} | {100 * (value / fd['ddpm'] - 1):+.1f} % |")
        return
    floor = load(out / "fid-floor.json").get("metrics", {})
    print("| set vs held-out real | fd_medtools | KID | precision | recall |\n|---|---|---|---|---|")
    for label, name in (("real (training patients): floor", "fid-floor"), ("DDPM samples", "fid"), ("DP-DDPM samples", "fid-dp")):
        m = floor if name == "fid-floor" else load(out / f"{name}.json").get("metrics", {})
        if m:
            print(f"| {label} | {m['fd_medtools']:.4f} | {m.get('kid_mean', float('nan')):.5f} | {m.get('precision', float('nan')):.3f} | {m.get('recall', float('nan')):.3f} |")
    inception = load(out / "fid-inception.json")
    print(f"\nInception FID: {inception.get('metrics', {}).get('fid', inception.get('skipped', 'n/a'))}\n")
    print("| model | attack | AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | members / non-members |\n|---|---|---|---|---|---|---|")
    for label, name in (("DDPM", "mia"), ("DP-DDPM", "mia-dp"), ("overfit on 32", "mia-overfit"), ("overfit on 32, DP", "mia-overfit-dp")):
        result = load(out / f"{name}.json")
        eps = result.get("model_dp", {}).get("epsilon")
        tag = f"{label} (ε={eps:.2f})" if eps is not None else label
        for attack, m in result.get("attacks", {}).items():
            print(f"| {tag} | {attack} | {m['auc']:.3f} | {m['balanced_accuracy']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | {m['tpr_at_0.1pct_fpr']:.3f} | {result['members']['images']} / {result['nonmembers']['images']} |")


if __name__ == "__main__":
    main()
