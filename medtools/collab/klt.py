"""Keyed Latent Transform (Improved Privacy-SF): z' = Qᵀz + b, inverse z = Q(z' − b).

A client key holds, for every latent scale k with C_k channels, an orthogonal C_k×C_k
matrix Q_k and a bias b_k ∈ R^{C_k}. The transform acts on each pixel's channel vector
(z'[:, h, w] = Q_kᵀ z[:, h, w] + b_k), so it keeps the latent grid and the payload size.

Q_k is the QR factor of a standard Gaussian matrix with the signs of R's diagonal moved
into Q (Mezzadri 2007), which makes Q Haar-distributed. Without ``seed`` the Gaussians
come from the operating system's CSPRNG (``secrets``/``os.urandom`` through the Box–Muller
transform); ``seed`` makes a reproducible key for tests and examples only. Keys are kept
in float64; transformed latents are computed in float64 and stored in float32 (or fp16).

Threat model in one line: the transform is affine and public in form, so anyone with
C_k + 1 (latent, protected latent) pairs in general position per scale recovers the key
exactly (``attacks.known_plaintext``); one known image gives H_k·W_k pairs per scale.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import CheckpointError, UsageError


@dataclass
class Key:
    q: list[np.ndarray]  # per scale, (C, C) orthogonal, float64
    b: list[np.ndarray]  # per scale, (C,), float64
    key_id: str
    seeded: bool = False
    bias_scale: float = 1.0

    @property
    def latent_channels(self) -> list[int]:
        return [int(q.shape[0]) for q in self.q]


def _csprng_normal(shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal numbers from os.urandom (Box–Muller on 53-bit uniforms in (0, 1))."""
    n = int(np.prod(shape))
    m = (n + 1) // 2
    raw = np.frombuffer(secrets.token_bytes(16 * m), dtype="<u8").reshape(2, m)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    r = np.sqrt(-2.0 * np.log(u[0]))
    z = np.concatenate([r * np.cos(2 * np.pi * u[1]), r * np.sin(2 * np.pi * u[1])])
    return z[:n].reshape(shape)


def random_orthogonal(c: int, normal) -> np.ndarray:
    """Haar-random orthogonal c×c: QR of a Gaussian, sign-fixed by diag(R)."""
    q, r = np.linalg.qr(normal((c, c)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def fingerprint(q: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> str:
    """A key's public id: SHA-256 of its float64 tensors, 16 hex digits (routes latents to keys)."""
    digest = hashlib.sha256()
    for qk, bk in zip(q, b):
        digest.update(np.ascontiguousarray(qk, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(bk, dtype="<f8").tobytes())
    return digest.hexdigest()[:16]


def generate(latent_channels: Sequence[int], *, seed: int | None = None, bias_scale: float = 1.0) -> Key:
    """A new client key for latents with these per-scale channel counts."""
    if not latent_channels or any(int(c) < 1 for c in latent_channels):
        raise UsageError(f"latent channels must be positive, got {list(latent_channels)}")
    if seed is None:
        normal = _csprng_normal
    else:
        rng = np.random.default_rng(seed)
        normal = rng.standard_normal
    q = [random_orthogonal(int(c), normal) for c in latent_channels]
    b = [bias_scale * normal((int(c),)) for c in latent_channels]
    return Key(q=q, b=b, key_id=fingerprint(q, b), seeded=seed is not None, bias_scale=float(bias_scale))


def save_key(key: Key, path: Path | str) -> Path:
    """Write a ``klt-key`` file with mode 0600 from the start (umask 077 around the atomic write)."""
    import torch

    from medtools.core import ckpt

    tensors = {}
    for k, (qk, bk) in enumerate(zip(key.q, key.b)):
        tensors[f"q.{k}"] = torch.from_numpy(np.ascontiguousarray(qk))
        tensors[f"b.{k}"] = torch.from_numpy(np.ascontiguousarray(bk))
    config = {"latent_channels": key.latent_channels, "key_id": key.key_id, "seeded": key.seeded, "bias_scale": key.bias_scale}
    old = os.umask(0o077)
    try:
        ckpt.save(path, tensors, kind="klt-key", config=config)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return Path(path)


def load_key(path: Path | str) -> Key:
    from medtools.core import ckpt
    from medtools.core.secrets import check_private_permissions

    check_private_permissions(path, "a KLT key")
    saved = ckpt.load(path, kind="klt-key")
    try:
        n = len(saved.config["latent_channels"])
        q = [saved.tensors[f"q.{k}"].double().numpy() for k in range(n)]
        b = [saved.tensors[f"b.{k}"].double().numpy() for k in range(n)]
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete klt-key ({exc} missing)") from None
    if fingerprint(q, b) != saved.config.get("key_id"):
        raise CheckpointError(f"{path}: key tensors do not match the key id in its metadata (corrupt key file)")
    return Key(q=q, b=b, key_id=saved.config["key_id"], seeded=bool(saved.config.get("seeded")), bias_scale=float(saved.config.get("bias_scale", 1.0)))


def check_fits(key: Key, latents: Sequence[Any], where: str = "latents") -> None:
    channels = [int(z.shape[1]) for z in latents]
    if channels != key.latent_channels:
        raise CheckpointError(f"{where}: latent channels {channels} do not fit key {key.key_id} (made for {key.latent_channels}); run klt-keygen -m <your ae>.safetensors")


def apply(key: Key, latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[(N, C_k, H_k, W_k)] → protected, per pixel z' = Qᵀz + b (float64)."""
    check_fits(key, latents)
    return [np.einsum("dc,nchw->ndhw", q.T, z.astype(np.float64)) + b[None, :, None, None] for q, b, z in zip(key.q, key.b, latents)]


def invert(key: Key, latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Protected [(N, C_k, H_k, W_k)] → plain, z = Q(z' − b) (float64)."""
    check_fits(key, latents)
    return [np.einsum("cd,ndhw->nchw", q, z.astype(np.float64) - b[None, :, None, None]) for q, b, z in zip(key.q, key.b, latents)]


def keygen_job(output: Path, *, model: Path | None, latent_channels: Sequence[int], bias_scale: float, seed: int | None, overwrite: bool) -> int:
    """``klt-keygen``: a key fitted to ``model``'s latent channels (else ``latent_channels``) → ``output``."""
    from medtools.core import ckpt, report
    from medtools.core.errors import UsageError

    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; a key is not replaced unless --overwrite (latents protected with it would become undecodable)")
    channels = list(ckpt.load(model, kind=("ae-image", "ae-mask"), tensors=False).config["latent_channels"]) if model is not None else list(latent_channels)
    if seed is not None:
        report.warn("--seed makes a reproducible key: anyone with the seed has the key (tests and examples only)")
    key = save_key(generate(channels, seed=seed, bias_scale=bias_scale), output)
    info = load_key(key)
    result = {"output": str(output), "key_id": info.key_id, "latent_channels": info.latent_channels, "seeded": info.seeded}
    report.emit_result(result, lambda r: r["output"], record=report.RunRecord(seed=None))
    return 0
