"""Saliency speed of `explain` on one real volume or image; prints one JSON document.

    python benchmarks/explain.py SCAN -m CKPT [--method gradcam] [--batch-size 16] [--threads 2] [--key K]

Times ``medtools.api.explain`` (the map only, no --check; the model loaded before the clock
starts) per explained slice and class: wall-clock and process CPU seconds (the CPU figure does
not grow when other jobs share the cores; the wall figure does). Numbers go to
docs/results.md, never into tests.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scan")
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--key", default=None, help="a cls model's key file")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from medtools import api
    from medtools.imagecipher.keyfile import read_key_file

    torch.set_num_threads(args.threads)
    key = read_key_file(args.key) if args.key else None
    image = api.read_image(args.scan)
    model = api.load_model(args.model, key=key, device=args.device)
    api.explain([image], model, method=args.method, batch_size=args.batch_size)  # warm-up (first-call allocations)
    runs = []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        _, result = api.explain([image], model, method=args.method, batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        slices = sum(t["slices"] for t in result["targets"])
        runs.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "explained_slices": slices,
                     "wall_s_per_slice_class": round(wall / max(slices, 1), 3), "cpu_s_per_slice_class": round(cpu / max(slices, 1), 3)})
    print(json.dumps({"scan": args.scan, "shape": list(image.array.shape), "model": args.model, "method": args.method,
                      "batch_size": args.batch_size, "threads": args.threads, "device": args.device, "torch": torch.__version__, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
