"""Unified Mapping Network (server side): multi-scale image latents → mask latents.

The hierarchy is inverted with respect to an image U-Net: the input is already a pyramid
(the client's latents at S/2 … S/2^K), so an encoder path walks it from the finest scale
down, fusing each scale's latent with the pooled features of the scale above; a pyramid
pooling module (PSPNet, Zhao et al. 2017; bins 1, 3, 5, 7) gathers global context at the
deepest scale; a decoder path walks back up with skip connections from the encoder path
and emits each scale's mask latent through a 1×1 head.

``space``: ``plain`` (the seed's protocol: the server inverts each client's KLT with that
client's key, maps, re-applies) or ``protected`` (no key at the server: the UMN is trained
and run on one client's protected latents directly; see docs/collab.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import CheckpointError, InputError, UsageError
from medtools.core.train import TrainOptions

DEFAULT_WIDTHS = (32, 64, 128, 256)
POOL_SIZES = (1, 3, 5, 7)
TRAIN_DEFAULTS = TrainOptions(epochs=30, batch_size=8, lr=2e-3)  # umn-train's


def build_umn(*, in_channels: Sequence[int], out_channels: Sequence[int], image_size: int, widths: Sequence[int] = DEFAULT_WIDTHS, pool_sizes: Sequence[int] = POOL_SIZES):
    """The registered builder (``umn``): latent channels per scale in and out, square image size."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from medtools.collab.autoencoder import _block, latent_shapes, pack, unpack

    cin, cout, widths = [int(c) for c in in_channels], [int(c) for c in out_channels], [int(w) for w in widths]
    if not (len(cin) == len(cout) == len(widths)) or not cin:
        raise ValueError(f"in channels {cin}, out channels {cout} and widths {widths} need the same number of scales")
    k = len(cin)

    class PyramidPooling(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            branch = max(width // 4, 4)
            self.sizes = [int(p) for p in pool_sizes]
            self.branches = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(p), nn.Conv2d(width, branch, 1), nn.SiLU(inplace=True)) for p in self.sizes)
            self.fuse = _block(width + branch * len(self.sizes), width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            parts = [x] + [F.interpolate(b(x), size=x.shape[-2:], mode="bilinear", align_corners=False) for b in self.branches]
            return self.fuse(torch.cat(parts, dim=1))

    class UnifiedMappingNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_shapes = latent_shapes(cin, image_size)
            self.out_shapes = latent_shapes(cout, image_size)
            self.enc = nn.ModuleList(_block(cin[i] + (widths[i - 1] if i else 0), widths[i]) for i in range(k))
            self.ppm = PyramidPooling(widths[-1])
            self.dec = nn.ModuleList(_block(widths[i] + widths[i + 1], widths[i]) for i in range(k - 1))
            self.heads = nn.ModuleList(nn.Conv2d(widths[i], cout[i], 1) for i in range(k))

        def map(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            skips, h = [], None
            for i, z in enumerate(latents):
                x = z if h is None else torch.cat([z, F.adaptive_avg_pool2d(h, z.shape[-2:])], dim=1)
                h = self.enc[i](x)
                skips.append(h)
            g = self.ppm(h)
            outs = [None] * k
            outs[k - 1] = self.heads[k - 1](g)
            for i in reversed(range(k - 1)):
                g = self.dec[i](torch.cat([skips[i], F.interpolate(g, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)], dim=1))
                outs[i] = self.heads[i](g)
            return outs

        def forward(self, packed: torch.Tensor) -> torch.Tensor:
            return pack(self.map(unpack(packed, self.in_shapes)))

    return UnifiedMappingNetwork()


def contract_example(config: dict[str, Any], n: int, size: int) -> tuple[Any, dict[str, Any]]:
    """Model-contract inputs of the UMN's registered forward: random packed image latents."""
    import torch

    from medtools.collab.autoencoder import payload_numbers

    return torch.rand(n, payload_numbers(config["in_channels"], config["image_size"])), {"model_space": True}


def map_packed(model: Any, packed: Any) -> Any:
    """Predictor ``forward`` (``model_space=True``): packed image latents → packed mask latents."""
    return model(packed)


# ---------------------------------------------------------------- training and mapping


def _keys(keys: Path | None) -> dict[str, Any]:
    from medtools.collab import klt

    if keys is None:
        return {}
    files = sorted(keys.glob("*.key")) + sorted(keys.glob("*.safetensors")) if keys.is_dir() else [keys]
    out = {}
    for path in files:
        key = klt.load_key(path)
        out[key.key_id] = key
    if not out:
        raise InputError(f"no klt-key files in {keys}")
    return out


def collect_pairs(inputs: Sequence[str | Path], keys: Path | None) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Latent files → (image latents, mask latents) paired by (key id, case), and the keys."""
    from medtools.collab.latents import LATENT_EXTS, read_latent
    from medtools.core.inputs import expand_inputs

    images, masks = {}, {}
    for item in expand_inputs(inputs, exts=LATENT_EXTS):
        lat = read_latent(item.path)
        side = images if lat.config.get("source") == "ae-image" else masks if lat.config.get("source") == "ae-mask" else None
        if side is None:
            report.warn(f"{item.path}: {lat.config.get('source')} latents are not training pairs; skipped")
            continue
        side[(lat.config.get("key_id"), lat.case)] = lat
    common = sorted(set(images) & set(masks))
    if not common:
        raise InputError("no (image, mask) latent pairs: klt-encode both the images (ae-image) and their masks (ae-mask) with the same key")
    lost = len(images) + len(masks) - 2 * len(common)
    if lost:
        report.warn(f"{lost} latent files have no partner (same key id and case) and are left out")
    return [images[c] for c in common], [masks[c] for c in common], _keys(keys)


def plain_pairs(images: Sequence[Any], masks: Sequence[Any], keys: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Invert each pair with its client's key (``plain`` space) → packed float32 arrays."""
    from medtools.collab import klt
    from medtools.collab.autoencoder import pack
    from medtools.collab.latents import stack

    xs, ys = [], []
    by_key: dict[str, list[int]] = {}
    for index, lat in enumerate(images):
        by_key.setdefault(lat.config.get("key_id"), []).append(index)
    for key_id, indices in sorted(by_key.items()):
        zi, zm = stack([images[i] for i in indices]), stack([masks[i] for i in indices])
        if keys:
            if key_id not in keys:
                raise CheckpointError(f"no key with id {key_id} in --keys (needed for {len(indices)} latent pairs)")
            zi, zm = klt.invert(keys[key_id], zi), klt.invert(keys[key_id], zm)
        xs.append(pack(zi).astype(np.float32))
        ys.append(pack(zm).astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


def train_umn(
    inputs: Sequence[str | Path],
    output: Path,
    *,
    keys: Path | None,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    options: TrainOptions | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-3,
    max_grad_norm: float = 1.0,
    **settings: Any,
) -> dict[str, Any]:
    """umn-train: MSE between mapped and true mask latents, each scale weighted equally.
    ``options`` (or single shared settings such as ``epochs=3``): ``core.train.TrainOptions``,
    defaults ``TRAIN_DEFAULTS``. ``dp_epsilon``: DP-SGD (opacus, ``dp.py``) to this ε at
    ``dp_delta`` (< 1/number of pairs), per-sample clipping ``max_grad_norm``."""
    import torch

    from medtools.core.train import fit, initial_weights, train_options

    options = train_options(options, TRAIN_DEFAULTS, **settings)

    images, masks, key_map = collect_pairs(inputs, keys)
    x, y = plain_pairs(images, masks, key_map)
    in_channels = [int(z.shape[0]) for z in images[0].z]
    out_channels = [int(z.shape[0]) for z in masks[0].z]
    size = int(images[0].z[0].shape[-1]) * 2
    widths = list(widths)[: len(in_channels)] if len(widths) >= len(in_channels) else list(widths) + [int(widths[-1])] * (len(in_channels) - len(widths))
    config = {"in_channels": in_channels, "out_channels": out_channels, "image_size": size, "widths": [int(w) for w in widths], "pool_sizes": list(POOL_SIZES), "space": "plain" if key_map else "protected"}
    with initial_weights(options.seed):
        model = build_umn(**{k: config[k] for k in ("in_channels", "out_channels", "image_size", "widths", "pool_sizes")})
    from medtools.collab.autoencoder import latent_shapes

    shapes = latent_shapes(out_channels, size)
    bounds = np.cumsum([0] + [c * h * w for c, h, w in shapes])
    scale = torch.tensor([float(np.sqrt(np.mean(y[:, bounds[i] : bounds[i + 1]] ** 2)) + 1e-6) for i in range(len(shapes))])
    weights = torch.cat([torch.full((int(bounds[i + 1] - bounds[i]),), 1.0 / (len(shapes) * float(scale[i]) ** 2 * (bounds[i + 1] - bounds[i]))) for i in range(len(shapes))])

    def step(net: Any, batch: Any) -> Any:
        xb, yb = batch
        w = weights.to(xb.device)
        per_pair = ((net(xb) - yb).pow(2) * w).sum(1)
        return per_pair.sum() / max(len(per_pair), 1)  # an empty Poisson batch (DP-SGD) gives 0, not NaN

    report.log(f"umn-train: {len(x)} pairs from {len({lat.config.get('key_id') for lat in images})} clients, space {config['space']}")
    dp = None
    if dp_epsilon is not None:
        from medtools.collab.dp import umn_dp
        from medtools.core.dp import check_options

        check_options(epsilon=dp_epsilon, delta=dp_delta, n_items=len(x), unit="training pairs", compile=options.compile, precision=options.precision)
        options = options.replace(precision="fp32")
        per_epoch = options.steps_per_epoch or -(-len(x) // min(options.batch_size, len(x)))
        dp = umn_dp(epsilon=dp_epsilon, delta=dp_delta, max_grad_norm=max_grad_norm, planned_steps=options.epochs * per_epoch)
        config["dp"] = True
    spec = options.replace(batch_size=min(options.batch_size, len(x))).spec(
        output=Path(output), kind="umn", config=config, provenance={"pairs": len(x), "clients": sorted({str(lat.config.get("key_id")) for lat in images}), **options.id_provenance(train_cases=[lat.case for lat in images])},
        precise_bn_batches=0,
    )
    return fit(model, torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), step, spec, prepare=dp.prepare if dp else None, after_epoch=dp.after_epoch if dp else None)


def map_latents(
    inputs: Sequence[str | Path],
    model: Path,
    key_path: Path | None,
    output: Path,
    *,
    batch_size: int = 16,
    device: str | None = None,
    precision: str | None = None,
    overwrite: bool = False,
    shard: str | None = None,
) -> Any:
    """umn-map: protected image latents → protected mask latents (invert → map → re-apply)."""
    from medtools.collab import klt
    from medtools.collab.autoencoder import pack, unpack
    from medtools.collab.latents import LATENT_EXTS, read_latent, stack, write_latent
    from medtools.core import batch as batch_driver
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, parse_shard, shard_items
    from medtools.core.predict import Predictor

    items = shard_items(expand_inputs(inputs, exts=LATENT_EXTS), parse_shard(shard))
    check_output_arg(output, len(items))
    predictor = Predictor(model, kind="umn", device=device, precision=precision, batch_size=batch_size)
    space = predictor.config.get("space", "plain")
    key = klt.load_key(key_path) if key_path is not None else None
    if space == "plain" and key is None:
        raise UsageError(f"{model} maps plain latents: give the client's key with -k (or train a protected-space UMN: umn-train without --keys)")
    if space == "protected" and key is not None:
        raise UsageError(f"{model} was trained in the protected space: it takes no key")
    net = predictor.model
    out_shapes = net.out_shapes

    def load(item: Any) -> Any:
        target = output_for(item, output, ext=".safetensors", single=len(items) == 1)
        if target.exists() and not overwrite:
            return "skipped"
        latent = read_latent(item.path)
        if latent.config.get("source") != "ae-image":
            raise InputError(f"umn-map takes image latents (ae-image), this file holds {latent.config.get('source')} latents")
        return target, latent

    def work(batch: list[tuple[Any, Any]]) -> Any:
        z = stack([lat for _, (_, lat) in batch])
        if key is not None:
            z = klt.invert(key, z)
        mapped = unpack(predictor.predict(pack(z).astype(np.float32), model_space=True), out_shapes)
        if key is not None:
            mapped = klt.apply(key, mapped)
        for index, (item, (target, latent)) in enumerate(batch):
            config = {**{k: v for k, v in latent.config.items() if k not in ("shapes", "dtype", "model_sha256")}, "source": "umn", "state": "mapped"}
            write_latent(target, [m[index] for m in mapped], config, fp16=latent.config.get("dtype") == "float16")
            yield item, {"input": str(item.path), "output": str(target)}

    return batch_driver.run_batches(items, load, work, batch_size=batch_size, emit=batch_driver.emitter(), description="umn-map")
