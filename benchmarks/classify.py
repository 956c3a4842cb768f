"""Inference throughput of the cls models, as JSON on stdout (images/s).

    python benchmarks/classify.py                 # densenet121 and xception at 224², CPU (+ CUDA when present)
    python benchmarks/classify.py --quick         # 64², a few batches (smoke run)

For each architecture (timm densenet121, legacy_xception), random weights, one input channel:
model only (images already encrypted, through Predictor.predict) and encryption included
(8-bit plain images → block or logistic-sine cipher → Predictor). On CUDA the Predictor runs
bf16 autocast and channels_last (its defaults there); on CPU fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench(arch: str, size: int, batch: int, batches: int, device: str) -> dict:
    import torch

    from medtools.cls.cipher import Encryption
    from medtools.cls.train import NORM
    from medtools.core import ckpt
    from medtools.core.predict import Predictor
    from medtools.nets.classifier import build_classifier

    config = {"arch": arch, "in_channels": 1, "num_classes": 2, "drop_rate": 0.0, "image_size": size, "class_names": ["NoTumor", "Tumor"], "encryption": "none"}
    model = build_classifier(arch=arch, in_channels=1, num_classes=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = ckpt.save(Path(tmp) / "m.safetensors", model.state_dict(), kind="cls", config=config, norm=NORM)
        predictor = Predictor(path, kind="cls", device=device, batch_size=batch)
    rng = np.random.default_rng(0)
    plain = rng.random((batch * batches, 1, size, size), dtype=np.float32)
    predictor.predict(plain[:batch])  # warm-up
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    out = {"arch": arch, "size": size, "device": str(predictor.device), "precision": predictor.precision, "batch": batch}
    start = time.perf_counter()
    predictor.predict(plain)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    out["model_only_images_per_s"] = round(len(plain) / (time.perf_counter() - start), 1)
    key = os.urandom(32)
    for method in ("block", "logistic-sine"):
        enc = Encryption(method, key, 16)
        enc.encrypt_batch(plain[:1])  # key schedule
        start = time.perf_counter()
        predictor.predict(enc.encrypt_batch(plain))
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        out[f"with_{method}_images_per_s"] = round(len(plain) / (time.perf_counter() - start), 1)
        start = time.perf_counter()
        enc.encrypt_batch(plain)
        out[f"{method}_only_images_per_s"] = round(len(plain) / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()
    import torch

    size = args.size or (64 if args.quick else 224)
    batches = 1 if args.quick else 3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        batch = 128 if device == "cuda" else 16
        for arch in ("densenet121", "legacy_xception"):
            results.append(bench(arch, size, batch, batches * (8 if device == "cuda" else 1), device))
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
