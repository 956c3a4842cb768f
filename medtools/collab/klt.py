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

Transforms (``transform`` in the key file, checked on load): ``linear`` is the KLT above;
``nonlinear`` follows it with keyed invertible coupling layers (``knt.py``), which have no
closed-form inverse. Either may add a keyed permutation of G×G blocks of the latent grid
(``block_permute`` G, ``knt.permute_blocks``). Every part is exactly invertible by the key
holder (float64, round trip within 1e-9).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import CheckpointError, UsageError


TRANSFORMS = ("linear", "nonlinear")
NONLINEAR_DEFAULTS = {"layers": 2, "hidden": 16, "kernel": 3, "gain": 1.0}


@dataclass
class Key:
    q: list[np.ndarray]  # per scale, (C, C) orthogonal, float64
    b: list[np.ndarray]  # per scale, (C,), float64
    key_id: str
    seeded: bool = False
    bias_scale: float = 1.0
    transform: str = "linear"  # one of TRANSFORMS
    params: dict[str, Any] = field(default_factory=dict)  # the transform's parameters (public)
    coupling: list[list[dict[str, np.ndarray]]] = field(default_factory=list)  # nonlinear: per scale, per layer
    perm: np.ndarray | None = None  # block permutation of G² blocks (int64), or None

    @property
    def latent_channels(self) -> list[int]:
        return [int(q.shape[0]) for q in self.q]

    @property
    def blocks(self) -> int:
        return int(self.params.get("block_permute", 0) or 0)

    def describe(self) -> dict[str, Any]:
        """The key's public description (what the key file's metadata and --json show)."""
        return {"transform": self.transform, "transform_params": dict(self.params)}


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


def fingerprint(q: Sequence[np.ndarray], b: Sequence[np.ndarray], extra: dict[str, np.ndarray] | None = None, describe: dict[str, Any] | None = None) -> str:
    """A key's public id: SHA-256 of its float64 tensors, 16 hex digits (routes latents to keys).
    A linear key without block permutation hashes Q and b only (ids of older keys stay valid);
    any other key also hashes its transform description and its other tensors by name."""
    import json

    digest = hashlib.sha256()
    for qk, bk in zip(q, b):
        digest.update(np.ascontiguousarray(qk, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(bk, dtype="<f8").tobytes())
    if extra or (describe and describe.get("transform", "linear") != "linear"):
        digest.update(json.dumps(describe or {}, sort_keys=True).encode())
        for name in sorted(extra or {}):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(extra[name], dtype="<f8").tobytes())
    return digest.hexdigest()[:16]


def _extra_tensors(key: Key) -> dict[str, np.ndarray]:
    """The tensors of a key beyond Q and b, by their names in the key file."""
    out: dict[str, np.ndarray] = {}
    for k, layers in enumerate(key.coupling):
        for index, layer in enumerate(layers):
            for name, value in layer.items():
                out[f"c.{k}.{index}.{name}"] = value
    if key.perm is not None:
        out["perm"] = np.asarray(key.perm, dtype=np.float64)
    return out


def _with_id(key: Key) -> Key:
    key.key_id = fingerprint(key.q, key.b, _extra_tensors(key), key.describe())
    return key


def check_params(transform: str, params: dict[str, Any], where: str = "key") -> dict[str, Any]:
    """Validate a transform name and its parameters (CheckpointError: an unknown or corrupt key)."""
    if transform not in TRANSFORMS:
        raise CheckpointError(f"{where}: unknown transform {transform!r} (known: {', '.join(TRANSFORMS)})")
    clean: dict[str, Any] = {}
    try:
        blocks = int(params.get("block_permute", 0) or 0)
        if blocks < 0:
            raise ValueError
        clean["block_permute"] = blocks
        if transform == "nonlinear":
            for name, default in NONLINEAR_DEFAULTS.items():
                value = params.get(name, default)
                clean[name] = float(value) if name == "gain" else int(value)
            if clean["layers"] < 1 or clean["hidden"] < 1 or clean["kernel"] < 1 or clean["kernel"] % 2 == 0 or not clean["gain"] >= 0:
                raise ValueError
        unknown = set(params) - set(clean)
        if unknown:
            raise ValueError
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: invalid parameters for transform {transform!r}: {params} (nonlinear: layers ≥ 1, hidden ≥ 1, odd kernel, gain ≥ 0; block_permute ≥ 0)") from None
    return clean


def generate(
    latent_channels: Sequence[int],
    *,
    seed: int | None = None,
    bias_scale: float = 1.0,
    transform: str = "linear",
    block_permute: int = 0,
    **params: Any,
) -> Key:
    """A new client key for latents with these per-scale channel counts.

    ``transform``: ``linear`` (the KLT) or ``nonlinear`` (the KLT followed by keyed coupling
    layers, ``knt.py``; ``params``: layers, hidden, kernel, gain). ``block_permute`` G > 0 adds
    a keyed permutation of G×G blocks of every scale's grid."""
    from medtools.collab import knt

    if not latent_channels or any(int(c) < 1 for c in latent_channels):
        raise UsageError(f"latent channels must be positive, got {list(latent_channels)}")
    if transform not in TRANSFORMS:
        raise UsageError(f"unknown transform {transform!r} (known: {', '.join(TRANSFORMS)})")
    if transform == "linear" and params:
        raise UsageError(f"the linear transform takes no {', '.join(sorted(params))}")
    try:
        clean = check_params(transform, {**params, "block_permute": block_permute})
    except CheckpointError as exc:
        raise UsageError(str(exc).replace("key: ", "")) from None
    if seed is None:
        normal = _csprng_normal

        def permutation(n: int) -> np.ndarray:
            order = list(range(n))
            secrets.SystemRandom().shuffle(order)
            return np.asarray(order, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        normal = rng.standard_normal

        def permutation(n: int) -> np.ndarray:
            return rng.permutation(n).astype(np.int64)

    q = [random_orthogonal(int(c), normal) for c in latent_channels]
    b = [bias_scale * normal((int(c),)) for c in latent_channels]
    coupling = []
    if transform == "nonlinear":
        coupling = [
            knt.generate_layers(int(c), layers=clean["layers"], hidden=clean["hidden"], kernel=clean["kernel"], gain=clean["gain"], normal=normal, orthogonal=lambda n: random_orthogonal(n, normal))
            for c in latent_channels
        ]
    perm = permutation(clean["block_permute"] ** 2) if clean["block_permute"] > 0 else None
    key = Key(q=q, b=b, key_id="", seeded=seed is not None, bias_scale=float(bias_scale), transform=transform, params=clean, coupling=coupling, perm=perm)
    return _with_id(key)


def save_key(key: Key, path: Path | str) -> Path:
    """Write a ``klt-key`` file with mode 0600 from the start (umask 077 around the atomic write)."""
    import torch

    from medtools.core import ckpt

    tensors = {}
    for k, (qk, bk) in enumerate(zip(key.q, key.b)):
        tensors[f"q.{k}"] = torch.from_numpy(np.ascontiguousarray(qk))
        tensors[f"b.{k}"] = torch.from_numpy(np.ascontiguousarray(bk))
    for name, value in _extra_tensors(key).items():
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
    config = {"latent_channels": key.latent_channels, "key_id": key.key_id, "seeded": key.seeded, "bias_scale": key.bias_scale, **key.describe()}
    old = os.umask(0o077)
    try:
        ckpt.save(path, tensors, kind="klt-key", config=config)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return Path(path)


def load_key(path: Path | str) -> Key:
    """Read and check a key file: its transform must be known, its parameters valid, its
    tensors complete and matching its key id (CheckpointError otherwise: exit 3)."""
    from medtools.core import ckpt
    from medtools.core.secrets import check_private_permissions

    check_private_permissions(path, "a KLT key")
    saved = ckpt.load(path, kind="klt-key")
    transform = saved.config.get("transform", "linear")
    params = check_params(str(transform), dict(saved.config.get("transform_params") or {}), where=str(path))
    try:
        n = len(saved.config["latent_channels"])
        q = [saved.tensors[f"q.{k}"].double().numpy() for k in range(n)]
        b = [saved.tensors[f"b.{k}"].double().numpy() for k in range(n)]
        coupling = []
        if transform == "nonlinear":
            coupling = [[{name: saved.tensors[f"c.{k}.{index}.{name}"].double().numpy() for name in ("w1", "c1", "w2", "c2", "q")} for index in range(params["layers"])] for k in range(n)]
        perm = saved.tensors["perm"].double().numpy().round().astype(np.int64) if params["block_permute"] else None
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete klt-key ({exc} missing)") from None
    if perm is not None and (len(perm) != params["block_permute"] ** 2 or sorted(perm.tolist()) != list(range(len(perm)))):
        raise CheckpointError(f"{path}: the block permutation is not a permutation of {params['block_permute']}² blocks (corrupt key file)")
    key = Key(q=q, b=b, key_id="", seeded=bool(saved.config.get("seeded")), bias_scale=float(saved.config.get("bias_scale", 1.0)), transform=str(transform), params=params, coupling=coupling, perm=perm)
    _with_id(key)
    if key.key_id != saved.config.get("key_id"):
        raise CheckpointError(f"{path}: key tensors do not match the key id in its metadata (corrupt key file)")
    return key


def check_fits(key: Key, latents: Sequence[Any], where: str = "latents") -> None:
    channels = [int(z.shape[1]) for z in latents]
    if channels != key.latent_channels:
        raise CheckpointError(f"{where}: latent channels {channels} do not fit key {key.key_id} (made for {key.latent_channels}); run klt-keygen -m <your ae>.safetensors")


def torch_key(key: Key, device: Any = None) -> dict[str, Any]:
    """The key's tensors as float64 torch tensors on ``device`` (for apply_torch/invert_torch)."""
    import torch

    def t(a: np.ndarray) -> Any:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

    return {
        "q": [t(q) for q in key.q],
        "b": [t(b) for b in key.b],
        "coupling": [[{name: t(v) for name, v in layer.items()} for layer in layers] for layers in key.coupling],
        "perm": None if key.perm is None else np.asarray(key.perm),
    }


def apply_torch(tk: dict[str, Any], latents: Sequence[Any]) -> list[Any]:
    """Forward transform of float64 torch latents [(N, C_k, H_k, W_k)] with :func:`torch_key` tensors."""
    import torch

    from medtools.collab import knt

    out = []
    for k, z in enumerate(latents):
        y = torch.einsum("dc,nchw->ndhw", tk["q"][k].T, z) + tk["b"][k][None, :, None, None]
        if tk["coupling"]:
            y = knt.couple(y, tk["coupling"][k])
        if tk["perm"] is not None:
            y = knt.permute_blocks(y, tk["perm"])
        out.append(y)
    return out


def invert_torch(tk: dict[str, Any], latents: Sequence[Any]) -> list[Any]:
    """Inverse of :func:`apply_torch`."""
    import torch

    from medtools.collab import knt

    out = []
    for k, y in enumerate(latents):
        if tk["perm"] is not None:
            y = knt.permute_blocks(y, tk["perm"], inverse=True)
        if tk["coupling"]:
            y = knt.couple(y, tk["coupling"][k], inverse=True)
        out.append(torch.einsum("cd,ndhw->nchw", tk["q"][k], y - tk["b"][k][None, :, None, None]))
    return out


def apply(key: Key, latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """[(N, C_k, H_k, W_k)] → protected (float64): z' = Qᵀz + b per pixel, then the key's
    coupling layers (nonlinear) and block permutation, if any."""
    check_fits(key, latents)
    if key.transform == "linear" and key.perm is None:
        return [np.einsum("dc,nchw->ndhw", q.T, z.astype(np.float64)) + b[None, :, None, None] for q, b, z in zip(key.q, key.b, latents)]
    import torch

    with torch.no_grad():
        return [y.numpy() for y in apply_torch(torch_key(key), [torch.from_numpy(np.asarray(z, dtype=np.float64)) for z in latents])]


def invert(key: Key, latents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Protected [(N, C_k, H_k, W_k)] → plain (float64): the inverse of :func:`apply`."""
    check_fits(key, latents)
    if key.transform == "linear" and key.perm is None:
        return [np.einsum("cd,ndhw->nchw", q, z.astype(np.float64) - b[None, :, None, None]) for q, b, z in zip(key.q, key.b, latents)]
    import torch

    with torch.no_grad():
        return [z.numpy() for z in invert_torch(torch_key(key), [torch.from_numpy(np.asarray(y, dtype=np.float64)) for y in latents])]


def keygen_job(output: Path, *, model: Path | None, latent_channels: Sequence[int], bias_scale: float, seed: int | None, overwrite: bool, transform: str = "linear", block_permute: int = 0, **params: Any) -> int:
    """``klt-keygen``: a key fitted to ``model``'s latent channels (else ``latent_channels``) → ``output``."""
    from medtools.core import ckpt, report
    from medtools.core.errors import UsageError

    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; a key is not replaced unless --overwrite (latents protected with it would become undecodable)")
    params = {k: v for k, v in params.items() if v is not None}
    if model is not None:
        saved = ckpt.load(model, kind=("ae-image", "ae-mask"), tensors=False)
        channels = list(saved.config["latent_channels"])
        if block_permute:
            from medtools.collab.autoencoder import latent_shapes

            sizes = [h for _, h, _ in latent_shapes(channels, int(saved.config["image_size"]))]
            if any(h % block_permute for h in sizes):
                raise UsageError(f"--block-permute {block_permute} must divide every latent scale's size {sizes} of {model}")
    else:
        channels = list(latent_channels)
    if seed is not None:
        report.warn("--seed makes a reproducible key: anyone with the seed has the key (tests and examples only)")
    key = save_key(generate(channels, seed=seed, bias_scale=bias_scale, transform=transform, block_permute=block_permute, **params), output)
    info = load_key(key)
    result = {"output": str(output), "key_id": info.key_id, "latent_channels": info.latent_channels, "seeded": info.seeded, **info.describe()}
    report.emit_result(result, lambda r: r["output"], record=report.RunRecord(seed=None))
    return 0
