"""Latency of the collaborative segmentation query; prints one JSON document.

    python benchmarks/collab.py [--size 256] [--batch 1] [--iters 10] [--device cuda] [--precision bf16]
                                [--transform linear|nonlinear] [--block-permute G] [--compare]

One query = client encode + KLT (ae-image encoder, z' = Qᵀz + b), server map (invert, UMN,
re-apply), client decode (invert, ae-mask decoder). Random-init networks at the default
architecture (timing does not depend on the weights); everything runs through
core.predict.Predictor, as the commands do; no file I/O. Payload: the protected latents of
one image (fp32 and fp16). Goals: payload ≤ 0.88 MB per 256² query; ≤ 5 ms in total on one
H100; a keyed nonlinear transform within 1.5× of the linear KLT's latency per query.
``--compare`` times linear, nonlinear and nonlinear with ``--block-permute`` (default 4)
alternately, ``--iters`` each, and reports the ratios.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--quick", action="store_true", help="64², 3 iterations (smoke run)")
    parser.add_argument("--transform", default="linear", choices=["linear", "nonlinear"])
    parser.add_argument("--block-permute", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="linear vs nonlinear vs nonlinear + block permutation")
    args = parser.parse_args()
    if args.quick:
        args.size, args.iters = 64, 3

    import numpy as np
    import torch

    from medtools.collab import klt
    from medtools.collab.autoencoder import DEFAULT_LATENT_CHANNELS, DEFAULT_WIDTHS, build_autoencoder, payload_numbers
    from medtools.collab.latents import decode, encode
    from medtools.collab.umn import POOL_SIZES, build_umn
    from medtools.core.device import resolve_device
    from medtools.core.predict import Predictor
    from medtools.core.registry import discover

    discover()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    ae_cfg = {"in_channels": 1, "out_channels": 1, "widths": list(DEFAULT_WIDTHS), "latent_channels": list(DEFAULT_LATENT_CHANNELS), "image_size": args.size}
    umn_cfg = {"in_channels": list(DEFAULT_LATENT_CHANNELS), "out_channels": list(DEFAULT_LATENT_CHANNELS), "image_size": args.size, "widths": list(DEFAULT_WIDTHS), "pool_sizes": list(POOL_SIZES)}
    ae_image = Predictor.from_model(build_autoencoder(**ae_cfg).eval().to(device), kind="ae-image", config=ae_cfg, norm={"method": "unit"}, precision=args.precision)
    ae_mask = Predictor.from_model(build_autoencoder(**ae_cfg).eval().to(device), kind="ae-mask", config=ae_cfg, norm={"method": "unit"}, precision=args.precision)
    umn = Predictor.from_model(build_umn(**umn_cfg).eval().to(device), kind="umn", config=umn_cfg, precision=args.precision)
    x = np.random.default_rng(0).random((args.batch, 1, args.size, args.size), dtype=np.float32)
    from medtools.collab.autoencoder import pack, unpack

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            out = fn()
        sync()
        return out, (time.perf_counter() - start) / args.iters / args.batch * 1000

    def query(key) -> dict[str, float]:
        protected, t_encode = timed(lambda: klt.apply(key, encode(ae_image, x)))

        def server():
            plain = klt.invert(key, protected)
            return klt.apply(key, unpack(umn.predict(pack(plain).astype(np.float32), model_space=True), umn.model.out_shapes))

        mapped, t_map = timed(server)
        _, t_decode = timed(lambda: decode(ae_mask, klt.invert(key, mapped)))
        return {"encode_klt": round(t_encode, 3), "map": round(t_map, 3), "decode": round(t_decode, 3), "total": round(t_encode + t_map + t_decode, 3)}

    numbers = payload_numbers(DEFAULT_LATENT_CHANNELS, args.size)
    result = {"device": str(device), "precision": args.precision, "size": args.size, "batch": args.batch, "iters": args.iters, "torch_threads": torch.get_num_threads()}
    if args.compare:
        blocks = args.block_permute or 4
        keys = {"linear": klt.generate(DEFAULT_LATENT_CHANNELS, seed=0), "nonlinear": klt.generate(DEFAULT_LATENT_CHANNELS, seed=0, transform="nonlinear"),
                f"nonlinear-b{blocks}": klt.generate(DEFAULT_LATENT_CHANNELS, seed=0, transform="nonlinear", block_permute=blocks)}
        rounds = {name: [] for name in keys}
        for _ in range(3):  # alternate, so a busy machine slows every transform alike; best of three
            for name, key in keys.items():
                rounds[name].append(query(key))
        best = {name: min(r, key=lambda t: t["total"]) for name, r in rounds.items()}
        result["ms_per_query"] = best
        result["ratio_to_linear"] = {name: round(t["total"] / best["linear"]["total"], 3) for name, t in best.items()}
    else:
        key = klt.generate(DEFAULT_LATENT_CHANNELS, seed=0, transform=args.transform, block_permute=args.block_permute)
        result["transform"] = key.describe()
        result["ms_per_query"] = query(key)
    result.update({"payload_bytes": {"fp32": numbers * 4, "fp16": numbers * 2}, "latent_numbers": numbers})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
