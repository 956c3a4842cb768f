"""On-the-fly augmentation of 2-D training batches (images + label maps), in torch on the device.

The recipe follows nnU-Net (Isensee et al., Nature Methods 2021) in small: per sample, with
probability ``p``, a random affine transform (rotation ±``rotate`` degrees, isotropic scaling
1 ± ``scale``) optionally with a smooth elastic displacement (``elastic``: amplitude as a
fraction of the image size), then gamma (``x ** g``, log g uniform in ±log(1 + ``gamma``)),
brightness (× 1 ± ``brightness``) and mirroring along the listed axes (``mirror``: ``x`` the
width axis, ``y`` the height axis; each with probability 1/2). Images are in [0, 1]; labels
are resampled with nearest neighbour, images bilinearly (zeros outside).

A spec is written ``rotate=15,scale=0.15,elastic=0,gamma=0.3,brightness=0.1,mirror=xy,p=0.5``
(any subset; unset keys keep these defaults) or ``none``. :func:`crop_batch` takes random
patches, centred on a foreground pixel for the last ``n_foreground`` items of a batch (those
:class:`medtools.core.data.ForegroundBatchSampler` drew from target-containing slices).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medtools.core.errors import UsageError


@dataclass(frozen=True)
class AugmentSpec:
    rotate: float = 15.0
    scale: float = 0.15
    elastic: float = 0.0
    gamma: float = 0.3
    brightness: float = 0.1
    mirror: str = "xy"
    p: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def off(self) -> bool:
        return self == NO_AUGMENT


NO_AUGMENT = AugmentSpec(rotate=0.0, scale=0.0, elastic=0.0, gamma=0.0, brightness=0.0, mirror="", p=0.0)


def parse_augment(text: str | None) -> AugmentSpec:
    """``None``/``default`` → defaults; ``none`` → no augmentation; ``key=value,…`` → those set."""
    if text is None or text.strip() in ("", "default"):
        return AugmentSpec()
    if text.strip() == "none":
        return NO_AUGMENT
    values: dict[str, Any] = {}
    fields = AugmentSpec.__dataclass_fields__
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key not in fields or not _:
            raise UsageError(f"--augment: {part!r} is not KEY=VALUE with KEY one of {', '.join(fields)} (or 'none')")
        if key == "mirror":
            value = value.strip().lower()
            if value in ("none", "0", "off"):
                value = ""
            if set(value) - {"x", "y"}:
                raise UsageError(f"--augment mirror={value!r}: use axes x, y, xy or none")
            values[key] = value
        else:
            try:
                values[key] = float(value)
            except ValueError:
                raise UsageError(f"--augment {key}={value!r} is not a number") from None
            if values[key] < 0:
                raise UsageError(f"--augment {key} must be ≥ 0")
    return AugmentSpec(**values)


def _rand(n: int, device: Any, generator: Any = None) -> Any:
    import torch

    return torch.rand(n, device="cpu", generator=generator).to(device)


def augment_batch(images: Any, labels: Any, spec: AugmentSpec, *, generator: Any = None) -> tuple[Any, Any]:
    """(N, C, H, W) float images in [0, 1], (N, H, W) integer labels → augmented copies."""
    import torch
    import torch.nn.functional as F

    if spec.off:
        return images, labels
    n, _, height, width = images.shape
    device = images.device
    if spec.p > 0 and (spec.rotate > 0 or spec.scale > 0 or spec.elastic > 0):
        apply = _rand(n, device, generator) < spec.p
        if bool(apply.any()):
            angle = (2 * _rand(n, device, generator) - 1) * math.radians(spec.rotate)
            zoom = 1.0 + (2 * _rand(n, device, generator) - 1) * spec.scale
            angle = torch.where(apply, angle, torch.zeros_like(angle))
            zoom = torch.where(apply, zoom, torch.ones_like(zoom))
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.zeros(n, 2, 3, device=device)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * height / width, sin * width / height, cos
            grid = F.affine_grid(theta, (n, 1, height, width), align_corners=False)
            if spec.elastic > 0:
                coarse = (2 * torch.rand(n, 2, 5, 5, generator=generator) - 1).to(device) * 2 * spec.elastic
                field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
                grid = grid + field.permute(0, 2, 3, 1) * apply.view(n, 1, 1, 1)
            images = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].round().long()
    if spec.gamma > 0:
        log_g = (2 * _rand(n, device, generator) - 1) * math.log1p(spec.gamma)
        images = images.clamp(min=0).pow(torch.exp(log_g).view(n, 1, 1, 1))
    if spec.brightness > 0:
        images = images * (1.0 + (2 * _rand(n, device, generator) - 1) * spec.brightness).view(n, 1, 1, 1)
    for axis in spec.mirror:
        dim = -1 if axis == "x" else -2
        flip = _rand(n, device, generator) < 0.5
        if bool(flip.any()):
            images = torch.where(flip.view(n, 1, 1, 1), images.flip(dim), images)
            labels = torch.where(flip.view(n, 1, 1), labels.flip(dim), labels)
    return images, labels


def crop_batch(images: Any, labels: Any, patch: int | None, *, n_foreground: int = 0, generator: Any = None) -> tuple[Any, Any]:
    """Random ``patch``×``patch`` crops (all of the slice when it is no larger); the last
    ``n_foreground`` items are centred on a random foreground pixel (± a quarter patch) when
    they have one."""
    import torch

    if not patch:
        return images, labels
    n, _, height, width = images.shape
    ph, pw = min(patch, height), min(patch, width)
    if (ph, pw) == (height, width):
        return images, labels
    out_images, out_labels = [], []
    for i in range(n):
        top = int(torch.randint(0, height - ph + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - pw + 1, (1,), generator=generator))
        if i >= n - n_foreground:
            points = torch.nonzero(labels[i] > 0)
            if len(points):
                cy, cx = points[int(torch.randint(0, len(points), (1,), generator=generator))].tolist()
                jitter = torch.randint(-(ph // 4), ph // 4 + 1, (2,), generator=generator).tolist()
                top = min(max(cy + jitter[0] - ph // 2, 0), height - ph)
                left = min(max(cx + jitter[1] - pw // 2, 0), width - pw)
        out_images.append(images[i, :, top : top + ph, left : left + pw])
        out_labels.append(labels[i, top : top + ph, left : left + pw])
    return torch.stack(out_images), torch.stack(out_labels)
