#!/usr/bin/env python3
"""Every transform against the same attacks, on an examples/collab work folder.

    transforms.py WORK [--configs NAME,...] [--umn-epochs 30] [--inversion-epochs 20]
                       [--dp-epsilon 8] [--curve 1,2,4,8,16,32] [--frontier]

``--frontier`` runs the weaker and stronger settings (gain 0.5 and 2, 2×2 and 8×8 blocks) into
WORK/transforms/frontier.json; ``frontier.py`` plots Dice, inversion PSNR and MIA AUC over them.

WORK holds the split (``data/``) and the shared autoencoders (``ae-image``, ``ae-mask``), as
the Makefile makes them. For each transform configuration (keys ``linear``, ``linear-b4``,
``nonlinear``, ``nonlinear-b4``; with ``--frontier`` also weaker and stronger settings) it runs
the commands a client pair and a keyless server would run, and writes WORK/transforms/NAME/:

* keys a and b (klt-keygen --transform … --block-permute …), protected latents of both
  clients (klt-encode);
* the keyless server: client a's UMN trained on a's protected latents (umn-train without
  --keys; again with --dp-epsilon), a's test latents mapped (umn-map) and decoded with a's
  key (klt-decode) and with b's key (the other client), scored by collab-eval;
* collab-attack on a's protected image latents (train + test): the eavesdropper and the
  other client, known plaintext with N known images (--known-images), the learned inversion
  over random keys of the same transform (--public: client b's training images) and
  membership on both keyless UMNs.

Each step's JSON lands in that folder; summary.json gathers one row per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "linear": ["--transform", "linear"],
    "linear-b4": ["--transform", "linear", "--block-permute", "4"],
    "nonlinear": ["--transform", "nonlinear"],
    "nonlinear-b4": ["--transform", "nonlinear", "--block-permute", "4"],
}
FRONTIER = {
    "nonlinear-g0.5": ["--transform", "nonlinear", "--gain", "0.5"],
    "nonlinear-g2": ["--transform", "nonlinear", "--gain", "2"],
    "nonlinear-b2": ["--transform", "nonlinear", "--block-permute", "2"],
    "nonlinear-b8": ["--transform", "nonlinear", "--block-permute", "8"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--configs", default=None)
    parser.add_argument("--frontier", action="store_true")
    parser.add_argument("--umn-epochs", type=int, default=30)
    parser.add_argument("--inversion-epochs", type=int, default=20)
    parser.add_argument("--dp-epsilon", type=float, default=8.0, help="ε of the DP-SGD UMN (0: no DP run)")
    parser.add_argument("--curve", default="1,2,4,8,16,32")
    parser.add_argument("--widths", default="8,16,32")
    parser.add_argument("--medtools", default=os.environ.get("MEDTOOLS", "medtools"))
    args = parser.parse_args()
    work = args.work.resolve()
    data = work / "data"
    table = {**CONFIGS, **FRONTIER}
    names = args.configs.split(",") if args.configs else list(FRONTIER if args.frontier else CONFIGS)

    def run(*cmd: object, out: Path | None = None) -> str:
        proc = subprocess.run([args.medtools, *map(str, cmd)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
        if out is not None:
            out.write_text(proc.stdout)
        return proc.stdout

    summary_path = work / "transforms" / ("frontier.json" if args.frontier else "summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in names:
        d = work / "transforms" / name
        d.mkdir(parents=True, exist_ok=True)
        start = time.time()
        for client in ("a", "b"):
            key = d / f"{client}.key"
            if not key.exists():
                run("klt-keygen", "-m", work / "ae-image.safetensors", "-o", key, *table[name], "-q")
            for part in ("train", "test"):
                for kind, model in (("images", "ae-image"), ("masks", "ae-mask")):
                    target = d / "lat" / client / part / kind
                    if not target.exists():
                        run("klt-encode", data / client / part / kind, "-m", work / f"{model}.safetensors", "-k", key, "-o", target, "-q")
        (d / "payload.safetensors").unlink(missing_ok=True)
        payload = json.loads(run("klt-encode", next(iter(sorted((data / "a" / "test" / "images").glob("*.png")))), "-m", work / "ae-image.safetensors", "-k", d / "a.key", "-o", d / "payload.safetensors", "--json", "-q").splitlines()[0])
        for tag, extra in (("umn", []), ("umn-dp", ["--dp-epsilon", str(args.dp_epsilon)]))[: 2 if args.dp_epsilon else 1]:
            ckpt = d / f"{tag}.safetensors"
            if not ckpt.exists():
                run("umn-train", d / "lat" / "a" / "train", "--widths", args.widths, "--epochs", args.umn_epochs, *extra, "-o", ckpt, "-q")
            run("umn-map", d / "lat" / "a" / "test" / "images", "-m", ckpt, "-o", d / f"mapped-{tag}", "--overwrite", "-q")
            for who in ("a", "b"):
                run("klt-decode", d / f"mapped-{tag}", "-m", work / "ae-mask.safetensors", "-k", d / f"{who}.key", "-o", d / f"pred-{tag}-{who}", "--overwrite", "-q")
                run("collab-eval", d / f"pred-{tag}-{who}", "--truth", data / "a" / "test" / "masks", "--json", "-q", out=d / f"eval-{tag}-{who}.json")
            run("collab-attack", "--umn", ckpt, "--members", d / "lat" / "a" / "train", "--nonmembers", d / "lat" / "a" / "test", "--json", "-q", out=d / f"mia-{tag}.json")
        if not (d / "attack.json").exists():
            run(
                "collab-attack", d / "lat" / "a" / "train" / "images", d / "lat" / "a" / "test" / "images",
                "--images", data / "a" / "train" / "images", "--images", data / "a" / "test" / "images",
                "-m", work / "ae-image.safetensors", "--true-key", d / "a.key", "--known", "1", "--known-pairs", "1000000",
                "--known-images", args.curve, "--public", data / "b" / "train" / "images", "--inversion-epochs", args.inversion_epochs, "--json", "-q",
                out=d / "attack.json",
            )
        load = lambda p: json.loads((d / p).read_text())  # noqa: E731
        attack = load("attack.json")
        ki = attack["known_images"]
        row = {
            "config": name,
            "keygen": table[name],
            "dice_keyless": load("eval-umn-a.json")["dice"],
            "dice_keyless_dp": load("eval-umn-dp-a.json")["dice"] if args.dp_epsilon else None,
            "dice_other_client": load("eval-umn-b.json")["dice"],
            "dice_prior": load("eval-umn-a.json")["baseline_prior_dice"],
            "mia_auc": load("mia-umn.json")["membership"]["auc"],
            "mia_auc_dp": load("mia-umn-dp.json")["membership"]["auc"] if args.dp_epsilon else None,
            "dp_epsilon": args.dp_epsilon or None,
            "reference_psnr": ki["reference_psnr"],
            "with_key_psnr": ki.get("with_key_psnr"),
            "no_key_psnr": attack["latent_attacks"]["no_key_psnr"],
            "other_key_psnr": attack["latent_attacks"]["wrong_key_psnr"],
            "known_images": {str(r["images"]): {k: r[k] for k in ("closed_form_psnr", "learned_psnr", "blocks_recovered") if k in r} for r in ki["curve"]},
            "learned_inversion_psnr": attack["learned_inversion"]["psnr"],
            "learned_inversion_reference_psnr": attack["learned_inversion"]["reference_psnr"],
            "payload_bytes": payload["payload_bytes"],
            "targets": ki["targets"],
            "seconds": round(time.time() - start, 1),
        }
        summary[name] = row
        summary_path.write_text(json.dumps(summary, indent=1))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
