"""Throughput of `segment` and `protect` on random slices; prints one JSON document.

    python benchmarks/brain.py [--size 256] [--channels 4] [--batch 64] [--precision bf16] [--compile] [--device cuda]

Measures the model work only (no file I/O): segment = forward passes of the smp U-Net
(ResNet34) on batches of slices; protect = PGD steps (attacker ResNet18 + utility U-Net,
forward and backward). Wall-clock numbers go to docs/results.md, never into tests.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run on CPU")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batch, args.iters, args.pgd_steps, args.encoder = 64, 8, 2, 2, "resnet18"

    import torch

    import medtools.brain.models  # noqa: F401  (registers seg and reid)
    from medtools.brain.pgd import pgd_delta
    from medtools.core import ckpt
    from medtools.core.device import autocast, prepare_model, resolve_device, resolve_precision
    from medtools.core.predict import Predictor

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    seg_config = {"arch": "unet", "encoder": args.encoder, "in_channels": args.channels, "classes": 4, "image_size": args.size, "label_values": [0, 1, 2, 4]}
    reid_config = {"arch": "resnet18", "in_channels": args.channels, "num_classes": 16, "image_size": args.size, "class_names": [str(i) for i in range(16)]}
    seg = prepare_model(ckpt.new_model("seg", seg_config).eval(), device, compile=args.compile)
    reid = prepare_model(ckpt.new_model("reid", reid_config).eval(), device)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), autocast(device, precision):
        for _ in range(2):
            seg(x)
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            seg(x).argmax(1)
        sync()
        seg_rate = args.batch * args.iters / (time.perf_counter() - start)

    for p in list(seg.parameters()) + list(reid.parameters()):
        p.requires_grad_(False)
    attacker = Predictor.from_model(reid, kind="reid", config=reid_config, precision=precision)
    utility = Predictor.from_model(seg, kind="seg", config=seg_config, precision=precision)
    run = lambda: pgd_delta(x, [(attacker, list(range(args.channels)))], eps=0.05, steps=args.pgd_steps, step_size=0.0125, objective="untargeted", identity=[None], utility=(utility, list(range(args.channels))))  # noqa: E731
    with autocast(device, precision):
        run()
        sync()
        start = time.perf_counter()
        run()
        sync()
        protect_rate = args.batch / (time.perf_counter() - start)
    print(json.dumps({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
        "compile": args.compile,
        "size": args.size,
        "channels": args.channels,
        "batch": args.batch,
        "encoder": args.encoder,
        "segment_slices_per_s": round(seg_rate, 2),
        "protect_pgd_steps": args.pgd_steps,
        "protect_slices_per_s": round(protect_rate, 2),
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
