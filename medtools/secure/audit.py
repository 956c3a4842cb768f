"""cipher-audit: the statistics image-cipher papers report, measured the same way here.

* NPCR / UACI: change one plaintext pixel by one grey level, encrypt both, count changed
  cipher pixels (NPCR) and their mean absolute change over the range (UACI). Several
  random positions are averaged. Targets and the α = 0.05 acceptance bounds follow Wu,
  Noonan & Agaian, "NPCR and UACI randomness tests for image encryption", Cyber
  Journals (JSAT) 2011: ideal NPCR = F/(F+1), UACI = (F+2)/(3F+3) with F = 2^bits − 1
  (99.6094 % and 33.4635 % for 8 bits).
* Shannon entropy of the grey-level histogram (ideal: the bit depth, 8 for 8-bit).
* Correlation of adjacent pixels, horizontal, vertical and diagonal (ideal ≈ 0).
* χ² test of histogram uniformity (256 bins; p-value from scipy).
* Key sensitivity: a key differing in one bit must give an unrelated cipher image, and
  must not decrypt the true one.
* Block method only: a known-plaintext attack (one plain/cipher pair recovers the
  transform; ``block.known_plaintext_attack``) to show what "learnable" costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtools.imagecipher import block, derive, methods

KEY_BITS_TESTED = (0, 127, 255)


def ideal(bits: int) -> dict[str, float]:
    top = (1 << bits) - 1
    return {"npcr": 100.0 * top / (top + 1), "uaci": 100.0 * (top + 2) / (3 * top + 3)}


def wu_bounds(bits: int, pixels: int, alpha: float = 0.05) -> dict[str, float]:
    """NPCR critical value and UACI acceptance interval (Wu et al. 2011) for ``pixels`` pixels."""
    from scipy.stats import norm

    top = float((1 << bits) - 1)
    npcr_critical = (top - norm.ppf(1 - alpha) * np.sqrt(top / pixels)) / (top + 1)
    mu = (top + 2) / (3 * top + 3)
    sigma = np.sqrt((top + 2) * (top**2 + 2 * top + 3) / (18 * (top + 1) ** 2 * pixels * top))
    spread = norm.ppf(1 - alpha / 2) * sigma
    return {"alpha": alpha, "npcr_min": 100.0 * npcr_critical, "uaci_low": 100.0 * (mu - spread), "uaci_high": 100.0 * (mu + spread)}


def npcr_uaci(first: np.ndarray, second: np.ndarray, bits: int) -> tuple[float, float]:
    a, b = first.astype(np.int64), second.astype(np.int64)
    npcr = 100.0 * float(np.mean(a != b))
    uaci = 100.0 * float(np.mean(np.abs(a - b))) / ((1 << bits) - 1)
    return npcr, uaci


def entropy(levels: np.ndarray) -> float:
    counts = np.bincount(levels.reshape(-1).astype(np.int64))
    p = counts[counts > 0] / levels.size
    return float(-(p * np.log2(p)).sum())


def expected_entropy(bits: int, pixels: int) -> float | None:
    """Mean entropy of a truly uniform random image of this size (Miller-Madow bias:
    bits − (M − 1)/(2 n ln 2)); below ``bits`` because n samples never fill M bins evenly.
    None when n < 10·M, where the approximation does not hold."""
    levels = 1 << bits
    if pixels < 10 * levels:
        return None
    return float(bits - (levels - 1) / (2 * pixels * np.log(2)))


def _pairs(levels: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    x = levels.astype(np.float64)
    if direction == "horizontal":
        return x[:, :-1].reshape(-1), x[:, 1:].reshape(-1)
    if direction == "vertical":
        return x[:-1, :].reshape(-1), x[1:, :].reshape(-1)
    return x[:-1, :-1].reshape(-1), x[1:, 1:].reshape(-1)


def correlations(levels: np.ndarray) -> dict[str, float]:
    """Pearson correlation of every adjacent pair along the first two axes."""
    out = {}
    for direction in ("horizontal", "vertical", "diagonal"):
        a, b = _pairs(levels, direction)
        if a.std() == 0 or b.std() == 0:
            out[direction] = float("nan")
        else:
            out[direction] = float(np.corrcoef(a, b)[0, 1])
    return out


def chi_square(levels: np.ndarray, bits: int) -> dict[str, Any]:
    from scipy.stats import chi2

    values = levels.reshape(-1).astype(np.int64)
    bins = min(256, 1 << bits)
    values = values >> (bits - int(np.log2(bins)))
    observed = np.bincount(values, minlength=bins)
    expected = values.size / bins
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = bins - 1
    critical = float(chi2.ppf(0.95, dof))
    return {"statistic": statistic, "bins": bins, "dof": dof, "critical_0.05": critical, "p_value": float(chi2.sf(statistic, dof)), "uniform": statistic < critical}


def _encrypt(levels: np.ndarray, bits: int, method: str, key: bytes | None, block_size: int, window: int, *, decrypt: bool = False) -> np.ndarray:
    return methods.apply(levels, bits, method, key=key, block_size=block_size, window=window, decrypt=decrypt)


def run_audit(
    plain_path: Path,
    cipher_path: Path | None,
    *,
    method: str,
    key: bytes | None,
    block_size: int = 16,
    window: int = 5,
    trials: int = 10,
    seed: int = 0,
    plots: Path | None = None,
    known_plaintext: Path | None = None,
) -> dict[str, Any]:
    """Every statistic for one plain image under one method and key (JSON-ready dict)."""
    from medtools.core.io import read_image

    methods.check_method(method, key)
    plain_image = read_image(plain_path)
    plain = methods.image_levels(plain_image)
    bits = plain.bits
    computed = _encrypt(plain.levels, bits, method, key, block_size, window)
    result: dict[str, Any] = {"plain": str(plain_path), "method": method, "shape": list(plain.levels.shape), "bits": bits, "pixels": int(plain.levels.size)}
    if cipher_path is not None:
        cipher = methods.image_levels(read_image(cipher_path)).levels
        result["cipher"] = str(cipher_path)
        result["cipher_matches_key"] = bool(cipher.shape == computed.shape and np.array_equal(cipher, computed))
    else:
        result["cipher"] = None
        cipher = computed

    # differential attack: one pixel changed by one grey level
    rng = np.random.default_rng(seed)
    per_trial = []
    for _ in range(trials):
        changed = plain.levels.copy()
        index = tuple(int(rng.integers(0, s)) for s in changed.shape)
        changed[index] = (int(changed[index]) + 1) % (1 << bits)
        npcr, uaci = npcr_uaci(computed, _encrypt(changed, bits, method, key, block_size, window), bits)
        per_trial.append({"pixel": list(index), "npcr": npcr, "uaci": uaci})
    bounds = wu_bounds(bits, int(plain.levels.size))
    targets = ideal(bits)
    npcr_values = [t["npcr"] for t in per_trial]
    uaci_values = [t["uaci"] for t in per_trial]
    result["npcr"] = {
        "mean": float(np.mean(npcr_values)),
        "min": float(np.min(npcr_values)),
        "max": float(np.max(npcr_values)),
        "target": targets["npcr"],
        "critical_0.05": bounds["npcr_min"],
        "trials_passing": int(sum(v >= bounds["npcr_min"] for v in npcr_values)),
        "trials": trials,
    }
    result["uaci"] = {
        "mean": float(np.mean(uaci_values)),
        "min": float(np.min(uaci_values)),
        "max": float(np.max(uaci_values)),
        "target": targets["uaci"],
        "interval_0.05": [bounds["uaci_low"], bounds["uaci_high"]],
        "trials_passing": int(sum(bounds["uaci_low"] <= v <= bounds["uaci_high"] for v in uaci_values)),
        "trials": trials,
    }
    result["entropy"] = {"plain": entropy(plain.levels), "cipher": entropy(cipher), "ideal": float(min(bits, np.log2(plain.levels.size))), "expected_uniform": expected_entropy(bits, int(plain.levels.size))}
    result["correlation"] = {"plain": correlations(plain.levels), "cipher": correlations(cipher)}
    result["chi_square"] = {"plain": chi_square(plain.levels, bits), "cipher": chi_square(cipher, bits)}
    result["key_sensitivity"] = _key_sensitivity(plain.levels, computed, bits, method, key, block_size, window)
    if known_plaintext is not None:
        result["known_plaintext_attack"] = _known_plaintext(plain.levels, computed, known_plaintext, method, key, block_size, bits)
    if plots is not None:
        result["plots"] = [str(p) for p in write_plots(plots, Path(plain_path), plain.levels, cipher, bits)]
    return result


def _key_sensitivity(plain: np.ndarray, computed: np.ndarray, bits: int, method: str, key: bytes | None, block_size: int, window: int) -> dict[str, Any]:
    if method not in methods.KEYED or key is None:
        return {"applicable": False, "reason": f"{method} takes no key"}
    encrypt_rows, decrypt_rows = [], []
    for bit in KEY_BITS_TESTED:
        other_key = derive.flip_bit(key, bit)
        npcr, uaci = npcr_uaci(computed, _encrypt(plain, bits, method, other_key, block_size, window), bits)
        encrypt_rows.append({"bit": bit, "npcr": npcr, "uaci": uaci})
        npcr, uaci = npcr_uaci(plain, _encrypt(computed, bits, method, other_key, block_size, window, decrypt=True), bits)
        decrypt_rows.append({"bit": bit, "npcr": npcr, "uaci": uaci})
    return {
        "applicable": True,
        "encrypt_with_flipped_key": encrypt_rows,
        "decrypt_with_flipped_key": decrypt_rows,
        "note": "npcr/uaci between the true cipher and the flipped-key cipher, and between the plain image and its flipped-key decryption",
    }


def _known_plaintext(plain: np.ndarray, computed: np.ndarray, other_path: Path, method: str, key: bytes | None, block_size: int, bits: int) -> dict[str, Any]:
    """Learn the block transform from (PLAIN, its cipher); decrypt another image's cipher with it."""
    from medtools.core.io import read_image

    if method != "block" or key is None:
        return {"applicable": False, "reason": "the attack targets the block method's key-reuse structure"}
    source, negated = block.known_plaintext_attack(plain, computed, bits, block_size)
    other = methods.image_levels(read_image(other_path))
    if other.bits != bits or other.levels.ndim != plain.ndim:
        return {"applicable": False, "reason": f"{other_path} has another bit depth or channel count"}
    recovered = block.apply_recovered(block.encrypt(other.levels, key, bits, block_size), source, negated, bits, block_size)
    error = (recovered.astype(np.float64) - other.levels) ** 2
    mse = float(error.mean())
    top = (1 << bits) - 1
    return {
        "applicable": True,
        "pairs_used": 1,
        "target": str(other_path),
        "pixels_recovered_pct": 100.0 * float(np.mean(recovered == other.levels)),
        "psnr_db": None if mse == 0 else float(10 * np.log10(top * top / mse)),  # None: recovered exactly
    }


def write_plots(folder: Path, plain_path: Path, plain: np.ndarray, cipher: np.ndarray, bits: int) -> list[Path]:
    """Histograms and adjacent-pixel scatter plots (plain vs cipher) as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtools.core.io import atomic_path, split_ext

    folder = Path(folder)
    stem = split_ext(plain_path)[0]
    written = []
    bins = min(256, 1 << bits)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for ax, data, title in ((axes[0], plain, "plain"), (axes[1], cipher, "cipher")):
        ax.hist(data.reshape(-1), bins=bins, range=(0, 1 << bits), color="0.3")
        ax.set_title(f"{title} histogram")
        ax.set_xlabel("grey level")
    target = folder / f"{stem}-histogram.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    written.append(target)

    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5), constrained_layout=True)
    for row, (data, title) in enumerate(((plain, "plain"), (cipher, "cipher"))):
        for col, direction in enumerate(("horizontal", "vertical", "diagonal")):
            a, b = _pairs(data, direction)
            pick = rng.choice(a.size, size=min(3000, a.size), replace=False)
            axes[row, col].scatter(a[pick], b[pick], s=1, color="0.2")
            axes[row, col].set_title(f"{title}, {direction}")
    target = folder / f"{stem}-correlation.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    written.append(target)
    return written


def render_audit(result: dict[str, Any]) -> str:
    """A short human-readable report of ``run_audit``'s result."""
    lines = [f"{result['plain']}  method={result['method']}  {result['bits']}-bit  {'x'.join(map(str, result['shape']))}"]
    npcr, uaci = result["npcr"], result["uaci"]
    lines.append(f"NPCR  {npcr['mean']:8.4f} %  (target {npcr['target']:.4f}, Wu α=0.05 min {npcr['critical_0.05']:.4f}; {npcr['trials_passing']}/{npcr['trials']} trials pass)")
    low, high = uaci["interval_0.05"]
    lines.append(f"UACI  {uaci['mean']:8.4f} %  (target {uaci['target']:.4f}, Wu α=0.05 [{low:.4f}, {high:.4f}]; {uaci['trials_passing']}/{uaci['trials']} trials pass)")
    ent = result["entropy"]
    expected = f", a uniform random image of this size: {ent['expected_uniform']:.4f}" if ent.get("expected_uniform") else ""
    lines.append(f"entropy  plain {ent['plain']:.4f}  cipher {ent['cipher']:.4f}  (ideal {ent['ideal']:.4f}{expected})")
    for name in ("plain", "cipher"):
        corr = result["correlation"][name]
        lines.append(f"correlation {name:6s}  h {corr['horizontal']:+.4f}  v {corr['vertical']:+.4f}  d {corr['diagonal']:+.4f}")
    chi = result["chi_square"]["cipher"]
    lines.append(f"chi-square cipher {chi['statistic']:.1f} (dof {chi['dof']}, critical {chi['critical_0.05']:.1f}, p {chi['p_value']:.3g}) -> {'uniform' if chi['uniform'] else 'not uniform'}")
    sens = result["key_sensitivity"]
    if sens.get("applicable"):
        enc = ", ".join(f"bit {r['bit']}: {r['npcr']:.2f} %" for r in sens["encrypt_with_flipped_key"])
        dec = ", ".join(f"bit {r['bit']}: {r['npcr']:.2f} %" for r in sens["decrypt_with_flipped_key"])
        lines.append(f"key sensitivity (pixels changed)  encrypt {enc}; wrong-key decrypt {dec}")
    kpa = result.get("known_plaintext_attack")
    if kpa and kpa.get("applicable"):
        psnr = "exact" if kpa["psnr_db"] is None else f"PSNR {kpa['psnr_db']:.1f} dB"
        lines.append(f"known-plaintext attack (1 pair): {kpa['pixels_recovered_pct']:.2f} % of {kpa['target']} recovered ({psnr})")
    for path in result.get("plots", []):
        lines.append(f"plot {path}")
    return "\n".join(lines)


def audit_job(plain: Path, cipher: Path | None, *, method: str, key_file: Path | None, **options: Any) -> dict[str, Any]:
    """``cipher-audit``: the audit on stdout (text or JSON), a warning when CIPHER is not PLAIN under this key."""
    from medtools.core import report
    from medtools.core.secrets import read_key_file

    result = run_audit(plain, cipher, method=method, key=read_key_file(key_file) if key_file is not None else None, **options)
    report.emit_result(result, render_audit)
    if result.get("cipher_matches_key") is False:
        report.warn(f"{cipher} is not {plain} encrypted with this method and key; statistics use the given cipher image")
    return result
