"""``synth``: write N images from a DDPM checkpoint, reproducibly.

Image k is drawn from its own generator seeded by (seed, k), so the same seed gives the
same images whatever the batch size, the shard or the number of machines, and an
interrupted run resumes by generating only the missing files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import UsageError
from medtools.core.inputs import skip_existing


def to_pixels(batch: Any, bits: int, norm: dict[str, Any] | None = None) -> np.ndarray:
    """Model-range tensor (N, C, H, W) ([-1, 1] for a DDPM) → uint8/uint16 array (N, H, W) or (N, H, W, 3)."""
    from medtools.core.preprocess import canonical_norm, from_model_range

    scale = 255.0 if bits == 8 else 65535.0
    array = from_model_range(batch.float().cpu().numpy(), canonical_norm(norm or {"method": "unit", "model_range": [-1.0, 1.0]})).clip(0.0, 1.0)
    array = np.rint(array * scale).astype(np.uint8 if bits == 8 else np.uint16)
    return array[:, 0] if array.shape[1] == 1 else np.moveaxis(array, 1, -1)


def sample_name(index: int, total: int) -> str:
    return f"sample-{index:0{max(6, len(str(total - 1)))}d}.png"


def synthesize(
    *,
    model: Path,
    n: int,
    output: Path,
    sampler: str = "ddpm",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    bits: int = 8,
    eta: float = 0.0,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    on_written: Callable[[Path], None] = report.emit_path,
) -> dict[str, Any]:
    """Write images ``sample-XXXXXX.png`` for indices 0..n-1 (this shard's part) into ``output``."""
    from medtools.core.device import prepare_model, resolve_device, resolve_precision
    from medtools.core.io import Image, write_image
    from medtools.synth.schedule import default_steps, image_generators, make_sampler
    from medtools.synth.schedule import sample as run_sampler
    from medtools.synth.train import load_ddpm

    if bits not in (8, 16):
        raise UsageError(f"--bits must be 8 or 16, got {bits}")
    if n < 1:
        raise UsageError("-n must be at least 1")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    checkpoint, net, sched_config = load_ddpm(model, dev)
    config = checkpoint.config
    if bits == 16 and config["in_channels"] == 3:
        raise UsageError("16-bit PNGs are grayscale only; use --bits 8 for an RGB model")
    net = prepare_model(net, dev, compile=compile)
    scheduler = make_sampler(sampler, sched_config)
    steps = steps or default_steps(sampler, sched_config)
    indices = list(range(n))
    if shard is not None:
        indices = indices[shard[0] - 1 :: shard[1]]
    output.mkdir(parents=True, exist_ok=True)
    targets = {i: output / sample_name(i, n) for i in indices}
    todo = [i for i in indices if not skip_existing(targets[i], overwrite, log=lambda _: None)]
    if len(todo) < len(indices):
        report.log(f"skipping {len(indices) - len(todo)} existing images (--overwrite to redo)")
    shape = (int(config["in_channels"]), int(config["sample_size"]), int(config["sample_size"]))
    report.log(f"sampling {len(todo)} images {shape[1]}×{shape[2]} with {sampler}-{steps} on {dev} ({prec})")
    for start in report.progress(range(0, len(todo), batch_size), total=-(-len(todo) // batch_size), description="synth"):
        chunk = todo[start : start + batch_size]
        images = run_sampler(net, scheduler, steps=steps, generators=image_generators(seed, chunk), shape=shape, device=dev, precision=prec, eta=eta)
        for index, pixels in zip(chunk, to_pixels(images, bits, checkpoint.norm)):
            write_image(Image(pixels, format="png", meta={"bits": bits}), targets[index])
            on_written(targets[index])
    return {"written": len(todo), "skipped": len(indices) - len(todo), "sampler": sampler, "steps": steps, "device": str(dev), "precision": prec}
