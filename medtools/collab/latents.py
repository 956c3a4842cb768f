"""Latent files (the payload) and the client-side steps: encode + protect, unprotect + decode.

A latent file is a safetensors file of kind ``klt-latent``: tensors ``z.0 … z.{K−1}``
(C_k, H_k, W_k) in float32 or float16, and ``medtools.config`` naming the case, the source
model kind (``ae-image`` or ``ae-mask``; ``umn`` for mapped latents), the key id, the
key's public transform description (name and parameters, never key material), the
state (``protected``/``mapped``/``plain``), the input image's H×W and format (so decoded
masks come back in the input's geometry). It never holds key material.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import batch as batch_driver
from medtools.core import report
from medtools.core.errors import CheckpointError, InputError

LATENT_EXTS = (".safetensors",)


@dataclass
class Latent:
    path: Path | None
    z: list[np.ndarray]  # per scale (C, H, W) float32
    config: dict[str, Any]

    @property
    def case(self) -> str:
        return str(self.config["case"])


def write_latent(path: Path, z: Sequence[np.ndarray], config: dict[str, Any], *, fp16: bool = False) -> dict[str, int]:
    """Write one latent file; returns its payload (tensor bytes) and file size."""
    import torch

    from medtools.core import ckpt

    dtype = np.float16 if fp16 else np.float32
    arrays = [np.ascontiguousarray(a.astype(dtype)) for a in z]
    config = {**config, "shapes": [list(a.shape) for a in arrays], "dtype": "float16" if fp16 else "float32"}
    ckpt.save(path, {f"z.{k}": torch.from_numpy(a) for k, a in enumerate(arrays)}, kind="klt-latent", config=config)
    return {"payload_bytes": int(sum(a.nbytes for a in arrays)), "file_bytes": int(Path(path).stat().st_size)}


def read_latent(path: Path | str) -> Latent:
    from medtools.core import ckpt

    saved = ckpt.load(path, kind="klt-latent")
    try:
        z = [saved.tensors[f"z.{k}"].float().numpy() for k in range(len(saved.config["shapes"]))]
        saved.config["case"]
    except KeyError as exc:
        raise CheckpointError(f"{path}: incomplete klt-latent file ({exc} missing)") from None
    return Latent(path=Path(path), z=z, config=saved.config)


def stack(latents: Sequence[Latent]) -> list[np.ndarray]:
    """Latent files → [(N, C_k, H_k, W_k)] (all must share shapes)."""
    shapes = {tuple(tuple(z.shape) for z in lat.z) for lat in latents}
    if len(shapes) > 1:
        raise InputError(f"latents of different shapes in one batch: {sorted(shapes)}")
    return [np.stack([lat.z[k] for lat in latents]) for k in range(len(latents[0].z))]


def ae_predictor(model: Path | str, kind: str | tuple[str, ...], device: str | None, precision: str | None, batch_size: int):
    from medtools.core.predict import Predictor

    return Predictor(model, kind=kind, device=device, precision=precision, batch_size=batch_size)


def encode(predictor: Any, images: np.ndarray) -> list[np.ndarray]:
    """(N, 1, H, W) in [0, 1] → plain latents [(N, C_k, H_k, W_k)] through the Predictor."""
    from medtools.collab.autoencoder import latent_shapes, unpack

    packed = predictor.features(images)
    return unpack(packed, latent_shapes(predictor.config["latent_channels"], predictor.size))


def decode(predictor: Any, latents: Sequence[np.ndarray]) -> np.ndarray:
    """Plain latents → (N, 1, S, S) decoder output in [0, 1] through the Predictor."""
    from medtools.collab.autoencoder import pack

    return predictor.predict(pack([z.astype(np.float32) for z in latents]).astype(np.float32), model_space=True)


def encode_images(
    inputs: Sequence[str | Path],
    model: Path,
    key_path: Path,
    output: Path,
    *,
    fp16: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    precision: str | None = None,
    overwrite: bool = False,
    shard: str | None = None,
) -> batch_driver.Outcome:
    """klt-encode: images (or masks, with an ``ae-mask`` model) → protected latent files."""
    from medtools.collab import klt
    from medtools.collab.autoencoder import case_name, load_batch
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, parse_shard, shard_items
    from medtools.core.io import format_of, read_image

    items = shard_items(expand_inputs(inputs), parse_shard(shard))
    check_output_arg(output, len(items))
    key = klt.load_key(key_path)
    predictor = ae_predictor(model, ("ae-image", "ae-mask"), device, precision, batch_size)
    if list(predictor.config["latent_channels"]) != key.latent_channels:
        raise CheckpointError(f"{key_path} was made for latent channels {key.latent_channels}, {model} has {predictor.config['latent_channels']}")
    is_mask = predictor.kind.name == "ae-mask"
    source_sha = report.sha256_file(model)

    def load(item: Any) -> Any:
        target = output_for(item, output, ext=".safetensors", single=len(items) == 1)
        if target.exists() and not overwrite:
            return "skipped"
        image = read_image(item.path)
        shape = list(image.array.shape[:2])
        return target, shape, format_of(item.path), load_batch([item.path], predictor.size, mask=is_mask)[0]

    def work(batch: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        x = np.stack([value[3] for _, value in batch])
        protected = klt.apply(key, encode(predictor, x))
        for index, (item, (target, shape, fmt, _)) in enumerate(batch):
            config = {"source": predictor.kind.name, "case": case_name(item.path), "key_id": key.key_id, "transform": key.describe(), "state": "protected", "image_shape": shape, "format": fmt, "model_sha256": source_sha}
            sizes = write_latent(target, [z[index] for z in protected], config, fp16=fp16)
            yield item, {"input": str(item.path), "output": str(target), **sizes}

    totals = {"payload_bytes": 0, "file_bytes": 0}
    emit = batch_driver.emitter()

    def emit_and_count(result: dict[str, Any]) -> None:
        totals["payload_bytes"] += result["payload_bytes"]
        totals["file_bytes"] += result["file_bytes"]
        emit(result)

    outcome = batch_driver.run_batches(items, load, work, batch_size=batch_size, emit=emit_and_count, description="klt-encode")
    outcome.totals.update(totals)
    return outcome


def finish(outcome: batch_driver.Outcome, record: report.RunRecord) -> int:
    """The closing line of klt-encode/umn-map/klt-decode under --json (counts, totals, run record); the exit code."""
    from medtools.core.context import current

    if current().json:
        report.emit_jsonl({"summary": outcome.summary(), "run": record.as_dict()})
    return outcome.exit_code


def decode_latents(
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
    threshold: float = 0.5,
) -> batch_driver.Outcome:
    """klt-decode: protected (or mapped) latents → masks (``ae-mask``: 0/255) or images
    (``ae-image``: uint8) in the input image's size and format. Without a key the latents
    are decoded as they are (what an eavesdropper gets)."""
    from medtools.collab import klt
    from medtools.core import preprocess
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, parse_shard, shard_items
    from medtools.core.io import Image, write_image

    items = shard_items(expand_inputs(inputs, exts=LATENT_EXTS), parse_shard(shard))
    check_output_arg(output, len(items))
    key = klt.load_key(key_path) if key_path is not None else None
    predictor = ae_predictor(model, ("ae-image", "ae-mask"), device, precision, batch_size)
    is_mask = predictor.kind.name == "ae-mask"
    ext_of = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}

    def load(item: Any) -> Any:
        latent = read_latent(item.path)
        ext = ext_of.get(latent.config.get("format", "png"), ".png")
        target = output_for(item, output, ext=ext, single=len(items) == 1)
        if target.exists() and not overwrite:
            return "skipped"
        return target, latent

    warned: set[str] = set()

    def work(batch: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        z = stack([lat for _, (_, lat) in batch])
        for _, (_, lat) in batch:
            found = str(lat.config.get("key_id"))
            if key is not None and found != key.key_id and found not in warned:
                warned.add(found)
                report.warn(f"latents protected with key {found} are decoded with key {key.key_id}: expect garbage")
        plain = klt.invert(key, z) if key is not None else z
        out = decode(predictor, plain)
        for index, (item, (target, latent)) in enumerate(batch):
            h, w = (latent.config.get("image_shape") or [predictor.size, predictor.size])[:2]
            prob = preprocess.resize(out[index : index + 1], (int(h), int(w)))[0, 0]
            array = np.where(prob > threshold, 255, 0).astype(np.uint8) if is_mask else np.clip(np.round(prob * 255), 0, 255).astype(np.uint8)
            write_image(Image(array, format="png"), target, format=latent.config.get("format", "png") if latent.config.get("format") in ext_of else "png")
            yield item, {"input": str(item.path), "output": str(target)}

    return batch_driver.run_batches(items, load, work, batch_size=batch_size, emit=batch_driver.emitter(), description="klt-decode")
