#!/usr/bin/env python3
"""One Markdown table from an examples/collab work folder (the JSON files the Makefile writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path):
    """A result file, or None while it is missing or still being written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "work")
    print("| client | Dice | IoU | empty / all-fg / prior Dice | wrong-key Dice | image AE PSNR / SSIM | mask AE PSNR | U-Net Dice |")
    print("|---|---|---|---|---|---|---|---|")
    base = load(work / "baseline.json") or {}
    for client in ("a", "b"):
        e, w = load(work / f"eval-{client}.json"), load(work / f"eval-wrong-key-{client}.json")
        if not e:
            continue
        unet = base.get(client, {}).get("dice")
        print(f"| {client} ({e['cases']}) | {e['dice']:.3f} | {e['iou']:.3f} | {e['baseline_empty_dice']:.3f} / {e['baseline_full_dice']:.3f} / {e.get('baseline_prior_dice', float('nan')):.3f} | "
              f"{w['dice'] if w else float('nan'):.3f} | {e['image_ae']['psnr']:.2f} / {e['image_ae']['ssim']:.3f} | {e['mask_ae']['psnr']:.2f} | {'-' if unet is None else f'{unet:.3f}'} |")
    keyless = load(work / "eval-keyless.json")
    if keyless:
        print(f"\nkeyless server (client a, UMN in the protected space): Dice {keyless['dice']:.3f}, IoU {keyless['iou']:.3f}")
    for name in ("attack.json", "attack-surrogate.json"):
        a = load(work / name)
        if not a or "latent_attacks" not in a:
            continue
        la = a["latent_attacks"]
        print(f"\n{name} ({la.get('attacker_encoder', '')}): no key {la['no_key_psnr']:.2f} dB, wrong key {la['wrong_key_psnr']:.2f} dB, mean image {la['mean_image_psnr']:.2f} dB, with key {la.get('with_key_psnr', float('nan')):.2f} dB; falls at {la['falls_at_pairs']} pairs per scale")
        for row in la["known_plaintext"]:
            print(f"  N={row['pairs']}: PSNR {row['psnr']:.2f} dB, key error {row.get('key_error', float('nan')):.2e}")
        if "learned_inversion" in a:
            li = a["learned_inversion"]
            print(f"  learned inversion (random keys, {li['public_images']} public images): PSNR {li['psnr']:.2f} dB, SSIM {li['ssim']:.3f}; its decoder on plain latents {li['plain_psnr']:.2f} dB")
        if "membership" in a:
            print(f"  MIA AUC {a['membership']['auc']:.3f} ({a['membership']['members']} members, {a['membership']['nonmembers']} non-members)")
    k = load(work / "attack-keyless.json")
    if k:
        print(f"\nkeyless MIA AUC {k['membership']['auc']:.3f}")
    for client in ("a", "b"):
        p = load(work / "lat" / client / "payload.json")
        if p:
            print(f"payload per query (client {client}): {p['payload_bytes']} bytes tensors, {p['file_bytes']} bytes file")


def transforms(work: Path) -> None:
    """One table per transform from transforms.py's summary.json (and frontier.json)."""
    base = load(work / "baseline.json") or {}
    unet = base.get("a", {}).get("dice")
    for name in ("summary.json", "frontier.json"):
        rows = load(work / "transforms" / name) or {}
        for config, r in rows.items():
            ref = r["reference_psnr"]
            print(f"\n#### {config} (`klt-keygen {' '.join(r['keygen'])}`)\n")
            print("| measure | reached | goal |")
            print("|---|---|---|")
            curve = r["known_images"]
            cells = []
            for n, v in curve.items():
                extra = f", blocks {v['blocks_recovered']:.2f}" if "blocks_recovered" in v else ""
                cells.append(f"N={n}: {v['closed_form_psnr']:.2f} / {v['learned_psnr']:.2f}{extra}")
            at8 = curve.get("8")
            verdict = "-" if at8 is None else ("met" if max(at8["closed_form_psnr"], at8["learned_psnr"]) <= ref + 3 else "missed")
            print(f"| known plaintext, PSNR dB (closed form / learned inverse), {r['targets']} targets; no information {ref:.2f}, with key {r['with_key_psnr']:.2f} | {'; '.join(cells)} | ≤ {ref + 3:.2f} at N=8: {verdict} |")
            li, lref = r["learned_inversion_psnr"], r["learned_inversion_reference_psnr"]
            print(f"| learned inversion over random keys (no key, no pair) | {li:.2f} dB (no information {lref:.2f}) | ≤ {lref + 3:.2f}: {'met' if li <= lref + 3 else 'missed'} |")
            print(f"| eavesdropper (decodes without key) / other client (b's key), image PSNR | {r['no_key_psnr']:.2f} / {r['other_key_psnr']:.2f} dB | |")
            print(f"| other client's key on a's mapped masks, Dice | {r['dice_other_client']:.3f} (mean-mask prior {r['dice_prior']:.3f}) | |")
            eps = f"ε={r['dp_epsilon']:g}" if r.get("dp_epsilon") else "ε=?"
            dp = f"; DP-SGD {eps}: {r['mia_auc_dp']:.3f}" if r.get("mia_auc_dp") is not None else ""
            print(f"| membership AUC, keyless UMN | {r['mia_auc']:.3f}{dp} | ≤ 0.60: {'met' if min(r['mia_auc'], r.get('mia_auc_dp') or 1) <= 0.60 else 'missed'} |")
            dpd = f"; DP-SGD {eps}: {r['dice_keyless_dp']:.3f}" if r.get("dice_keyless_dp") is not None else ""
            goal = f"≥ {unet - 0.03:.3f} (U-Net {unet:.3f})" if unet is not None else "U-Net − 0.03"
            print(f"| Dice, keyless server (client a) | {r['dice_keyless']:.3f}{dpd} | {goal} |")


if __name__ == "__main__":
    if "--transforms" in sys.argv:
        sys.argv.remove("--transforms")
        transforms(Path(sys.argv[1] if len(sys.argv) > 1 else "work"))
        raise SystemExit(0)
    main()
