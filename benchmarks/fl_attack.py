"""Gradient inversion of one site's batch-1 update, plain and DP; prints one JSON document.

    python benchmarks/fl_attack.py [--data ../shared/data/hc18_ultrasound/images] [--n 5] [--size 32]
        [--arch lenet] [--steps 2000] [--dp-epsilon 8] [--seed 0]

The first ``--n`` images of ``--data`` in name order, one per examination (HC18 frames of one exam
are near duplicates), each attacked through ``medtools.api.fl_attack`` with one freshly
initialised model of ``--arch`` (seeded): the site takes one SGD step on the image alone; the
attacker inverts the plain update and the Opacus DP-SGD update at ``--dp-epsilon`` (δ 1e-5, clip
1, σ from the RDP accountant for this one step). Per image and summarised: SSIM and PSNR of the
reconstructions against the true image, and of the attack's random start. Goal: SSIM ≥ 0.5 from
the plain update, not from the DP update. ``--quick``: one phantom image, 20 steps (smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hc18_ultrasound" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--kind", default="cls")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--dp-epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="one phantom image, 20 steps (smoke run)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from medtools import api
    from medtools.core.io import Image, read_image
    from medtools.fl.attack import AttackSettings, prepare_model

    if args.quick or not args.data.is_dir():
        yy, xx = np.mgrid[:64, :64] / 64.0
        ellipse = (xx - 0.5) ** 2 + 1.5 * (yy - 0.45) ** 2 < 0.1
        sources = [("phantom", Image(np.rint(255 * (0.25 + 0.5 * ellipse + 0.15 * xx)).astype(np.uint8), format="png"))]
        args.steps = 20 if args.quick else args.steps
    else:
        exams: dict[str, Path] = {}
        for path in sorted(args.data.glob("*.png")):
            exams.setdefault(path.name.split("_")[0], path)
        sources = [(path.name, read_image(path)) for path in list(exams.values())[: args.n]]
    target = prepare_model(None, kind=args.kind, arch=args.arch, size=args.size, seed=args.seed)
    settings = AttackSettings(steps=args.steps, dp_epsilon=args.dp_epsilon, seed=args.seed)
    rows = []
    start = time.perf_counter()
    for name, image in sources:
        t0 = time.perf_counter()
        _, record = api.fl_attack(image, target, settings=settings, device=args.device)
        rows.append({
            "image": name,
            "plain": {k: round(record["plain"][k], 4) for k in ("ssim", "psnr")},
            "dp": {k: round(record["dp"][k], 4) for k in ("ssim", "psnr")},
            "random_start": {k: round(record["baseline"][k], 4) for k in ("ssim", "psnr")},
            "label_inferred": {"plain": record["plain"].get("label_used") == record["plain"].get("label_true"), "dp": record["dp"].get("label_used") == record["dp"].get("label_true")} if args.kind == "cls" else None,
            "seconds": round(time.perf_counter() - t0, 1),
        })
    dp_record = record["dp"]["dp"]

    def summary(arm: str) -> dict:
        ssim = [r[arm]["ssim"] for r in rows]
        psnr = [r[arm]["psnr"] for r in rows]
        return {"ssim_mean": round(float(np.mean(ssim)), 4), "ssim_min": round(float(np.min(ssim)), 4), "ssim_max": round(float(np.max(ssim)), 4), "psnr_mean": round(float(np.mean(psnr)), 2), "images_ssim_ge_0.5": int(sum(s >= 0.5 for s in ssim))}

    out = {
        "data": str(args.data) if not args.quick else "phantom",
        "images": len(rows),
        "model": target.description,
        "size": args.size,
        "steps": args.steps,
        "dp": {k: dp_record[k] for k in ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps")},
        "summary": {arm: summary(arm) for arm in ("plain", "dp", "random_start")},
        "goal_plain_ssim_ge_0.5_and_dp_below": all(r["plain"]["ssim"] >= 0.5 and r["dp"]["ssim"] < 0.5 for r in rows),
        "per_image": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
