"""objective × eps frontier: a markdown table and a PNG plot from each cell's results.json."""

import argparse
import json
from pathlib import Path


def _is_cell(name: str, objective: str, eps: float) -> bool:
    """OBJECTIVE-EPS or OBJECTIVE-EPS-repN (not OBJECTIVE-EPS5…)."""
    base = f"{objective}-{eps:g}"
    return name == base or (name.startswith(base + "-rep") and name[len(base) + 4 :].isdigit())


def _mean_of(runs: list[dict]) -> dict:
    """One cell from its replicate runs: protected metrics averaged, adaptive spread kept."""
    protected = {key: sum(r["protected"][key] for r in runs) / len(runs) for key in ("whitebox_top1", "transfer_top1", "adaptive_top1", "dice", "psnr_db", "ssim")}
    adaptive = [r["protected"]["adaptive_top1"] for r in runs]
    raw_adaptive = [r["raw"].get("adaptive_top1") for r in runs]
    raw_adaptive_mean = None if None in raw_adaptive else sum(raw_adaptive) / len(runs)
    # adaptive attackers with a defence (ATTACKERS=…): mean over the runs that have each one
    specs = sorted({spec for r in runs for spec in r.get("defended", {})})
    defended = {}
    for spec in specs:
        have = [r["defended"][spec] for r in runs if spec in r.get("defended", {})]
        defended[spec] = {"protected_top1": sum(v["protected_top1"] for v in have) / len(have), "raw_top1": sum(v["raw_top1"] for v in have) / len(have),
                          "min": min(v["protected_top1"] for v in have), "max": max(v["protected_top1"] for v in have), "runs": len(have)}
    return {**runs[0], "protected": protected, "runs": len(runs), "adaptive_min": min(adaptive), "adaptive_max": max(adaptive), "raw_adaptive": raw_adaptive_mean, "defended": defended}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--objectives", required=True)
    parser.add_argument("--epsilons", required=True)
    args = parser.parse_args()
    objectives, epsilons = args.objectives.split(), [float(e) for e in args.epsilons.split()]
    cells = {}
    for objective in objectives:
        for eps in epsilons:
            runs = [json.loads(path.read_text()) for path in sorted(args.work.glob(f"{objective}-{eps:g}*/results.json")) if _is_cell(path.parent.name, objective, eps)]
            if runs:
                cells[(objective, eps)] = _mean_of(runs)
    if not cells:
        raise SystemExit("no results found")
    any_cell = next(iter(cells.values()))
    chance, raw = any_cell["chance"], any_cell["raw"]
    lines = [
        f"chance {chance:.3f}; raw: white-box {raw['whitebox_top1']:.3f}, transfer {raw['transfer_top1']:.3f}, Dice {raw['dice']:.4f}",
        "Cells with replicates (REP=n: another secret key / PGD seed and attacker-C seed) show the mean and, for the adaptive attacker, [min–max].",
        "C on raw: attacker C's recipe and seeds trained on raw first visits (the adaptive attacker's baseline).",
        "",
        "| objective | eps | runs | white-box | transfer | adaptive | C on raw | Dice | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (objective, eps), cell in sorted(cells.items()):
        p = cell["protected"]
        spread = f" [{cell['adaptive_min']:.3f}–{cell['adaptive_max']:.3f}]" if cell["runs"] > 1 else ""
        raw_c = "–" if cell["raw_adaptive"] is None else f"{cell['raw_adaptive']:.3f}"
        lines.append(f"| {objective} | {eps:g} | {cell['runs']} | {p['whitebox_top1']:.3f} | {p['transfer_top1']:.3f} | {p['adaptive_top1']:.3f}{spread} | {raw_c} | {p['dice']:.4f} | {p['psnr_db']:.2f} | {p['ssim']:.4f} |")
    specs = sorted({spec for cell in cells.values() for spec in cell["defended"]})
    if specs:
        lines += ["", "Adaptive attackers with a defence (reid-train --defence): protected top-1 (mean [min–max] over runs) / the same attacker on raw images:", "",
                  "| objective | eps | " + " | ".join(f"C + {spec}" for spec in specs) + " |", "|---|---|" + "---|" * len(specs)]
        for (objective, eps), cell in sorted(cells.items()):
            row = []
            for spec in specs:
                v = cell["defended"].get(spec)
                row.append("–" if v is None else f"{v['protected_top1']:.3f}" + (f" [{v['min']:.3f}–{v['max']:.3f}]" if v["runs"] > 1 else "") + f" / {v['raw_top1']:.3f}")
            lines.append(f"| {objective} | {eps:g} | " + " | ".join(row) + " |")
    lines += ["", "Smallest eps at which the adaptive attacker (mean over runs) is at most 2× chance:", ""]
    for objective in objectives:
        hits = [e for e in epsilons if (objective, e) in cells and cells[(objective, e)]["protected"]["adaptive_top1"] <= 2 * chance]
        if hits:
            p = cells[(objective, hits[0])]["protected"]
            lines.append(f"- {objective}: eps {hits[0]:g} (adaptive {p['adaptive_top1']:.3f}, Dice {p['dice']:.4f}, PSNR {p['psnr_db']:.2f} dB)")
        else:
            lines.append(f"- {objective}: none of the measured eps")
        for spec in specs:
            hits = [e for e in epsilons if (objective, e) in cells and spec in cells[(objective, e)]["defended"] and cells[(objective, e)]["defended"][spec]["protected_top1"] <= 2 * chance]
            lines.append(f"  - against C + {spec}: " + (f"eps {hits[0]:g} ({cells[(objective, hits[0])]['defended'][spec]['protected_top1']:.3f})" if hits else "none of the measured eps"))
    if specs:  # the goal: every attacker of the suite at once
        lines += ["", "Worst attacker of the suite (the largest of white-box, transfer, adaptive and each defended adaptive attacker, means over runs):", ""]
        for (objective, eps), cell in sorted(cells.items()):
            p = cell["protected"]
            scores = {"white-box": p["whitebox_top1"], "transfer": p["transfer_top1"], "adaptive": p["adaptive_top1"], **{f"C + {s}": v["protected_top1"] for s, v in cell["defended"].items()}}
            worst = max(scores, key=scores.get)
            verdict = "≤ 2× chance" if scores[worst] <= 2 * chance else "above 2× chance"
            lines.append(f"- {objective} eps {eps:g}: {worst} {scores[worst]:.3f} ({verdict}; {len(cell['defended'])} defended attackers; Dice {p['dice']:.4f})")
    (args.work / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (4 + len(specs) + 3) // 4  # four panels a row: the usual four, then one per defended attacker
    fig, grid = plt.subplots(rows, 4, figsize=(16, 3.6 * rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[4 + len(specs) :]:
        ax.axis("off")
    for objective in objectives:
        xs = [e for e in epsilons if (objective, e) in cells]
        get = lambda key: [cells[(objective, e)]["protected"][key] for e in xs]  # noqa: E731
        axes[0].plot(xs, get("whitebox_top1"), "o-", label=objective)
        axes[1].plot(xs, get("transfer_top1"), "o-", label=objective)
        axes[2].plot(xs, get("adaptive_top1"), "o-", label=objective)
        axes[3].plot(get("psnr_db"), get("dice"), "o-", label=objective)
    for ax, title in zip(axes[:3], ("white-box top-1", "transfer top-1", "adaptive top-1")):
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.axhline(2 * chance, color="grey", linestyle="--", label="2× chance")
        ax.set_xscale("log")
        ax.set_xlabel("eps (fraction of normalised range)")
        ax.set_title(title)
    axes[0].axhline(raw["whitebox_top1"], color="black", linewidth=0.8, label="raw")
    axes[1].axhline(raw["transfer_top1"], color="black", linewidth=0.8)
    raw_c = [c["raw_adaptive"] for c in cells.values() if c.get("raw_adaptive") is not None]
    axes[2].axhline(sum(raw_c) / len(raw_c) if raw_c else raw["whitebox_top1"], color="black", linewidth=0.8)
    for ax, spec in zip(axes[4:], specs):  # one panel per defended adaptive attacker, with its raw baseline
        for objective in objectives:
            xs = [e for e in epsilons if (objective, e) in cells and spec in cells[(objective, e)]["defended"]]
            if xs:
                ax.plot(xs, [cells[(objective, e)]["defended"][spec]["protected_top1"] for e in xs], "o-", label=objective)
        baseline = [c["defended"][spec]["raw_top1"] for c in cells.values() if spec in c["defended"]]
        ax.axhline(sum(baseline) / len(baseline), color="black", linewidth=0.8)
        ax.axhline(chance, color="grey", linestyle=":")
        ax.axhline(2 * chance, color="grey", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("eps (fraction of normalised range)")
        ax.set_title(f"adaptive + {spec} top-1")
    axes[3].axhline(raw["dice"], color="black", linewidth=0.8)
    axes[3].set_xlabel("PSNR dB")
    axes[3].set_title("Dice vs PSNR")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.work / "frontier.png", dpi=110)
    print(args.work / "frontier.png")


if __name__ == "__main__":
    main()
