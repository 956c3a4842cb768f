"""Collect one protection setting's JSON outputs into results.json and a markdown table."""

import argparse
import json
import math
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cell", type=Path, required=True)
    parser.add_argument("--objective", required=True)
    parser.add_argument("--eps", type=float, required=True)
    args = parser.parse_args()
    raw, cell = args.work / "raw", args.cell
    records = [json.loads(l) for l in (cell / "protect-rest.jsonl").read_text().splitlines() if l.strip()]
    cases = [r for r in records if "case" in r]
    mean = lambda key: sum(r[key] for r in cases) / len(cases) if cases else math.nan  # noqa: E731
    seg_raw, seg_prot = load(raw / "seg-eval.json")["mean"], load(cell / "seg-eval.json")["mean"]
    region = "WT" if "WT" in seg_raw else "foreground" if "foreground" in seg_raw else next(iter(seg_raw))
    result = {
        "objective": args.objective,
        "eps": args.eps,
        "chance": load(raw / "reid-A.json")["chance"],
        "raw": {"whitebox_top1": load(raw / "reid-A.json")["top1"], "transfer_top1": load(raw / "reid-B.json")["top1"], "dice": seg_raw[region]["dice"]},
        "protected": {
            "whitebox_top1": load(cell / "reid-A.json")["top1"],
            "transfer_top1": load(cell / "reid-B.json")["top1"],
            "adaptive_top1": load(cell / "reid-C.json")["top1"],
            "dice": seg_prot[region]["dice"],
            "psnr_db": mean("psnr"),
            "ssim": mean("ssim"),
            "linf": max((r["linf"] for r in cases), default=math.nan),
        },
        "dice_region": region,
        "cases": len(cases),
    }
    (cell / "results.json").write_text(json.dumps(result, indent=2))
    r, p = result["raw"], result["protected"]
    table = [
        f"objective {args.objective}, eps {args.eps} (fraction of the normalised range); chance {result['chance']:.3f}; {len(cases)} protected test cases",
        "",
        "| | white-box A | transfer B | adaptive C | Dice (" + region + ") | PSNR dB | SSIM | L∞ |",
        "|---|---|---|---|---|---|---|---|",
        f"| raw | {r['whitebox_top1']:.3f} | {r['transfer_top1']:.3f} | – | {r['dice']:.4f} | – | – | 0 |",
        f"| protected | {p['whitebox_top1']:.3f} | {p['transfer_top1']:.3f} | {p['adaptive_top1']:.3f} | {p['dice']:.4f} | {p['psnr_db']:.2f} | {p['ssim']:.4f} | {p['linf']:.4f} |",
        "",
    ]
    (cell / "results.md").write_text("\n".join(table))
    print(cell / "results.json")


if __name__ == "__main__":
    main()
