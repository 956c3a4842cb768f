#!/usr/bin/env python3
"""The plain U-Net the collaborative pipeline is compared with: smp U-Net (resnet18 encoder,
random init) trained on the pooled training images of both clients (what the clients would
get by pooling raw images), evaluated on each client's test images like collab-eval.

    baseline.py WORK [--size 128] [--epochs 40] [--seed 0]   → JSON on stdout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import torch
    import torch.nn.functional as F

    from medtools.collab.autoencoder import case_name, load_batch
    from medtools.collab.evaluate import dice_iou
    from medtools.core import preprocess
    from medtools.core.io import read_image
    from medtools.core.predict import Predictor
    from medtools.core.registry import discover
    from medtools.core.train import TrainSpec, fit
    from medtools.nets.segmenter import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    discover()
    data = args.work / "data"

    def pairs(part: str) -> tuple[list[Path], list[Path]]:
        images = sorted((data / part / "images").glob("*.png"))
        masks = {case_name(p): p for p in (data / part / "masks").glob("*.png")}
        return images, [masks[case_name(p)] for p in images]

    train_images, train_masks = [], []
    for client in ("a", "b"):
        i, m = pairs(f"{client}/train")
        train_images += i
        train_masks += m
    x = torch.from_numpy(load_batch(train_images, args.size, mask=False))
    y = torch.from_numpy(load_batch(train_masks, args.size, mask=True))[:, 0].long()
    config = {"arch": "unet", "encoder": "resnet18", "in_channels": 1, "classes": 2, "encoder_depth": 4}
    model = build_segmenter(**config)

    def step(net, batch):
        xb, yb = batch
        logits = net(xb)
        prob = logits.softmax(1)[:, 1]
        dice = 1 - (2 * (prob * yb).sum((1, 2)) + 1) / (prob.sum((1, 2)) + yb.sum((1, 2)) + 1)
        return F.cross_entropy(logits, yb) + dice.mean()

    out = args.work / "baseline-unet.safetensors"
    spec = TrainSpec(output=out, kind="seg", config={**config, "image_size": args.size, "label_values": [0, 1]}, norm=preprocess.UNIT_NORM, epochs=args.epochs, batch_size=8, lr=2e-3, seed=args.seed)
    history = fit(model, torch.utils.data.TensorDataset(x, y), step, spec)
    predictor = Predictor(out, kind="seg", device="cpu")
    result = {"model": "smp unet resnet18 (pooled training images of a and b)", "size": args.size, "epochs": args.epochs, "train_images": len(train_images), "train_seconds": history["train_seconds"]}
    for client in ("a", "b"):
        images, masks = pairs(f"{client}/test")
        prob = predictor.predict(load_batch(images, args.size, mask=False), softmax=True)[:, 1]
        scores = []
        for p, m in zip(prob, masks):
            truth = read_image(m).array > 0
            full = preprocess.resize(p[None, None], truth.shape)[0, 0] > 0.5
            scores.append(dice_iou(full, truth))
        result[client] = {"dice": float(np.mean([s[0] for s in scores])), "iou": float(np.mean([s[1] for s in scores])), "cases": len(scores)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
