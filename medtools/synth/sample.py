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
    output: Path | None,
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
    class_name: str | None = None,
    guidance: float = 1.0,
    on_pixels: Callable[[int | None, int, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Write images ``sample-XXXXXX.png`` for indices 0..n-1 (this shard's part) into ``output``.

    ``class_name`` (a class-conditional checkpoint): that class, with classifier-free
    ``guidance``; ``"all"``: ``n`` images of every class in ``output/<CLASS>/`` (a training
    folder), class number c drawn with seed ``seed + c``, so ``--class all`` holds exactly the
    images of ``--class C --seed seed+c``. With ``output=None`` nothing is written: each image
    goes to ``on_pixels(class_index, index, pixels)`` instead (the in-memory API).
    """
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
    names = list(config.get("class_names") or [])
    if class_name is None:
        jobs: list[tuple[int | None, Path | None, int]] = [(None, output, seed)]
    elif not names:
        raise UsageError(f"{model} is not class-conditional (trained without --label/--classes-from): drop --class")
    elif class_name == "all":
        jobs = [(c, output / name if output is not None else None, seed + c) for c, name in enumerate(names)]
    elif class_name in names:
        jobs = [(names.index(class_name), output, seed)]
    else:
        raise UsageError(f"--class {class_name!r} is not one of this model's classes: {', '.join(names)} (or all)")
    if guidance < 0:
        raise UsageError(f"--guidance must be >= 0, got {guidance}")
    shape = (int(config["in_channels"]), int(config["sample_size"]), int(config["sample_size"]))
    indices = list(range(n))
    if shard is not None:
        indices = indices[shard[0] - 1 :: shard[1]]
    written = skipped = 0
    for class_index, folder, class_seed in jobs:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        targets = {i: folder / sample_name(i, n) for i in indices} if folder is not None else {}
        todo = [i for i in indices if folder is None or not skip_existing(targets[i], overwrite, log=lambda _: None)]
        if len(todo) < len(indices):
            report.log(f"skipping {len(indices) - len(todo)} existing images in {folder} (--overwrite to redo)")
        what = "" if class_index is None else f" of class {names[class_index]} (guidance {guidance:g})"
        report.log(f"sampling {len(todo)} images{what} {shape[1]}×{shape[2]} with {sampler}-{steps} on {dev} ({prec})")
        for start in report.progress(range(0, len(todo), batch_size), total=-(-len(todo) // batch_size), description="synth"):
            chunk = todo[start : start + batch_size]
            labels = None if class_index is None else [class_index] * len(chunk)
            images = run_sampler(net, scheduler, steps=steps, generators=image_generators(class_seed, chunk), shape=shape, device=dev, precision=prec, eta=eta, class_labels=labels, guidance=guidance)
            for index, pixels in zip(chunk, to_pixels(images, bits, checkpoint.norm)):
                if folder is None and on_pixels is not None:
                    on_pixels(class_index, index, pixels)
                    continue
                write_image(Image(pixels, format="png", meta={"bits": bits}), targets[index])
                on_written(targets[index])
        written += len(todo)
        skipped += len(indices) - len(todo)
    result = {"written": written, "skipped": skipped, "sampler": sampler, "steps": steps, "device": str(dev), "precision": prec}
    if class_name is not None:
        result.update({"class": class_name, "classes": [names[c] for c, _, _ in jobs], "guidance": guidance})
    return result


def sample_arrays(model: Path | str, n: int, *, seed: int = 0, class_name: str | None = None, **options: Any) -> np.ndarray:
    """``n`` images as one (n, H, W[, 3]) array, in memory: image i equals the file
    ``synthesize(..., seed=seed)`` writes as sample i (``options``: synthesize's sampler,
    steps, guidance, bits, batch_size, device, precision). ``class_name="all"`` is refused."""
    if class_name == "all":
        raise UsageError("class_name='all' writes one folder per class; ask for one class at a time")
    out: dict[int, np.ndarray] = {}
    synthesize(model=Path(model), n=n, output=None, seed=seed, class_name=class_name, on_pixels=lambda _c, i, pixels: out.__setitem__(i, pixels), **options)
    return np.stack([out[i] for i in range(n)])


def synth_job(*, model: Path, shard: str | None, **options: Any) -> int:
    """``synth``: images written under the output folder, each path on stdout as it lands, or
    with --json one document listing them (with the run record)."""
    from medtools.core.context import current
    from medtools.core.inputs import parse_shard

    written: list[str] = []
    json_output = current().json
    result = synthesize(model=model, shard=parse_shard(shard), on_written=(lambda p: written.append(str(p))) if json_output else report.emit_path, **options)
    record = report.RunRecord(seed=options.get("seed"), device=result["device"])
    record.add_checkpoint(model)
    report.emit_result({**result, "files": written}, record=record)
    return 0
