"""collab-attack: what the Keyed Latent Transform hides, measured against named attackers.

Threat models (who holds what):

* **eavesdropper / other client** sees protected latents and holds a decoder (its own
  client's, or a surrogate trained on public images) but not the key: ``no_key`` decodes the
  protected latents as they are, ``wrong_key`` inverts them with another key first.
* **known plaintext**: the attacker also knows a few of the victim's images (and so their
  latents, exactly with the victim's encoder or approximately with a surrogate) next to
  their protected latents. The KLT is affine per pixel (z' = Qᵀz + b = Az + b), so each scale k is fitted
  by least squares on [z, 1] → z' from N pixel pairs (C_k + 1 unknowns per output
  channel): N ≥ C_k + 1 pairs in general position give the key exactly, fewer leave it
  undetermined (minimum-norm solution). One 256² image gives 128² pairs at the first scale.
* **membership** (the server, which holds the keys in the seed's protocol): the UMN's
  mapping error on a case's latents; members (training pairs) vs held-out patients. AUC is
  P(score(member) > score(non-member)) with score = −error, so 0.5 is chance and > 0.5
  means the attacker finds members (an AUC < 0.5 is an inverted score: flipping it gives
  1 − AUC).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import InputError, UsageError


def fit_affine(z: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares z' ≈ A z + b from pairs (N, d) → (A (d×d), b (d,)); minimum norm if N ≤ d."""
    x = np.concatenate([z.astype(np.float64), np.ones((len(z), 1))], axis=1)
    w, *_ = np.linalg.lstsq(x, zp.astype(np.float64), rcond=None)
    return w[:-1].T, w[-1]


def invert_affine(a: np.ndarray, b: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """z from z' = A z + b for (N, d) rows (pseudo-inverse when A is singular)."""
    return (zp.astype(np.float64) - b[None]) @ np.linalg.pinv(a).T


def known_plaintext(z: np.ndarray, zp: np.ndarray, q_true: np.ndarray | None = None, b_true: np.ndarray | None = None) -> dict[str, Any]:
    """Recover one scale's key from pixel pairs; errors against the true key when given."""
    a, b = fit_affine(z, zp)
    out: dict[str, Any] = {"pairs": int(len(z)), "dim": int(z.shape[1]), "a": a, "b": b}
    if q_true is not None:
        out["key_error"] = float(np.linalg.norm(a - q_true.T) / np.linalg.norm(q_true))
        out["bias_error"] = float(np.linalg.norm(b - b_true) / max(np.linalg.norm(b_true), 1e-12))
    return out


def pixel_pairs(latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[(N, C_k, H_k, W_k)] → per scale (N·H_k·W_k, C_k) rows."""
    return [np.moveaxis(z, 1, -1).reshape(-1, z.shape[1]) for z in latents]


def _psnr(clean: np.ndarray, recon: np.ndarray) -> float:
    from medtools.collab.evaluate import psnr_ssim

    return psnr_ssim(clean, recon)[0]


def _rel(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b))
    den = sum(float(np.sum(y.astype(np.float64) ** 2)) for y in b)
    return float(np.sqrt(num / max(den, 1e-30)))


def attack_latents(
    latents: Sequence[str | Path],
    images: Path,
    model: Path,
    *,
    known: int = 1,
    known_pairs: Sequence[int] = (),
    key: Path | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, Any]:
    """The eavesdropper and known-plaintext attacks on one client's protected image latents.

    ``images`` holds the victim's clean images (matched to latent files by case); the first
    ``known`` cases (sorted) are the attacker's known plaintexts, the rest are scored.
    ``model`` is the attacker's ``ae-image`` (the victim's own: exact pairs; a surrogate
    trained elsewhere: noisy pairs). ``known_pairs``: numbers N of pixel pairs per scale to
    try (default: d/2, d, d+1, 2d, 4(d+1) of the widest scale and every available pair).
    ``key`` (the true key, for the evaluator only) adds the key-recovery error.
    """
    from medtools.collab import klt
    from medtools.collab.autoencoder import load_batch
    from medtools.collab.latents import ae_predictor, decode, encode, stack

    files, clean, cases = _matched_cases(latents, images)
    if len(cases) < known + 1:
        raise InputError(f"need at least {known + 1} image latents with matching clean images (found {len(cases)})")
    if len({lat.config.get("key_id") for lat in files.values()}) > 1:
        raise InputError("the latents come from several keys: attack one client at a time")
    known_cases, target_cases = cases[:known], cases[known:]
    predictor = ae_predictor(model, "ae-image", device, None, batch_size)
    true_key = klt.load_key(key) if key is not None else None
    rng = np.random.default_rng(seed)

    x_known = load_batch([clean[c] for c in known_cases], predictor.size, mask=False)
    x_target = load_batch([clean[c] for c in target_cases], predictor.size, mask=False)
    zp_known = stack([files[c] for c in known_cases])
    zp_target = stack([files[c] for c in target_cases])
    if [z.shape[1:] for z in zp_known] != [tuple(s) for s in _shapes(predictor)]:
        raise InputError(f"{model} makes latents {_shapes(predictor)}, the files hold {[z.shape[1:] for z in zp_known]}")
    z_known = encode(predictor, x_known)
    truth = x_target[:, 0]

    def score(z_hat: Sequence[np.ndarray]) -> float:
        return _psnr(truth, decode(predictor, z_hat)[:, 0])

    result: dict[str, Any] = {
        "cases": {"known": len(known_cases), "target": len(target_cases)},
        "latent_channels": [int(z.shape[1]) for z in zp_known],
        "no_key_psnr": score(zp_target),
        "wrong_key_psnr": score(klt.invert(other_key([int(z.shape[1]) for z in zp_known], files, seed), zp_target)),
        "mean_image_psnr": _psnr(truth, np.broadcast_to(x_known[:, 0].mean(0), truth.shape)),
    }
    if true_key is not None:
        result["with_key_psnr"] = score(klt.invert(true_key, zp_target))
    pairs_known, pairs_prot = pixel_pairs(z_known), pixel_pairs(zp_known)
    available = min(len(p) for p in pairs_known)
    default = [n for c in result["latent_channels"] for n in (c // 2, c + 1)] + [available]
    counts = sorted({int(n) for n in (known_pairs or default) if 1 <= int(n) <= available})
    # exact pairs only when the attacker's encoder is the one that made the latents
    exact = {lat.config.get("model_sha256") for lat in files.values()} == {report.sha256_file(model)}
    result["attacker_encoder"] = "victim's (exact pairs)" if exact else "surrogate (noisy pairs)"
    rows = []
    for n in counts:
        z_hat, key_err = [], []
        for k, (zk, zpk) in enumerate(zip(pairs_known, pairs_prot)):
            pick = rng.choice(len(zk), size=n, replace=False)
            linear = true_key is not None and true_key.transform == "linear" and true_key.perm is None
            fit = known_plaintext(zk[pick], zpk[pick], true_key.q[k] if linear else None, true_key.b[k] if linear else None)
            flat = np.moveaxis(zp_target[k], 1, -1).reshape(-1, zp_target[k].shape[1])
            rec = invert_affine(fit["a"], fit["b"], flat).reshape(*zp_target[k].shape[:1], *zp_target[k].shape[2:], -1)
            z_hat.append(np.moveaxis(rec, -1, 1))
            if "key_error" in fit:
                key_err.append(fit["key_error"])
        row = {"pairs": n, "psnr": score(z_hat)}
        if true_key is not None and exact:
            if key_err:
                row["key_error"] = float(max(key_err))
            row["latent_error"] = _rel(z_hat, klt.invert(true_key, zp_target))
        rows.append(row)
        report.log(f"known-plaintext N={n}: PSNR {row['psnr']:.2f} dB" + (f", key error {row['key_error']:.2e}" if "key_error" in row else ""))
    result["known_plaintext"] = rows
    # "falls": with the true key and exact pairs, the first N whose recovered latents are
    # within 0.1 % of the true plain latents; otherwise the first N within 0.5 dB of the best
    # reconstruction and at least 3 dB above decoding without a key.
    if true_key is not None and exact:
        falls = [r["pairs"] for r in rows if r["latent_error"] <= 1e-3]
    else:
        best = max((r["psnr"] for r in rows), default=float("-inf"))
        falls = [r["pairs"] for r in rows if r["psnr"] >= best - 0.5 and r["psnr"] >= result["no_key_psnr"] + 3.0]
    result["falls_at_pairs"] = falls[0] if falls else None
    result["pairs_per_known_image"] = [int(z.shape[2] * z.shape[3]) for z in zp_known]
    return result


def transform_of(files: dict[str, Any]) -> dict[str, Any]:
    """The public description of the victim's transform, as its latent files record it
    (scheme-aware attacker: it knows the method and its parameters, not the key)."""
    described = {json_key(lat.config.get("transform") or {"transform": "linear", "transform_params": {}}) for lat in files.values()}
    if len(described) > 1:
        raise InputError("the latents record several transforms: attack one client at a time")
    import json

    return json.loads(next(iter(described)))


def json_key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def other_key(channels: Sequence[int], files: dict[str, Any], seed: int) -> Any:
    """Another client's key of the victim's transform (what a wrong key or another client holds)."""
    from medtools.collab import klt

    described = transform_of(files)
    params = dict(described.get("transform_params") or {})
    blocks = int(params.pop("block_permute", 0) or 0)
    return klt.generate(list(channels), seed=seed + 7919, transform=described.get("transform", "linear"), block_permute=blocks, **params)


def recover_blocks(plain: Sequence[np.ndarray], protected: Sequence[np.ndarray], g: int) -> np.ndarray:
    """Estimate a G×G block permutation from known (plain, protected) latents of N images.

    A block's total spatial variance (trace of its channel covariance over its pixels) is
    unchanged by an orthogonal channel mix plus bias and nearly so by the bounded coupling
    layers, so each block has a profile over the N images and scales that survives the
    transform; blocks are matched by these profiles (Hungarian assignment, scipy, on the
    distance between log-profiles). Returns perm with protected block j = plain block perm[j]."""
    from scipy.optimize import linear_sum_assignment

    def profiles(latents: Sequence[np.ndarray]) -> np.ndarray:
        rows = []
        for z in latents:
            n, c, h, w = z.shape
            blocks = z.reshape(n, c, g, h // g, g, w // g).transpose(2, 4, 0, 1, 3, 5).reshape(g * g, n, c, -1)
            rows.append(np.log(blocks.var(axis=-1).sum(axis=-1) + 1e-8))  # (G², N)
        return np.concatenate(rows, axis=1)

    a, b = profiles(plain), profiles(protected)
    a = a - a.mean(0, keepdims=True)
    b = b - b.mean(0, keepdims=True)
    cost = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(g * g, dtype=np.int64)
    perm[rows] = cols
    return perm


def fit_inverse(protected: Sequence[np.ndarray], plain: Sequence[np.ndarray], *, steps: int = 200, hidden: int = 24, lr: float = 3e-3, seed: int = 0) -> Any:
    """A learned inverse from N known pairs (no closed form needed): per scale a small
    convolutional network (three 3×3 layers and an affine 1×1 path) trained by MSE to map
    protected latents back to plain ones, inputs and outputs standardised per channel.
    Returns ``invert(protected_latents) -> plain_latents`` (numpy, per scale)."""
    import torch
    import torch.nn as nn

    nets, stats = [], []
    gen = torch.Generator().manual_seed(seed)
    for zp, z in zip(protected, plain):
        c_in, c_out = zp.shape[1], z.shape[1]
        xm, xs = zp.mean((0, 2, 3), keepdims=True), zp.std((0, 2, 3), keepdims=True) + 1e-6
        ym, ys = z.mean((0, 2, 3), keepdims=True), z.std((0, 2, 3), keepdims=True) + 1e-6
        x = torch.as_tensor((zp - xm) / xs, dtype=torch.float32)
        y = torch.as_tensor((z - ym) / ys, dtype=torch.float32)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))

            class Inverse(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.deep = nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, c_out, 1))
                    self.affine = nn.Conv2d(c_in, c_out, 1)

                def forward(self, v: Any) -> Any:
                    return self.affine(v) + self.deep(v)

            net = Inverse()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
        nets.append(net.eval())
        stats.append((xm, xs, ym, ys))

    def invert(latents: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        with torch.no_grad():
            for net, (xm, xs, ym, ys), zp in zip(nets, stats, latents):
                v = torch.as_tensor((zp - xm) / xs, dtype=torch.float32)
                out.append(net(v).numpy().astype(np.float64) * ys + ym)
        return out

    return invert


def known_images_curve(
    latents: Sequence[str | Path],
    images: Sequence[Path],
    model: Path,
    *,
    counts: Sequence[int] = (1, 2, 4, 8, 16, 32),
    key: Path | None = None,
    steps: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, Any]:
    """Known plaintext with N known images (N in ``counts``): the first max(N) cases (sorted)
    are the attacker's pool of known images, the remaining cases are scored, so every N is
    scored on the same targets. For each N: the closed-form affine fit on all pixel pairs
    of the N images (exact for the linear KLT) and a learned inverse trained on the N pairs
    (:func:`fit_inverse`); when the latents record a block permutation, the attacker first
    estimates it from the N pairs (:func:`recover_blocks`) and un-permutes. The
    no-information reference is the mean of the known pool's images."""
    from medtools.collab import klt, knt
    from medtools.collab.autoencoder import case_name, load_batch
    from medtools.collab.latents import LATENT_EXTS, ae_predictor, decode, encode, read_latent, stack
    from medtools.core.inputs import expand_inputs

    files = {}
    for item in expand_inputs(latents, exts=LATENT_EXTS):
        lat = read_latent(item.path)
        if lat.config.get("source") == "ae-image":
            files[lat.case] = lat
    clean = {case_name(i.path): i.path for i in expand_inputs(list(images))}
    cases = sorted(set(files) & set(clean))
    counts = sorted({int(n) for n in counts if int(n) >= 1})
    usable = [n for n in counts if n < len(cases)]
    if not usable:
        raise InputError(f"need more than {counts[0]} image latents with matching clean images (found {len(cases)})")
    if len(usable) < len(counts):
        report.warn(f"only {len(cases)} cases: known-image counts {sorted(set(counts) - set(usable))} left out")
    pool, targets = cases[: max(usable)], cases[max(usable) :]
    described = transform_of(files)
    g = int((described.get("transform_params") or {}).get("block_permute", 0) or 0)
    predictor = ae_predictor(model, "ae-image", device, None, batch_size)
    true_key = klt.load_key(key) if key is not None else None
    x_pool = load_batch([clean[c] for c in pool], predictor.size, mask=False)
    truth = load_batch([clean[c] for c in targets], predictor.size, mask=False)[:, 0]
    z_pool = encode(predictor, x_pool)
    zp_pool = stack([files[c] for c in pool])
    zp_target = stack([files[c] for c in targets])
    z_true = klt.invert(true_key, zp_target) if true_key is not None else None

    def score(z_hat: Sequence[np.ndarray]) -> float:
        return _psnr(truth, decode(predictor, z_hat)[:, 0])

    def unpermute(latents: Sequence[np.ndarray], perm: np.ndarray) -> list[np.ndarray]:
        import torch

        return [knt.permute_blocks(torch.from_numpy(np.asarray(z, dtype=np.float64)), perm, inverse=True).numpy() for z in latents]

    result: dict[str, Any] = {
        "targets": len(targets),
        "pool": len(pool),
        "transform": described,
        "reference_psnr": _psnr(truth, np.broadcast_to(x_pool[:, 0].mean(0), truth.shape)),
        "no_key_psnr": score(zp_target),
    }
    if true_key is not None:
        result["with_key_psnr"] = score(z_true)
    rows = []
    for n in usable:
        z_n, zp_n, zp_t = [z[:n] for z in z_pool], [z[:n] for z in zp_pool], zp_target
        row: dict[str, Any] = {"images": n}
        if g:
            perm = recover_blocks(z_n, zp_n, g)
            zp_n, zp_t = unpermute(zp_n, perm), unpermute(zp_target, perm)
            if true_key is not None and true_key.perm is not None:
                row["blocks_recovered"] = float(np.mean(perm == true_key.perm))
        closed = []
        for zk, zpk, tk in zip(pixel_pairs(z_n), pixel_pairs(zp_n), zp_t):
            a, b = fit_affine(zk, zpk)
            flat = np.moveaxis(tk, 1, -1).reshape(-1, tk.shape[1])
            closed.append(np.moveaxis(invert_affine(a, b, flat).reshape(tk.shape[0], tk.shape[2], tk.shape[3], -1), -1, 1))
        learned = fit_inverse(zp_n, z_n, steps=steps, seed=seed + n)(zp_t)
        row["closed_form_psnr"] = score(closed)
        row["learned_psnr"] = score(learned)
        if z_true is not None:
            row["closed_form_latent_error"] = _rel(closed, z_true)
            row["learned_latent_error"] = _rel(learned, z_true)
        row["psnr"] = max(row["closed_form_psnr"], row["learned_psnr"])
        rows.append(row)
        report.log(f"known plaintext, {n} images: closed form {row['closed_form_psnr']:.2f} dB, learned inverse {row['learned_psnr']:.2f} dB" + (f", blocks recovered {row['blocks_recovered']:.2f}" if "blocks_recovered" in row else ""))
    result["curve"] = rows
    return result


def learned_inversion(
    latents: Sequence[str | Path],
    images: Path,
    model: Path,
    public: Path,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """A scheme-aware attacker without the key: it holds the encoder (``model``) and public
    images, draws a fresh random key for every batch (it knows the method, not the key),
    trains a decoder from protected latents back to images on the shared loop, and decodes
    the victim's protected latents with it. Scored by PSNR/SSIM against the victim's images;
    the same decoder on plain latents (``plain_psnr``) shows it learned to decode at all."""
    import tempfile

    import torch
    import torch.nn.functional as F

    from medtools.collab.autoencoder import load_batch
    from medtools.collab.evaluate import psnr_ssim
    from medtools.collab.latents import decode, encode, stack
    from medtools.core import ckpt as ckpt_lib
    from medtools.core.inputs import expand_inputs
    from medtools.core.predict import Predictor
    from medtools.core.train import TrainSpec, fit

    from medtools.collab import klt

    files, clean, cases = _matched_cases(latents, images)
    if not cases:
        raise InputError("no protected image latents match the clean images by case")
    described = transform_of(files)
    params = dict(described.get("transform_params") or {})
    blocks = int(params.pop("block_permute", 0) or 0)
    transform = described.get("transform", "linear")

    victim = ckpt_lib.load(model, kind="ae-image")
    net = ckpt_lib.build_model(victim, load_weights=False)  # a fresh decoder: the attacker trains its own
    net.load_state_dict({k: v for k, v in victim.tensors.items() if k.startswith(("down.", "to_latent."))}, strict=False)
    for module in (net.down, net.to_latent):
        for p in module.parameters():
            p.requires_grad_(False)
    size = int(victim.config["image_size"])
    channels = [int(c) for c in victim.config["latent_channels"]]
    x_public = torch.from_numpy(load_batch(sorted(i.path for i in expand_inputs([public])), size, mask=False))

    def step(m: Any, batch: Any) -> Any:
        (x,) = batch
        core = m.module if hasattr(m, "module") else m
        # a fresh random key of the victim's transform for every batch, from the seeded step stream
        key = klt.generate(channels, seed=int(torch.randint(0, 2**62, (1,))), transform=transform, block_permute=blocks, **params)
        with torch.no_grad():
            z = core.encode(x)
            zp = [t.to(x.dtype) for t in klt.apply_torch(klt.torch_key(key, x.device), [zk.double() for zk in z])]
        out = core.decode(zp).sigmoid()
        return F.l1_loss(out, x) + F.mse_loss(out, x)

    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "inversion.safetensors"
        spec = TrainSpec(output=out_path, kind="ae-image", config=victim.config, norm=victim.norm, epochs=epochs, batch_size=min(batch_size, len(x_public)), lr=lr, seed=seed, device=device, precise_bn_batches=0)
        fit(net, torch.utils.data.TensorDataset(x_public), step, spec, optimizer_factory=lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr))
        attacker = Predictor(out_path, kind="ae-image", device=device)
        truth = load_batch([clean[c] for c in cases], size, mask=False)
        recon = decode(attacker, stack([files[c] for c in cases]))
        plain = decode(attacker, encode(attacker, truth))
    psnr, ssim = psnr_ssim(truth[:, 0], recon[:, 0])
    plain_psnr, _ = psnr_ssim(truth[:, 0], plain[:, 0])
    reference, _ = psnr_ssim(truth[:, 0], np.broadcast_to(x_public[:, 0].numpy().mean(0), truth[:, 0].shape))
    return {"cases": len(cases), "public_images": int(len(x_public)), "epochs": epochs, "transform": described, "psnr": psnr, "ssim": ssim, "plain_psnr": plain_psnr, "reference_psnr": reference}


def _shapes(predictor: Any) -> list[tuple[int, int, int]]:
    from medtools.collab.autoencoder import latent_shapes

    return [tuple(s) for s in latent_shapes(predictor.config["latent_channels"], predictor.size)]


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + ½ P(tie): Mann–Whitney U / (n·m) (scipy)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(members, nonmembers).statistic) / (len(members) * len(nonmembers))


def membership(members: Sequence[str | Path], nonmembers: Sequence[str | Path], umn: Path, *, keys: Path | None, batch_size: int = 16, device: str | None = None) -> dict[str, Any]:
    """MIA on the UMN: score = −(per-case mapping MSE); members = training pairs."""
    from medtools.collab.autoencoder import latent_shapes
    from medtools.collab.umn import collect_pairs, plain_pairs
    from medtools.core.predict import Predictor

    predictor = Predictor(umn, kind="umn", device=device, batch_size=batch_size)
    if predictor.config.get("space", "plain") == "plain" and keys is None:
        raise UsageError("a plain-space UMN needs --keys (the server's view: it holds the keys)")

    def scores(paths: Sequence[str | Path]) -> np.ndarray:
        images, masks, key_map = collect_pairs(paths, keys if predictor.config.get("space", "plain") == "plain" else None)
        x, y = plain_pairs(images, masks, key_map)
        pred = predictor.predict(x, model_space=True)
        shapes = latent_shapes(predictor.config["out_channels"], predictor.config["image_size"])
        bounds = np.cumsum([0] + [c * h * w for c, h, w in shapes])
        err = np.mean([np.mean((pred[:, bounds[i] : bounds[i + 1]] - y[:, bounds[i] : bounds[i + 1]]) ** 2, axis=1) / (np.mean(y[:, bounds[i] : bounds[i + 1]] ** 2) + 1e-12) for i in range(len(shapes))], axis=0)
        return -err

    s_in, s_out = scores(members), scores(nonmembers)
    value = auc(s_in, s_out)
    return {"auc": value, "members": int(len(s_in)), "nonmembers": int(len(s_out)), "score": "-(UMN latent MSE, per scale normalised)", "orientation": "0.5 = chance; > 0.5: members found; < 0.5: inverted score (1 - AUC if flipped)", "flipped_auc": 1.0 - value}


def render(result: dict[str, Any]) -> list[str]:
    """collab-attack's summary for people."""
    lines = []
    la = result.get("latent_attacks")
    if la:
        lines.append(f"no key {la['no_key_psnr']:.2f} dB  wrong key {la['wrong_key_psnr']:.2f} dB  mean image {la['mean_image_psnr']:.2f} dB" + (f"  with key {la['with_key_psnr']:.2f} dB" if "with_key_psnr" in la else ""))
        for row in la["known_plaintext"]:
            lines.append(f"known-plaintext pairs {row['pairs']:>6}: psnr {row['psnr']:.2f} dB" + (f"  key error {row['key_error']:.2e}" if "key_error" in row else ""))
        lines.append(f"protection falls at {la['falls_at_pairs']} pairs per scale ({la['pairs_per_known_image']} pairs per known image)")
    if "known_images" in result:
        ki = result["known_images"]
        lines.append(f"known images ({ki['transform'].get('transform')}, {ki['targets']} targets): reference {ki['reference_psnr']:.2f} dB, no key {ki['no_key_psnr']:.2f} dB" + (f", with key {ki['with_key_psnr']:.2f} dB" if "with_key_psnr" in ki else ""))
        for row in ki["curve"]:
            lines.append(f"  N={row['images']:>3}: closed form {row['closed_form_psnr']:.2f} dB  learned inverse {row['learned_psnr']:.2f} dB" + (f"  blocks recovered {row['blocks_recovered']:.2f}" if "blocks_recovered" in row else ""))
    if "learned_inversion" in result:
        li = result["learned_inversion"]
        lines.append(f"learned inversion (random keys): psnr {li['psnr']:.2f} dB  ssim {li['ssim']:.4f}  reference {li['reference_psnr']:.2f} dB  (its decoder on plain latents: {li['plain_psnr']:.2f} dB)")
    if "membership" in result:
        lines.append(f"MIA AUC {result['membership']['auc']:.4f} (0.5 = chance)")
    return lines


def attack_job(latents: Any, *, images: Any, model: Any, known: int, known_pairs: Any, true_key: Any, public: Any, inversion_epochs: int, umn: Any, members: Any, nonmembers: Any, keys: Any, seed: int, batch_size: int, device: Any, known_images: Sequence[int] = (), inverse_steps: int = 200) -> int:
    """``collab-attack``: the latent attacks (known plaintext, no/wrong key, learned inversion) and/or the UMN membership attack."""
    from medtools.core import report
    from medtools.core.errors import UsageError

    record = report.RunRecord(seed=seed)
    result: dict[str, Any] = {}
    if latents:
        if images is None or model is None:
            raise UsageError("the latent attacks need --images (the victim's clean images) and -m (the attacker's ae-image)")
        record.add_checkpoint(model)
        result["latent_attacks"] = attack_latents(latents, images, model, known=known, known_pairs=known_pairs, key=true_key, seed=seed, batch_size=batch_size, device=device)
        if known_images:
            result["known_images"] = known_images_curve(latents, images, model, counts=known_images, key=true_key, steps=inverse_steps, seed=seed, batch_size=batch_size, device=device)
        if public is not None:
            result["learned_inversion"] = learned_inversion(latents, images, model, public, epochs=inversion_epochs, seed=seed, device=device)
    if umn is not None:
        if not members or not nonmembers:
            raise UsageError("--umn needs --members and --nonmembers latent folders")
        record.add_checkpoint(umn)
        result["membership"] = membership(members, nonmembers, umn, keys=keys, batch_size=batch_size, device=device)
    if not result:
        raise UsageError("nothing to attack: give protected LATENTS (with --images, -m) and/or --umn with --members/--nonmembers")
    report.emit_result(result, render, record=record)
    return 0


def _matched_cases(latents: Any, images: Any) -> tuple[dict, dict, list]:
    """Protected image latents and clean images paired by case: (latents by case, clean paths by case, shared cases)."""
    from medtools.collab.autoencoder import case_name
    from medtools.collab.latents import LATENT_EXTS, read_latent
    from medtools.core.inputs import expand_inputs

    files = {}
    for item in expand_inputs(latents, exts=LATENT_EXTS):
        lat = read_latent(item.path)
        if lat.config.get("source") == "ae-image":
            files[lat.case] = lat
    clean = {case_name(i.path): i.path for i in expand_inputs(list(images) if isinstance(images, (list, tuple)) else [images])}
    return files, clean, sorted(set(files) & set(clean))
