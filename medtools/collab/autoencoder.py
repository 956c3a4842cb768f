"""Skip-connected autoencoder with multi-scale latents (the client's image and mask models).

Encoder: ``len(widths)`` stride-2 stages; stage k (k = 0 … K−1) works at S/2^(k+1) and
emits a latent of ``latent_channels[k]`` channels there through a 1×1 convolution. The
decoder starts from the deepest latent and, going up, concatenates each shallower latent
(the skip connections carry latents, never encoder features), so the latents are the
whole message: a client sends them and nothing else.

With the defaults for a 256² image (widths 32,64,128,256, latent channels 4,8,16,32) the
latents are 4×128² + 8×64² + 16×32² + 32×16² = 122,880 numbers: 491,520 bytes in fp32,
245,760 in fp16 (``klt-encode --fp16``).

Packed form (what the Predictor passes around): the scales flattened and concatenated per
image, (N, D); :func:`unpack` restores ``[(N, C_k, H_k, W_k)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.train import TrainOptions

DEFAULT_WIDTHS = (32, 64, 128, 256)
DEFAULT_LATENT_CHANNELS = (4, 8, 16, 32)
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_Annotation", "_annotation")
TRAIN_DEFAULTS = TrainOptions(epochs=30, batch_size=8, lr=2e-3)  # ae-train's


def latent_shapes(latent_channels: Sequence[int], image_size: int) -> list[tuple[int, int, int]]:
    """(C_k, H_k, W_k) of each scale for a square ``image_size`` input."""
    return [(int(c), int(image_size) >> (k + 1), int(image_size) >> (k + 1)) for k, c in enumerate(latent_channels)]


def payload_numbers(latent_channels: Sequence[int], image_size: int) -> int:
    return int(sum(c * h * w for c, h, w in latent_shapes(latent_channels, image_size)))


def pack(latents: Sequence[Any]) -> Any:
    """[(N, C_k, H_k, W_k)] → (N, D) (torch or numpy)."""
    if isinstance(latents[0], np.ndarray):
        return np.concatenate([z.reshape(len(z), int(np.prod(z.shape[1:]))) for z in latents], axis=1)
    import torch

    return torch.cat([z.flatten(1) for z in latents], dim=1)  # also for an empty batch (DP-SGD's Poisson sampling)


def unpack(packed: Any, shapes: Sequence[tuple[int, int, int]]) -> list[Any]:
    """(N, D) → [(N, C_k, H_k, W_k)]."""
    out, start = [], 0
    for c, h, w in shapes:
        size = c * h * w
        out.append(packed[:, start : start + size].reshape(packed.shape[0], c, h, w))
        start += size
    if start != packed.shape[1]:
        raise InputError(f"packed latents have {packed.shape[1]} numbers per image, the model expects {start}")
    return out


def _block(cin: int, cout: int, stride: int = 1):
    import torch.nn as nn

    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(inplace=True),
    )


def build_autoencoder(*, in_channels: int = 1, out_channels: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS, latent_channels: Sequence[int] = DEFAULT_LATENT_CHANNELS, image_size: int = 256):
    """The registered builder (``ae-image`` / ``ae-mask``)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    widths, latent_channels = [int(w) for w in widths], [int(c) for c in latent_channels]
    if len(widths) != len(latent_channels) or not widths:
        raise ValueError(f"widths {widths} and latent channels {latent_channels} need the same (non-zero) number of scales")
    if image_size % (2 ** len(widths)):
        raise ValueError(f"image size {image_size} must be divisible by 2^{len(widths)}")

    class SkipAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shapes = latent_shapes(latent_channels, image_size)
            self.image_size = int(image_size)
            self.down = nn.ModuleList()
            self.to_latent = nn.ModuleList()
            prev = in_channels
            for w, c in zip(widths, latent_channels):
                self.down.append(_block(prev, w, stride=2))
                self.to_latent.append(nn.Conv2d(w, c, 1))
                prev = w
            k = len(widths)
            self.from_latent = nn.ModuleList(nn.Conv2d(c, w, 1) for w, c in zip(widths, latent_channels))
            self.up = nn.ModuleList(_block(widths[i] + (widths[i + 1] if i + 1 < k else 0), widths[i]) for i in range(k))
            self.head = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.SiLU(inplace=True), nn.Conv2d(widths[0], out_channels, 1))

        def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
            latents = []
            for down, to_latent in zip(self.down, self.to_latent):
                x = down(x)
                latents.append(to_latent(x))
            return latents

        def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
            g = None
            for i in reversed(range(len(latents))):
                h = self.from_latent[i](latents[i])
                if g is not None:
                    h = torch.cat([h, F.interpolate(g, size=h.shape[-2:], mode="bilinear", align_corners=False)], dim=1)
                g = self.up[i](h)
            g = F.interpolate(g, scale_factor=2, mode="bilinear", align_corners=False)
            return self.head(g)  # logits (masks) or pre-sigmoid intensities (images)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode(self.encode(x))

    return SkipAutoencoder()


def encode_packed(model: Any, x: Any) -> Any:
    """Predictor ``features``: model input → packed latents (N, D)."""
    return pack(model.encode(x))


def contract_example(config: dict[str, Any], n: int, size: int) -> tuple[Any, dict[str, Any]]:
    """Model-contract inputs of an autoencoder's registered forward: random packed latents."""
    import torch

    return torch.rand(n, payload_numbers(config["latent_channels"], config["image_size"])), {"model_space": True}


def decode_packed(model: Any, packed: Any) -> Any:
    """Predictor ``forward`` (``model_space=True``): packed latents → output in [0, 1]
    (sigmoid of the logits: intensities for images, foreground probability for masks)."""
    return model.decode(unpack(packed, model.shapes)).sigmoid()


# ---------------------------------------------------------------- data


def case_name(path: Path | str) -> str:
    """The case a file belongs to: its stem without a mask suffix (``014_HC_mask.png`` → ``014_HC``)."""
    from medtools.core.io import split_ext

    stem = split_ext(Path(path).name)[0]
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def files_sha256(paths: Sequence[Path | str]) -> str:
    """SHA-256 of the sorted file names (no folders: the same data elsewhere gives the same
    hash): what a checkpoint records of its training files instead of their paths."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(Path(p).name for p in paths)).encode()).hexdigest()


def load_batch(paths: Sequence[Path], size: int, *, mask: bool) -> np.ndarray:
    """Files → (N, 1, size, size) float32 in [0, 1] (masks: {0, 1}) via core.preprocess."""
    from medtools.core import preprocess

    out = []
    for path in paths:
        if mask:  # any value > 0 is foreground (0/1 and 0/255 masks alike), then resized
            raw = preprocess.load_image(path, size=None, channels=1, norm={"method": "none"})
            x = preprocess.resize((raw > 0).astype(np.float32)[None], size)[0]
            out.append((x > 0.5).astype(np.float32))
        else:
            out.append(preprocess.load_image(path, size=size, channels=1, norm=preprocess.UNIT_NORM))
    return np.stack(out) if out else np.zeros((0, 1, size, size), np.float32)


def train_autoencoder(
    inputs: Sequence[str | Path],
    output: Path,
    *,
    target: str = "image",
    size: int = 256,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    latent_channels: Sequence[int] = DEFAULT_LATENT_CHANNELS,
    latent_noise: float = 0.05,
    options: TrainOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train an ``ae-image`` (L1 + MSE on intensities) or ``ae-mask`` (BCE + soft Dice) model.

    ``latent_noise``: Gaussian noise of this standard deviation (relative to each scale's
    latent RMS) is added to the latents in training, so the decoder tolerates the UMN's
    imperfect mapped latents (drawn from the loop's per-epoch step stream). ``options`` (or single
    shared settings such as ``epochs=3``): ``core.train.TrainOptions``, defaults ``TRAIN_DEFAULTS``.
    """
    import torch
    import torch.nn.functional as F

    from medtools.core import preprocess, report
    from medtools.core.inputs import expand_inputs
    from medtools.core.train import fit, initial_weights, train_options

    options = train_options(options, TRAIN_DEFAULTS, **settings)

    if target not in ("image", "mask"):
        raise UsageError(f"--kind must be image or mask, got {target!r}")
    items = expand_inputs(inputs)
    paths = [i.path for i in items]
    data = torch.from_numpy(load_batch(paths, size, mask=target == "mask"))
    report.log(f"ae-train: {len(paths)} {target}s at {size}² ({payload_numbers(latent_channels, size)} latent numbers per image)")
    config = {
        "in_channels": 1, "out_channels": 1, "widths": [int(w) for w in widths], "latent_channels": [int(c) for c in latent_channels],
        "image_size": int(size), "target": target, "latent_noise": float(latent_noise),
    }
    try:
        with initial_weights(options.seed):
            model = build_autoencoder(**{k: config[k] for k in ("in_channels", "out_channels", "widths", "latent_channels", "image_size")})
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def step(net: Any, batch: Any) -> Any:
        (x,) = batch
        core = net.module if hasattr(net, "module") else net
        latents = core.encode(x)
        if latent_noise > 0:
            latents = [z + latent_noise * z.detach().pow(2).mean().sqrt() * torch.randn_like(z) for z in latents]
        logits = core.decode(latents)
        if target == "image":
            out = logits.sigmoid()
            return F.l1_loss(out, x) + F.mse_loss(out, x)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * x).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + x.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits, x) + dice.mean()

    spec = options.replace(batch_size=min(options.batch_size, len(paths))).spec(
        output=Path(output), kind=f"ae-{target}", config=config, norm=preprocess.UNIT_NORM,
        provenance={"items": len(paths), "data_sha256": files_sha256(paths), **options.id_provenance(train_cases=[case_name(p) for p in paths])}, precise_bn_batches=0,
    )
    return fit(model, torch.utils.data.TensorDataset(data), step, spec)
