"""``cipher-attack``: what an attacker recovers from block- or logistic-sine-encrypted images.

Threat model: the attacker never holds the key. The evaluator holds plain images and the
key, encrypts the images (as the data owner would) and hands the attack only what the
attacker would see:

* **known-plaintext** (one plain/cipher pair + the other cipher images): the block
  transform is recovered by ``imagecipher.block.known_plaintext_attack`` (the one
  implementation; ``cipher-audit`` calls it too) and applied to the other ciphertexts.
  The same attack, and a keystream attack (c − p mod 256, as if the cipher were an
  additive stream), is run against logistic-sine, whose diffusion depends on the whole
  plaintext, so neither should recover another image.
* **ciphertext-only** (block only; many cipher images of one size, no plaintext):
  1. negative-positive flags: the per-position mean over all blocks clusters around μ
     (kept) and 255 − μ (flipped) because every position sees the same distribution of
     plain values; positions above mid-grey are taken as flipped (assumes the images are
     mostly darker than mid-grey, like MRI with its black background; the other polarity
     is the negative image);
  2. pixel shuffle: correlation of the unflipped positions over all non-constant blocks;
     neighbours in the plain block correlate most, so classical MDS of √(1 − r) gives a
     2-D layout that is snapped to the B×B grid (best of 90 rotations) and refined by
     pairwise swaps that raise the summed correlation of grid neighbours;
  3. jigsaw step: the layout is known up to the 8 symmetries of the square; the one whose
     reassembled blocks best continue across block borders (least mean absolute
     difference between border pixels of adjacent blocks) is kept.
  Recovered images are scored against the truth by PSNR/SSIM and by the fraction of block
  positions placed right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

BITS = 8


def _psnr_ssim(truth: np.ndarray, guess: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = truth.astype(np.float64) / 255.0, guess.astype(np.float64) / 255.0
    psnr = float("inf") if np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=1.0))
    return psnr, float(structural_similarity(a, b, data_range=1.0))


def _summary(truths: Sequence[np.ndarray], guesses: Sequence[np.ndarray]) -> dict[str, Any]:
    scores = [_psnr_ssim(t, g) for t, g in zip(truths, guesses)]
    psnr = [p for p, _ in scores]
    finite = [p for p in psnr if np.isfinite(p)]
    return {
        "images": len(scores),
        "exact_fraction": float(np.mean([np.array_equal(t, g) for t, g in zip(truths, guesses)])) if scores else None,
        "pixel_accuracy": float(np.mean([np.mean(t == g) for t, g in zip(truths, guesses)])) if scores else None,
        "psnr_mean_finite": float(np.mean(finite)) if finite else None,
        "psnr_inf_fraction": float(np.mean([not np.isfinite(p) for p in psnr])) if scores else None,
        "ssim_mean": float(np.mean([s for _, s in scores])) if scores else None,
    }


def known_plaintext(plains: Sequence[np.ndarray], ciphers: Sequence[np.ndarray], method: str, block: int = 16) -> dict[str, Any]:
    """Pair 0 is known; the others are recovered from their ciphertexts alone."""
    from medtools.imagecipher import block as block_cipher

    if len(plains) < 2:
        raise InputError("the known-plaintext attack needs at least two images (one known pair, others to recover)")
    out: dict[str, Any] = {"attack": "known-plaintext", "known_pairs": 1}
    source, negated = block_cipher.known_plaintext_attack(plains[0], ciphers[0], BITS, block)
    recovered = [block_cipher.apply_recovered(c, source, negated, BITS, block) for c in ciphers[1:]]
    out["block_transform"] = _summary(plains[1:], recovered)
    if method != "block":
        # an additive keystream would be the same for every image of the known pair's size
        keystream = (ciphers[0].astype(np.int16) - plains[0].astype(np.int16)) % 256
        same = [i for i in range(1, len(ciphers)) if ciphers[i].shape == ciphers[0].shape]
        guesses = [((ciphers[i].astype(np.int16) - keystream) % 256).astype(np.uint8) for i in same]
        out["keystream"] = _summary([plains[i] for i in same], guesses)
    return out


def _blocks(image: np.ndarray, block: int) -> np.ndarray:
    h, w = image.shape
    return image.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(-1, block * block)


def _grid_score(cells: np.ndarray, corr: np.ndarray, block: int) -> float:
    """Summed correlation of grid neighbours; cells[q] = grid cell of cipher position q."""
    at = np.empty_like(cells)
    at[cells] = np.arange(len(cells))  # at[cell] = position there
    grid = at.reshape(block, block)
    return float(corr[grid[:, :-1], grid[:, 1:]].sum() + corr[grid[:-1], grid[1:]].sum())


def _snap(coords: np.ndarray, block: int) -> np.ndarray:
    """2-D points → grid cells: B rows by y, each row's B points by x."""
    order = np.argsort(coords[:, 1], kind="stable")
    cells = np.empty(len(coords), dtype=np.int64)
    for row in range(block):
        members = order[row * block : (row + 1) * block]
        members = members[np.argsort(coords[members, 0], kind="stable")]
        cells[members] = row * block + np.arange(block)
    return cells


def _refine(cells: np.ndarray, corr: np.ndarray, block: int, rng: np.random.Generator, trials: int) -> np.ndarray:
    """Greedy pairwise swaps of grid cells that raise the neighbour-correlation score."""
    at = np.empty_like(cells)
    at[cells] = np.arange(len(cells))

    def neighbours(cell: int) -> list[int]:
        r, c = divmod(cell, block)
        return [n for n, ok in ((cell - block, r > 0), (cell + block, r < block - 1), (cell - 1, c > 0), (cell + 1, c < block - 1)) if ok]

    def local(cell: int, pos: int, skip: int) -> float:
        return float(sum(corr[pos, at[n]] for n in neighbours(cell) if n != skip))

    for _ in range(trials):
        a, b = (int(v) for v in rng.integers(0, block * block, size=2))
        if a == b:
            continue
        pa, pb = at[a], at[b]
        before = local(a, pa, b) + local(b, pb, a)
        after = local(a, pb, b) + local(b, pa, a)
        if after > before + 1e-12:
            at[a], at[b] = pb, pa
    cells = np.empty_like(at)
    cells[at] = np.arange(len(at))
    return cells


def _symmetries(block: int) -> list[np.ndarray]:
    """The 8 symmetries of the B×B square as maps cell → cell."""
    grid = np.arange(block * block).reshape(block, block)
    maps = []
    for k in range(4):
        for flip in (False, True):
            g = np.rot90(grid, k)
            g = g[:, ::-1] if flip else g
            m = np.empty(block * block, dtype=np.int64)
            m[g.reshape(-1)] = np.arange(block * block)
            maps.append(m)
    return maps


def _border_cost(images: Sequence[np.ndarray], block: int) -> float:
    costs = []
    for x in images:
        x = x.astype(np.float64)
        if x.shape[1] > block:
            costs.append(np.abs(x[:, block - 1 : -1 : block] - x[:, block::block]).mean())
        if x.shape[0] > block:
            costs.append(np.abs(x[block - 1 : -1 : block] - x[block::block]).mean())
    return float(np.mean(costs)) if costs else 0.0


def ciphertext_only(ciphers: Sequence[np.ndarray], block: int = 16, *, seed: int = 0, trials: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(source, negated) per cipher block position from cipher images alone (see module doc)."""
    from medtools.imagecipher import block as block_cipher

    shapes = {c.shape for c in ciphers}
    if len(shapes) != 1:
        raise InputError(f"the ciphertext-only attack needs images of one size, got {sorted(shapes)}")
    top = (1 << BITS) - 1
    blocks = np.concatenate([_blocks(c, block) for c in ciphers]).astype(np.float64)
    negated = blocks.mean(axis=0) > top / 2.0
    plain_like = np.where(negated[None], top - blocks, blocks)
    informative = plain_like[plain_like.std(axis=1) > 0]
    if len(informative) < 3:
        raise InputError("too few non-constant blocks to estimate the pixel shuffle")
    corr = np.nan_to_num(np.corrcoef(informative.T), nan=0.0)
    np.fill_diagonal(corr, 0.0)
    dist2 = np.clip(1.0 - corr, 0.0, None)
    np.fill_diagonal(dist2, 0.0)
    n = len(dist2)
    centre = np.eye(n) - 1.0 / n
    gram = -0.5 * centre @ dist2 @ centre
    values, vectors = np.linalg.eigh(gram)
    coords = vectors[:, -2:] * np.sqrt(np.clip(values[-2:], 0, None))
    best, best_score = None, -np.inf
    for degrees in range(90):
        t = np.deg2rad(degrees)
        rot = coords @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        cells = _snap(rot, block)
        score = _grid_score(cells, corr, block)
        if score > best_score:
            best, best_score = cells, score
    assert best is not None
    cells = _refine(best, corr, block, np.random.default_rng(seed), trials)
    sample = list(ciphers[: min(len(ciphers), 32)])
    candidates = [sym[cells] for sym in _symmetries(block)]
    costs = [_border_cost([block_cipher.apply_recovered(c, cand, negated, BITS, block) for c in sample], block) for cand in candidates]
    return candidates[int(np.argmin(costs))], negated


def load_levels(paths: Sequence[str]) -> list[np.ndarray]:
    """8-bit grey levels of image files (RGB with equal channels → grey)."""
    from medtools.core.io import read_image

    out = []
    for path in paths:
        array = np.asarray(read_image(path).array)
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            array = array[..., 0] if np.array_equal(array[..., 0], array[..., 1]) else np.rint(array[..., :3].mean(axis=-1)).astype(np.uint8)
        if array.dtype != np.uint8 or array.ndim != 2:
            raise InputError(f"{path}: cipher-attack takes 8-bit grey 2-D images (got {array.dtype} {array.shape})")
        out.append(array)
    return out


def run_attacks(paths: Sequence[str], *, method: str, key: bytes, block: int = 16, attacks: Sequence[str] = ("known-plaintext", "ciphertext-only"), seed: int = 0) -> dict[str, Any]:
    """Encrypt the plain images with the key, attack the ciphertexts, score against the plain images."""
    from medtools.imagecipher import block as block_cipher
    from medtools.imagecipher import methods

    if method not in ("block", "logistic-sine"):
        raise UsageError(f"cipher-attack --method is block or logistic-sine, got {method!r}")
    plains = load_levels(paths)
    if not plains:
        raise InputError("no images to attack")
    ciphers = [methods.apply(p, BITS, method, key=key, block_size=block) for p in plains]
    result: dict[str, Any] = {"method": method, "images": len(plains), **({"block_size": block} if method == "block" else {})}
    if "known-plaintext" in attacks:
        result["known_plaintext"] = known_plaintext(plains, ciphers, method, block)
    if "ciphertext-only" in attacks:
        if method != "block":
            result["ciphertext_only"] = {"skipped": "the ciphertext-only attack models the block cipher's structure"}
        else:
            # one attack per image size (the statistics are per block position, pooled over images of one geometry)
            true_source, true_negative, _ = block_cipher.transform(key, block, 1)
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, c in enumerate(ciphers):
                groups.setdefault(c.shape, []).append(index)
            parts, truths, recovered_all, flags, positions = [], [], [], [], []
            for shape, members in sorted(groups.items()):
                source, negated = ciphertext_only([ciphers[i] for i in members], block, seed=seed)
                recovered = [block_cipher.apply_recovered(ciphers[i], source, negated, BITS, block) for i in members]
                flags.append(float(np.mean(negated == true_negative[:, 0])))
                positions.append(float(np.mean(source == true_source)))
                parts.append({"shape": list(shape), "images": len(members), "flags_correct": flags[-1], "positions_correct": positions[-1]})
                truths.extend(plains[i] for i in members)
                recovered_all.extend(recovered)
            result["ciphertext_only"] = {
                "attack": "ciphertext-only",
                "flags_correct": float(np.average(flags, weights=[p["images"] for p in parts])),
                "positions_correct": float(np.average(positions, weights=[p["images"] for p in parts])),
                "groups": parts,
                "recovered": _summary(truths, recovered_all),
                "cipher_baseline": _summary(truths, [ciphers[i] for members in (m for _, m in sorted(groups.items())) for i in members]),
            }
    return result


def attack_command(inputs: Sequence[str], *, method: str, key: bytes | None, block_size: int = 16, attack: str = "both", seed: int = 0) -> dict[str, Any]:
    """``cipher-attack``: expand the inputs, run the chosen attacks, return the report."""
    from medtools.core.inputs import expand_inputs
    from medtools.core.io import RASTER_EXTS

    choices = {"known-plaintext": ("known-plaintext",), "ciphertext-only": ("ciphertext-only",), "both": ("known-plaintext", "ciphertext-only")}
    if attack not in choices:
        raise UsageError(f"--attack is one of {', '.join(choices)}, got {attack!r}")
    if key is None:
        raise UsageError("cipher-attack needs --key FILE to encrypt the plain images it scores the attack on (the attack itself never sees it)")
    paths = [str(i.path) for i in expand_inputs(inputs, exts=RASTER_EXTS)]
    result = run_attacks(paths, method=method, key=key, block=block_size, attacks=choices[attack], seed=seed)
    result["threat_model"] = "attacker holds no key; known-plaintext: one plain/cipher pair + the other ciphertexts; ciphertext-only: all ciphertexts"
    return result
