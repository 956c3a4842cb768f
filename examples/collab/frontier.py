#!/usr/bin/env python3
"""The privacy/utility frontier of the latent transforms, from transforms.py's results.

    frontier.py WORK PNG [--unet-dice D] [--point LABEL:EVAL.json:MIA.json ...]

Reads WORK/transforms/summary.json and frontier.json (one row per transform setting) and
draws two panels (matplotlib, Agg): keyless-server Dice against the learned inversion's PSNR
above the no-information reference, and against the best known-plaintext attack's PSNR above
the reference at 8 known images; each point is labelled with its setting and the membership
AUC of its UMN. The goals are drawn as lines (+3 dB; Dice within 0.03 of the plain U-Net when
--unet-dice is given). A third panel puts Dice against the membership AUC of the keyless UMN:
every row, its DP-SGD variant when it has one, and any --point (a collab-eval and a
collab-attack --umn JSON, e.g. other --dp-epsilon runs). The rows are also written next to the
PNG as JSON (same name, .json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--unet-dice", type=float, default=None)
    parser.add_argument("--point", action="append", default=[], help="LABEL:EVAL_JSON:MIA_JSON (Dice vs AUC panel)")
    args = parser.parse_args()
    rows = {}
    for name in ("summary.json", "frontier.json"):
        path = args.work / "transforms" / name
        if path.exists():
            rows.update(json.loads(path.read_text()))
    points = []
    for name, row in rows.items():
        kp = row["known_images"].get("8")
        points.append({
            "config": name,
            "keygen": row["keygen"],
            "dice_keyless": row["dice_keyless"],
            "mia_auc": row["mia_auc"],
            "learned_inversion_margin_db": row["learned_inversion_psnr"] - row["learned_inversion_reference_psnr"],
            "known_plaintext_8_margin_db": None if kp is None else max(kp["closed_form_psnr"], kp["learned_psnr"]) - row["reference_psnr"],
            "with_key_margin_db": None if row.get("with_key_psnr") is None else row["with_key_psnr"] - row["reference_psnr"],
            "dice_other_client": row["dice_other_client"],
            "dice_keyless_dp": row.get("dice_keyless_dp"),
            "mia_auc_dp": row.get("mia_auc_dp"),
            "dp_epsilon": row.get("dp_epsilon"),
        })
    extra = []
    for spec in args.point:
        label, eval_json, mia_json = spec.split(":")
        extra.append({"label": label, "dice": json.loads(Path(eval_json).read_text())["dice"], "mia_auc": json.loads(Path(mia_json).read_text())["membership"]["auc"]})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for ax, key, title in ((axes[0], "learned_inversion_margin_db", "learned inversion over random keys"), (axes[1], "known_plaintext_8_margin_db", "known plaintext, 8 known images")):
        for index, p in enumerate(points):
            if p[key] is None:
                continue
            colour = "tab:blue" if p["config"].startswith("linear") else "tab:red"
            ax.scatter(p[key], p["dice_keyless"], color=colour, s=36)
            ax.annotate(p["config"], (p[key], p["dice_keyless"]), fontsize=7, xytext=(4, -12 + 9 * (index % 4)), textcoords="offset points")
        ax.axvline(3.0, color="grey", linestyle="--", linewidth=1)
        ax.text(3.05, ax.get_ylim()[0], " goal ≤ +3 dB", fontsize=7, color="grey", va="bottom")
        if args.unet_dice is not None:
            ax.axhline(args.unet_dice - 0.03, color="green", linestyle=":", linewidth=1)
        ax.set_xlabel("attack PSNR above the no-information reference (dB)")
        ax.set_title(title, fontsize=10)
    ax = axes[2]
    for p in points:
        colour = "tab:blue" if p["config"].startswith("linear") else "tab:red"
        ax.scatter(p["mia_auc"], p["dice_keyless"], color=colour, s=36)
        ax.annotate(p["config"], (p["mia_auc"], p["dice_keyless"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if p.get("mia_auc_dp") is not None:
            ax.scatter(p["mia_auc_dp"], p["dice_keyless_dp"], color=colour, marker="x", s=36)
            ax.annotate(f"{p['config']} DP", (p["mia_auc_dp"], p["dice_keyless_dp"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for e in extra:
        ax.scatter(e["mia_auc"], e["dice"], color="black", marker="x", s=36)
        ax.annotate(e["label"], (e["mia_auc"], e["dice"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(0.60, color="grey", linestyle="--", linewidth=1)
    if args.unet_dice is not None:
        ax.axhline(args.unet_dice - 0.03, color="green", linestyle=":", linewidth=1)
    ax.set_xlabel("membership AUC of the keyless UMN (goal ≤ 0.60; 0.5 = chance)")
    ax.set_title("membership (x: DP-SGD)", fontsize=10)
    axes[0].set_ylabel("Dice, keyless server (client a, held out)")
    fig.suptitle("HC18, 64², latent transforms: keyless-server Dice vs inversion and membership (dotted: plain U-Net − 0.03)", fontsize=10)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    args.png.with_suffix(".json").write_text(json.dumps({"unet_dice": args.unet_dice, "points": points, "extra_points": extra}, indent=1))
    print(args.png)


if __name__ == "__main__":
    main()
