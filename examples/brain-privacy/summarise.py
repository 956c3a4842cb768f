"""Collect one protection setting's JSON outputs into results.json and a markdown table.

Two layouts: the Makefile's cross-visit cell (raw baselines under WORK/raw, attackers A, B
and the adaptive C, whose raw baseline is the same recipe trained on raw first visits;
protect log protect-rest.jsonl) and single-exam.sh's cell (raw baselines
inside the cell, no adaptive attacker: one exam per patient, attackers trained on a slice
split of the same scans, which flatters them).
"""

import argparse
import json
import math
from pathlib import Path

REGIONS = ("WT", "TC", "ET")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dice_of(seg_eval: dict) -> tuple[str, dict[str, float]]:
    """The headline region (WT, else foreground, else the first class) and every BraTS region's Dice."""
    mean = seg_eval["mean"]
    region = "WT" if "WT" in mean else "foreground" if "foreground" in mean else next(iter(mean))
    regions = {k: mean[k]["dice"] for k in REGIONS if k in mean} or {region: mean[region]["dice"]}
    return region, regions


def summarise(work: Path, cell: Path, objective: str, eps: float, single_exam: bool = False, raw_adaptive: Path | None = None, defended: list[str] | None = None) -> tuple[dict, str]:
    raw_dir, log, raw_prefix = (cell, cell / "protect.jsonl", "raw-") if single_exam else (work / "raw", cell / "protect-rest.jsonl", "")
    cases = [r for r in (json.loads(l) for l in log.read_text().splitlines() if l.strip()) if "case" in r]
    mean = lambda key: sum(r[key] for r in cases) / len(cases) if cases else math.nan  # noqa: E731
    region, raw_dice = dice_of(load(raw_dir / f"{raw_prefix}seg-eval.json"))
    _, prot_dice = dice_of(load(cell / "seg-eval.json"))
    raw_a = load(raw_dir / f"{raw_prefix}reid-A.json")
    result = {
        "objective": objective,
        "eps": eps,
        "design": "single-exam (attackers on a slice split of the same scans)" if single_exam else "cross-visit",
        "chance": raw_a["chance"],
        "raw": {"whitebox_top1": raw_a["top1"], "transfer_top1": load(raw_dir / f"{raw_prefix}reid-B.json")["top1"], "dice": raw_dice[region], "dice_regions": raw_dice,
                "adaptive_top1": load(raw_adaptive)["top1"] if raw_adaptive else None},
        "protected": {
            "whitebox_top1": load(cell / "reid-A.json")["top1"],
            "transfer_top1": load(cell / "reid-B.json")["top1"],
            "adaptive_top1": None if single_exam else load(cell / "reid-C.json")["top1"],
            "dice": prot_dice[region],
            "dice_regions": prot_dice,
            "psnr_db": mean("psnr"),
            "ssim": mean("ssim"),
            "linf": max((r["linf"] for r in cases), default=math.nan),
        },
        "dice_region": region,
        "cases": len(cases),
        # adaptive attackers with a defence (--defended SPEC=protected.json,raw.json): top-1 on the
        # protected other visits, and the same recipe trained and tested on raw images
        "defended": {spec: {"protected_top1": load(Path(p))["top1"], "raw_top1": load(Path(q))["top1"]}
                     for spec, p, q in ((d.split("=", 1)[0], *d.split("=", 1)[1].split(",", 1)) for d in defended or [])},
    }
    r, p = result["raw"], result["protected"]
    regions = " / ".join(raw_dice)
    dice_text = lambda d: " / ".join(f"{v:.4f}" for v in d.values())  # noqa: E731
    adaptive = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    table = [
        f"objective {objective}, eps {eps} (fraction of the normalised range); chance {result['chance']:.3f}; {len(cases)} protected test cases; {result['design']}",
        "",
        f"| | white-box A | transfer B | adaptive C | Dice ({regions}) | PSNR dB | SSIM | L∞ |",
        "|---|---|---|---|---|---|---|---|",
        f"| raw | {r['whitebox_top1']:.3f} | {r['transfer_top1']:.3f} | {adaptive(r['adaptive_top1'])} | {dice_text(raw_dice)} | – | – | 0 |",
        f"| protected | {p['whitebox_top1']:.3f} | {p['transfer_top1']:.3f} | {adaptive(p['adaptive_top1'])} | {dice_text(prot_dice)} | {p['psnr_db']:.2f} | {p['ssim']:.4f} | {p['linf']:.4f} |",
        "",
    ]
    if result["defended"]:
        table += ["| adaptive attacker with defence | raw | protected |", "|---|---|---|"]
        table += [f"| C + {spec} | {v['raw_top1']:.3f} | {v['protected_top1']:.3f} |" for spec, v in result["defended"].items()]
        table.append("")
    return result, "\n".join(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cell", type=Path, required=True)
    parser.add_argument("--objective", required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--single-exam", action="store_true", help="single-exam.sh's layout (no adaptive attacker)")
    parser.add_argument("--raw-adaptive", type=Path, help="reid-eval JSON of attacker C's recipe trained on raw first visits")
    parser.add_argument("--defended", action="append", default=[], help="SPEC=protected-reid-eval.json,raw-reid-eval.json of an adaptive attacker with a defence (repeat)")
    parser.add_argument("--print", action="store_true", help="print the table instead of the results.json path")
    args = parser.parse_args()
    result, table = summarise(args.work, args.cell, args.objective, args.eps, args.single_exam, args.raw_adaptive, args.defended)
    (args.cell / "results.json").write_text(json.dumps(result, indent=2))
    (args.cell / "results.md").write_text(table)
    print(table if args.print else args.cell / "results.json")


if __name__ == "__main__":
    main()
