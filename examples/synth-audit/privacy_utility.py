"""The privacy–utility table of the conditional generators (stdlib only).

    python privacy_utility.py OUT cond cond-dp

Reads OUT/{ddpm,tstr,nearest,fid,fid-floor,mia}-TAG.json for each TAG and prints one markdown
row per generator: ε, best MIA attack (AUC, TPR at 1 % FPR), fd_medtools, precision/recall,
copy-detection rate (and the held-out baseline), TSTR / TRTR / real+synthetic AUC and the gap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def ci(run: dict) -> str:
    interval = (run.get("ci95") or {}).get("auc")
    return f"{fmt(run.get('auc'))} [{fmt(interval[0])}–{fmt(interval[1])}]" if interval else fmt(run.get("auc"))


def main() -> None:
    out = Path(sys.argv[1])
    print("| generator | ε | MIA best attack: AUC / TPR@1%FPR | fd_medtools (floor) | precision / recall | copy rate pixel (held-out baseline) | copy rate features (baseline) | TSTR AUC | TRTR AUC | real+synthetic AUC | TRTR − TSTR [95 % CI] |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tag in sys.argv[2:]:
        train = load(out / f"ddpm-{tag}.json")
        eps = (train.get("extra") or {}).get("dp_epsilon")
        mia = load(out / f"mia-{tag}.json").get("attacks", {})
        best = max(mia.items(), key=lambda kv: abs(kv[1]["auc"] - 0.5), default=None)
        attack = f"{best[0]} {best[1]['auc']:.3f} / {best[1]['tpr_at_1pct_fpr']:.3f}" if best else "–"
        fid = load(out / f"fid-{tag}.json").get("metrics", {})
        floor = load(out / f"fid-floor-{tag}.json").get("metrics", {})
        near = load(out / f"nearest-{tag}.json")
        tstr = load(out / f"tstr-{tag}.json")
        runs = tstr.get("runs", {})
        gap = tstr.get("auc_gap_trtr_minus_tstr") or {}
        gap_ci = gap.get("ci95") or [None, None]

        def copy(space: str) -> str:
            values = near.get(space, {})
            return f"{fmt(values.get('copy_rate'))} ({fmt(values.get('copy_rate_held_out'))})" if values else "–"

        print(
            f"| {tag} | {fmt(eps, '.2f') if eps is not None else '∞ (no DP)'} | {attack} | {fmt(fid.get('fd_medtools'), '.2f')} ({fmt(floor.get('fd_medtools'), '.2f')}) "
            f"| {fmt(fid.get('precision'))} / {fmt(fid.get('recall'))} | {copy('pixel')} | {copy('features')} "
            f"| {ci(runs.get('tstr', {}))} | {ci(runs.get('trtr', {}))} | {ci(runs.get('mixed', {}))} | {fmt(gap.get('difference'))} [{fmt(gap_ci[0])}–{fmt(gap_ci[1])}] |"
        )


if __name__ == "__main__":
    main()
