"""Sampling and FID-feature throughput of the synthesis family; prints one JSON document.

    python benchmarks/synth.py                      # 25M-parameter UNet at 128×128×1, GPU targets
    python benchmarks/synth.py --quick              # tiny CPU run (seconds)
    python benchmarks/synth.py --samplers ddim:50,dpm-solver:20,ddpm:1000 --precision bf16

Weights are random: speed does not depend on them (the quality comparison of samplers on a
trained model is in examples/synth-audit, target `samplers`). Images/s counts whole
reverse processes (all steps) per second after one warm-up batch; FID features/s runs
torch-fidelity's Inception-v3 (random weights, uint8 input resized to 299×299 inside).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_sampling(net, sched_config, *, sampler: str, steps: int, batch: int, shape, device, precision: str, repeats: int) -> dict:
    from medtools.synth.schedule import image_generators, make_sampler, sample

    scheduler = make_sampler(sampler, sched_config)
    sample(net, scheduler, steps=min(steps, 2), generators=image_generators(0, range(batch)), shape=shape, device=device, precision=precision)
    _sync(device)
    started = time.perf_counter()
    for r in range(repeats):
        sample(net, scheduler, steps=steps, generators=image_generators(r + 1, range(batch)), shape=shape, device=device, precision=precision)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"sampler": sampler, "steps": steps, "precision": precision, "batch_size": batch, "images": batch * repeats, "seconds": round(seconds, 3), "images_per_s": round(batch * repeats / seconds, 3)}


def bench_inception(device, *, batch: int, size: int, repeats: int) -> dict:
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep random weights: speed only
            return None

    with tempfile.TemporaryDirectory() as tmp:
        torch.save({}, Path(tmp) / "empty.pth")
        net = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(Path(tmp) / "empty.pth")).to(device).eval()
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    with torch.no_grad():
        net(pixels)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            net(pixels)
        _sync(device)
    seconds = time.perf_counter() - started
    return {"extractor": "inception-v3-compat (random weights)", "input": f"{size}x{size} uint8", "batch_size": batch, "images_per_s": round(batch * repeats / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny UNet at 32×32, few steps (CPU smoke run)")
    parser.add_argument("--device", default=None, help="auto|cpu|cuda")
    parser.add_argument("--precision", default=None, help="auto|fp32|bf16 for the fast samplers (DDPM-1000 always also in fp32)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--widths", default="64,128,256,256", help="~26.6M parameters at the defaults")
    parser.add_argument("--attention", default="2,3")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samplers", default="ddim:50,dpm-solver:20,ddpm:1000", help="name:steps,...")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fid-batch", type=int, default=256)
    args = parser.parse_args(argv)

    import torch

    from medtools.core.device import resolve_device, resolve_precision
    from medtools.synth.models import build_unet, count_parameters, unet_config
    from medtools.synth.schedule import scheduler_config

    if args.quick:
        args.size, args.widths, args.attention, args.batch_size, args.repeats, args.fid_batch = 32, "16,32", "1", 4, 1, 4
        args.samplers = "ddim:10,dpm-solver:10,ddpm:20"
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    widths = [int(w) for w in args.widths.split(",")]
    attention = [int(a) for a in args.attention.split(",") if a]
    torch.manual_seed(0)
    config = unet_config(size=args.size, widths=widths, attention=attention, layers_per_block=1 if args.quick else 2, norm_groups=8 if args.quick else 32)
    net = build_unet(**config).to(device).eval()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    sched = scheduler_config()
    shape = (1, args.size, args.size)
    runs = []
    for spec in args.samplers.split(","):
        name, steps = spec.split(":")
        precisions = [precision] + (["fp32"] if name == "ddpm" and precision != "fp32" else [])
        for prec in precisions:
            runs.append(bench_sampling(net, sched, sampler=name, steps=int(steps), batch=args.batch_size, shape=shape, device=device, precision=prec, repeats=args.repeats))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    fid = bench_inception(device, batch=args.fid_batch, size=args.size, repeats=args.repeats)
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "unet": {"parameters": count_parameters(net), "size": args.size, "widths": widths, "attention": attention},
        "sampling": runs,
        "fid_features": fid,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
