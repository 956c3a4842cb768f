"""explain: the saliency map of a segmenter, classifier or re-identification attacker for one
image or case, on the input's own grid, with its numbers and sanity checks.

Each model kind brings its inputs into the frame the network sees and the map back out:

- ``seg``: the volume is mapped into the checkpoint's training geometry (core.io.geometry: the
  same GridMap as ``segment``), cut into slices; the map of each slice comes back onto the
  input's grid (linear). One map per target class, computed on the slices where the model
  predicts that class (the target is the class's mean logit over its predicted region).
- ``cls``: the image is resized (and encrypted, with the key) as ``classify`` does; a map in a
  block-cipher frame is put back into the plain image's frame by undoing the block permutation
  (imagecipher.block); a logistic-sine cipher diffuses every pixel over the whole image, so its
  map stays in the cipher frame, and the result says so (``frame``).
- ``reid``: the attacker's top-1 identity for the case (``medtools.api.reid_scores``), explained
  on the slices it scores (the attacker's training-time defences are not part of the map).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError
from medtools.core.io import RASTER_FORMATS, Image
from medtools.explain import METHODS
from medtools.explain import checks as checks_lib
from medtools.explain.saliency import cascade_stages, check_layer, reinitialised, saliency, scores_module, seg_regions

CHECK_SLICES = 4  # slices per target the randomisation and faithfulness checks run on (the largest targets)


@dataclass
class Subject:
    """One input in the network's frame and the way back to the input's."""

    predictor: Any
    segment: bool
    x: np.ndarray  # (N, C, H, W) float32 in [0, 1]: what the network sees
    names: list[str]  # the score names (class labels)
    targets: list[int]  # the scores explained
    rows: dict[int, np.ndarray]  # target → the items (slices) explained
    back: Callable[[np.ndarray], np.ndarray]  # (N, H, W) maps → the input's grid
    reference: Image
    regions: np.ndarray | None = None  # seg: (N, K, H, W) fixed region of each score
    mask: np.ndarray | None = None  # (N, H, W) bool ground truth in the network's frame
    to_plain: Callable[[np.ndarray], np.ndarray] = lambda maps: maps  # network frame → the mask's frame
    frame: str = "input"
    notes: list[str] = field(default_factory=list)


def _label_volume(image: Image) -> np.ndarray:
    from medtools.core.data import image_volume

    return image_volume(image) > 0


def _class_index(target: str, names: Sequence[str], foreground: int = 0) -> int:
    if target in names:
        return list(names).index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    raise UsageError(f"--target {target!r} is not a class of this model; classes: {', '.join(names[foreground:])} (or pred)")


def _seg_subject(images: Sequence[Image], predictor: Any, target: str, mask: Image | None, volume: int | None) -> Subject:
    from medtools.core.data import image_volume
    from medtools.core.preprocess import model_grid, slices_to_volume, stack_context, volume_to_slices, volumes_to_slices

    expected = max(len(predictor.modalities), 1)
    if len(images) != expected:
        raise InputError(f"the model expects {expected} modalities ({', '.join(predictor.modalities)}), got {len(images)} images")
    volumes = [image_volume(image, volume=volume) for image in images]
    if any(v.shape != volumes[0].shape for v in volumes):
        raise InputError(f"modality shapes differ: {', '.join(str(v.shape) for v in volumes)}")
    grid = model_grid(images[0], volumes[0].shape, predictor.norm)
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, _ = volumes_to_slices(volumes, predictor.norm)
    x = np.ascontiguousarray(stack_context(slices, int(predictor.config.get("context", 0))), dtype=np.float32)
    probs = predictor.predict(x, softmax=True)
    regions = seg_regions(probs)
    winner = probs.argmax(1)
    names = [str(v) for v in predictor.config.get("label_values") or range(probs.shape[1])]
    if target == "pred":
        targets = [k for k in range(1, len(names)) if (winner == k).any()]
    else:
        targets = [_class_index(target, names, foreground=1)]
    rows = {}
    for k in targets:
        present = np.flatnonzero((winner == k).reshape(len(x), -1).any(1))
        rows[k] = present if len(present) else np.arange(len(x))
    truth = None
    if mask is not None:
        labels = _label_volume(mask).astype(np.uint8)
        if labels.shape != volumes[0].shape and grid is None or grid is not None and labels.shape != grid.shape:
            raise InputError(f"the mask's shape {labels.shape} is not the image's {tuple(image_volume(images[0], volume=volume).shape)}")
        if grid is not None:
            labels = grid.to_model(labels, labels=True)
        truth = volume_to_slices(labels) > 0
    reference = images[0]

    def back(maps: np.ndarray) -> np.ndarray:
        out = slices_to_volume(maps.astype(np.float32))
        if grid is not None:
            out = grid.from_model(out)
        if reference.format in RASTER_FORMATS or reference.array.ndim == 2:
            out = out[:, :, 0]
        return out.astype(np.float32)

    subject = Subject(predictor, True, x, names, targets, rows, back, reference, regions=regions, mask=truth)
    if not targets:
        subject.notes.append("the model predicts no foreground class anywhere: nothing to explain")
    return subject


def _block_unshuffle(maps: np.ndarray, key: bytes, block: int) -> np.ndarray:
    from medtools.imagecipher.block import unshuffle

    return np.stack([unshuffle(m, key, block) for m in maps])


def _cls_subject(image: Image, classifier: Any, target: str, mask: Image | None) -> Subject:
    from medtools.core.preprocess import resize

    predictor = classifier.predictor
    x = classifier.load(image)[None].astype(np.float32)
    names = list(classifier.class_names)
    probs = predictor.predict(x, softmax=True)[0]
    k = int(np.argmax(probs)) if target == "pred" else _class_index(target, names)
    height, width = image.array.shape[:2]
    encryption = classifier.encryption
    method = classifier.method
    notes: list[str] = []
    to_plain: Callable[[np.ndarray], np.ndarray] = lambda maps: maps
    frame = "plain"
    if method != "none" and encryption is None:
        frame = "cipher"
        notes.append("the inputs are cipher images and no key was given: the map is in the cipher image's frame")
    elif method == "block":
        to_plain = lambda maps: _block_unshuffle(maps, encryption.key, encryption.block_size)  # noqa: E731
        notes.append(f"the map was put back into the plain image's frame by undoing the {encryption.block_size}×{encryption.block_size} block permutation")
    elif method != "none":
        frame = "cipher"
        notes.append(f"{method} diffuses every pixel over the whole image: no plain-frame map exists, the map is in the cipher image's frame")

    def back(maps: np.ndarray) -> np.ndarray:
        plain = to_plain(maps)
        if frame != "plain" or (height, width) == plain.shape[-2:]:
            return plain[0].astype(np.float32)
        return resize(plain[:, None].astype(np.float32), (height, width))[0, 0]

    truth = None
    if mask is not None and frame == "plain":
        truth = resize(_label_volume(mask)[:, :, 0][None].astype(np.float32), classifier.size, labels=True) > 0.5
    return Subject(predictor, False, x, names, [k], {k: np.arange(1)}, back, image, mask=truth, to_plain=to_plain, frame=frame, notes=notes)


def _reid_subject(images: Sequence[Image], predictor: Any, target: str, mask: Image | None) -> Subject:
    from medtools import api
    from medtools.core.data import image_volume
    from medtools.core.preprocess import model_grid, resize, slices_to_volume, volume_to_slices, volumes_to_slices

    names = list(predictor.config["class_names"])
    if target == "pred":
        k = names.index(api.reid_scores(list(images), predictor, top=1)["top"][0]["identity"])
    else:
        k = _class_index(target, names)
    volumes = [image_volume(image) for image in images]
    grid = model_grid(images[0], volumes[0].shape, predictor.norm)  # the attacker's training geometry, as reid_scores
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, _ = volumes_to_slices(volumes, predictor.norm)
    flat = slices.reshape(len(slices), -1)
    keep = np.flatnonzero(flat.max(axis=1) - flat.min(axis=1) > 1e-3)
    if not len(keep):
        raise InputError("every slice of this case is constant: nothing to identify")
    size = int(predictor.config["image_size"])
    x = resize(slices[keep], size).astype(np.float32)
    shape = slices.shape[-2:]
    reference = images[0]

    def to_plain(maps: np.ndarray) -> np.ndarray:
        return resize(maps[:, None].astype(np.float32), tuple(shape))[:, 0]

    def back(maps: np.ndarray) -> np.ndarray:
        full = np.zeros((len(slices), *shape), np.float32)
        full[keep] = to_plain(maps)
        out = slices_to_volume(full)
        if grid is not None:  # back onto the input's grid: linear in-plane, exact reorientation
            out = grid.from_model(out)
        return out[:, :, 0] if reference.format in RASTER_FORMATS or reference.array.ndim == 2 else out

    truth = None
    if mask is not None:
        labels = _label_volume(mask).astype(np.uint8)
        if grid is not None:
            if labels.shape != grid.shape:
                raise InputError(f"the mask's shape {labels.shape} is not the image's {grid.shape}")
            labels = grid.to_model(labels, labels=True)
        truth = volume_to_slices(labels)[keep] > 0
    notes = ["the attacker's training-time defences are not applied to the explained slices"] if predictor.config.get("defence") else []
    return Subject(predictor, False, x, names, [k], {k: np.arange(len(x))}, back, reference, mask=truth, to_plain=to_plain, notes=notes)


def subject_for(images: Sequence[Image], model: Any, *, target: str, mask: Image | None, volume: int | None) -> Subject:
    """The Subject of a loaded model (a Predictor of a seg/reid checkpoint or a Classifier)."""
    if hasattr(model, "encryption") and hasattr(model, "predictor"):
        if len(images) != 1:
            raise InputError(f"a classifier reads one image, got {len(images)}")
        return _cls_subject(images[0], model, target, mask)
    kind = model.kind.name
    if kind == "seg":
        return _seg_subject(images, model, target, mask, volume)
    if kind in ("reid", "cls"):
        return _reid_subject(images, model, target, mask)
    raise UsageError(f"explain takes seg, cls and reid checkpoints, not {kind}")


def _probabilities(subject: Subject, k: int, region: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """(M, C, H, W) → (M,) the target's probability (a segmenter's: mean over the fixed region)."""

    def score(x: np.ndarray) -> np.ndarray:
        probs = subject.predictor.predict(x, softmax=True)
        if not subject.segment:
            return probs[:, k]
        weight = region[None] if region is not None else np.ones(probs.shape[-2:], np.float32)[None]
        return (probs[:, k] * weight).sum((-2, -1)) / max(float(weight.sum()), 1.0)

    return score


def _maps(subject: Subject, predictor: Any, k: int, items: np.ndarray, method: str, layer: str | None, batch_size: int) -> np.ndarray:
    import torch

    net = scores_module(predictor, segment=subject.segment)
    x = torch.from_numpy(np.ascontiguousarray(subject.x[items]))
    regions = torch.from_numpy(subject.regions[items]) if subject.regions is not None else None
    return saliency(net, x, k, method=method, layer=layer, regions=regions, batch_size=batch_size)


def explain_images(
    images: Sequence[Image],
    model: Any,
    *,
    method: str = "gradcam",
    target: str = "pred",
    layer: str | None = None,
    mask: Image | None = None,
    regions: Image | None = None,
    check: bool = False,
    check_slices: int = CHECK_SLICES,
    seed: int = 0,
    batch_size: int = 16,
    volume: int | None = None,
) -> tuple[Image, dict[str, Any]]:
    """One image or case (a seg model's modality images) → (the saliency map as a float Image on
    the input's grid: one trailing axis per target when there are several; the numbers).

    ``target``: ``pred`` (the predicted class; a segmenter's every predicted foreground class;
    an attacker's top-1 identity) or a class name/index. ``check``: model randomisation and
    faithfulness on the ``check_slices`` slices with the largest target (localisation always
    runs where a mask or a prediction exists). ``regions``: a label image on the input's grid
    (e.g. 0 background, 1 head, 2 tumour): the share of each target's mass on each label."""
    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    subject = subject_for(list(images), model, target=target, mask=mask, volume=volume)
    predictor = subject.predictor
    if method in ("gradcam", "gradcam++") or layer is not None:
        layer = check_layer(predictor.model, layer)
    labels = _region_labels(regions, subject) if regions is not None else None
    records, volumes = [], []
    for k in subject.targets:
        items = subject.rows[k]
        started = time.perf_counter()
        maps = _maps(subject, predictor, k, items, method, layer, batch_size)
        seconds = time.perf_counter() - started
        full = np.zeros(subject.x.shape[:1] + subject.x.shape[-2:], np.float32)
        full[items] = maps
        volumes.append(subject.back(full))
        record: dict[str, Any] = {"target": subject.names[k], "index": int(k), "slices": int(len(items)), "seconds": round(seconds, 3), "seconds_per_slice": round(seconds / max(len(items), 1), 3), "empty": bool(maps.max() <= 0) if maps.size else True}
        if subject.segment and subject.regions is not None:
            predicted = subject.regions[items, k] > 0
            predicted[predicted.reshape(len(items), -1).all(1)] = False  # a slice without the class: no region
            record["localisation_prediction"] = checks_lib.localisation(maps, predicted)
        if subject.mask is not None:
            record["localisation_mask"] = checks_lib.localisation(subject.to_plain(maps), subject.mask[items])
        if labels is not None:
            record["regions"] = checks_lib.region_mass(volumes[-1], labels)
        if check:
            record.update(_checks(subject, predictor, k, items, maps, method, layer, batch_size, check_slices, seed))
        record["flags"] = checks_lib.flags(record)
        record["trusted"] = not record["flags"]
        records.append(record)
    reference = subject.reference
    shape = reference.array.shape[:2] if reference.format in RASTER_FORMATS else subject.back(np.zeros(subject.x.shape[:1] + subject.x.shape[-2:], np.float32)).shape
    array = (volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)) if volumes else np.zeros(shape, np.float32)
    meta: dict[str, Any] = {"targets": [r["target"] for r in records]}
    if reference.format in RASTER_FORMATS:
        saliency_image = Image(array.astype(np.float32), format="png", meta=meta)
    else:
        header = reference.meta.get("header")
        saliency_image = Image(array.astype(np.float32), affine=reference.affine, format="nifti", meta={**meta, **({"header": header} if header is not None else {})})
    result = {"method": method, "layer": layer, "frame": subject.frame, "targets": records, "notes": subject.notes}
    return saliency_image, result


def _region_labels(regions: Image, subject: Subject) -> np.ndarray | None:
    """The label map of ``regions`` on the grid of the maps ``subject.back`` gives (None, noted,
    when the map stays in a cipher frame)."""
    from medtools.core.data import image_volume

    if subject.frame != "input" and subject.frame != "plain":
        subject.notes.append("--regions: the map is in the cipher frame, no region shares")
        return None
    shape = subject.back(np.zeros(subject.x.shape[:1] + subject.x.shape[-2:], np.float32)).shape
    labels = image_volume(regions)
    if len(shape) == 2 and labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[:, :, 0]
    if labels.shape != shape:
        raise InputError(f"the region label map's shape {labels.shape} is not the image's {shape}")
    return labels


def _checks(subject: Subject, predictor: Any, k: int, items: np.ndarray, maps: np.ndarray, method: str, layer: str | None, batch_size: int, limit: int, seed: int) -> dict[str, Any]:
    """Randomisation (cascading) and faithfulness on the ``limit`` items with the largest target."""
    if subject.regions is not None:
        sizes = subject.regions[items, k].reshape(len(items), -1).sum(1)
        sizes = np.where(sizes >= subject.regions.shape[-1] * subject.regions.shape[-2], 0, sizes)
        chosen = np.argsort(-sizes, kind="stable")[:limit]
    else:
        chosen = np.arange(min(limit, len(items)))
    picked, trained = items[chosen], maps[chosen]
    cascade, done = [], []
    for stage in cascade_stages(predictor.model):
        done = done + stage
        twin = reinitialised(predictor, done, seed=seed)
        random_maps = _maps(subject, twin, k, picked, method, layer, batch_size)
        cascade.append({"randomised": ",".join(stage), **checks_lib.similarity(trained, random_maps)})
    region = None
    faithful: dict[str, list[float]] = {}
    for index, item in enumerate(picked):
        if subject.regions is not None:
            region = subject.regions[item, k]
        scores = checks_lib.faithfulness(_probabilities(subject, k, region), subject.x[item : item + 1], trained[index : index + 1], seed=seed)
        for name, value in scores.items():
            faithful.setdefault(name, []).append(value)
    return {
        "check_slices": int(len(picked)),
        "randomisation": cascade,
        "randomisation_ssim": cascade[-1]["ssim"] if cascade else None,
        "randomisation_spearman": cascade[-1]["spearman"] if cascade else None,
        "faithfulness": {name: float(np.mean(values)) for name, values in faithful.items()},
    }


# ---------------------------------------------------------------- files


def overlay(image: Image, saliency_map: np.ndarray, alpha: float = 0.5) -> Image:
    """An 8-bit RGB PNG: the gray image with the map (scaled to its maximum) in a colour map over it."""
    from matplotlib import colormaps

    from medtools.core.data import image_volume

    gray = image_volume(image)[:, :, 0].astype(np.float32)
    low, high = np.percentile(gray, [0.5, 99.5]) if gray.size else (0.0, 1.0)
    gray = np.clip((gray - low) / (high - low if high > low else 1.0), 0, 1)
    top = float(saliency_map.max())
    heat = saliency_map / top if top > 0 else np.zeros_like(saliency_map)
    colour = colormaps["jet"](heat)[..., :3]
    weight = alpha * heat[..., None]
    rgb = (1 - weight) * gray[..., None] + weight * colour
    return Image(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8), format="png")


def map_suffix(method: str) -> str:
    """What a map's file name adds to its input's stem: ``_gradcam``, ``_gradcampp``, ``_occlusion``, ``_ig``."""
    return "_" + method.replace("+", "p")


def map_path(folder: Any, stem: str, method: str, source: Image) -> Any:
    """Where ``medtools explain`` (and ``segment``/``classify --explain``) put the map of an
    input named ``stem`` in ``folder``: ``<stem>_<method>.png`` beside a 2-D picture,
    ``<stem>_<method>.nii.gz`` beside a volume."""
    from pathlib import Path

    raster = source.format in RASTER_FORMATS
    return Path(folder) / f"{stem}{map_suffix(method)}{'.png' if raster else '.nii.gz'}"


def write_map(source: Image, saliency_image: Image, path: Any) -> list[Any]:
    """Write a map at ``path``: the float NIfTI (one volume per target) for a volume; a PNG
    overlay per target for a 2-D picture (``<name>_<target>.png`` when there are several).
    Returns the written paths."""
    from pathlib import Path

    from medtools.core.io import write_image

    path = Path(path)
    if saliency_image.format != "png":
        return [write_image(saliency_image, path, format="nifti")]
    names = saliency_image.meta["targets"]
    maps = saliency_image.array
    layers = [maps] if maps.ndim == 2 else [maps[..., i] for i in range(maps.shape[-1])]
    written = []
    for index, layer_map in enumerate(layers):
        target = path if len(layers) == 1 else path.with_name(path.name.replace(".png", f"_{names[index]}.png"))
        written.append(write_image(overlay(source, layer_map), target, format="png"))
    return written


def explain_files(
    inputs: Sequence[str],
    model: Any,
    output: Any,
    *,
    method: str = "gradcam",
    target: str = "pred",
    layer: str | None = None,
    mask: Any = None,
    regions: Any = None,
    check: bool = False,
    key: bytes | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    shard: str | None = None,
    volume: int | None = None,
    seed: int = 0,
) -> int:
    """``medtools explain``: one map per input file (a volume, a 2-D image; a single-modality
    segmenter, a classifier or an attacker) written beside its mirror under ``output``: a float
    NIfTI (one volume per target) for volumes, a PNG overlay per target for pictures. Paths on
    stdout, or one JSON line per input with the numbers; the exit code of the batch driver.
    ``mask`` / ``regions``: a file for every input, or a folder mirroring the inputs."""
    from pathlib import Path

    from medtools import api
    from medtools.core import batch, report
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, select_shard, skip_existing
    from medtools.core.io import RASTER_EXTS, read_image

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    loaded = api.load_model(Path(model), kind=("seg", "cls", "reid"), key=key, device=device)
    predictor = getattr(loaded, "predictor", loaded)
    if method in ("gradcam", "gradcam++") or layer is not None:
        layer = check_layer(predictor.model, layer)  # a wrong --layer stops here: exit 2
    if len(predictor.modalities) > 1 and not hasattr(loaded, "encryption"):
        raise UsageError(f"this model reads {len(predictor.modalities)} modalities ({', '.join(predictor.modalities)}): explain files one modality at a time only; call medtools.api.explain with the case's images")
    output = Path(output)
    items = select_shard(expand_inputs(inputs, output=output), shard)
    check_output_arg(output, len(items))
    suffix = map_suffix(method)

    def targets_of(item: Any) -> Path:
        raster = item.path.name.lower().endswith(RASTER_EXTS)
        return output_for(item, output, ext=".png" if raster else ".nii.gz", suffix=suffix)

    def label_for(item: Any, where: Any, what: str) -> Image | None:
        if where is None:
            return None
        where = Path(where)
        if where.is_dir():
            candidate = where / item.rel
            if not candidate.exists():
                raise InputError(f"no {what} {candidate} for {item.path}")
            return read_image(candidate)
        return read_image(where)

    def work(item: Any) -> Any:
        target_path = targets_of(item)
        if skip_existing(target_path, overwrite):
            return batch.SKIPPED
        image = read_image(item.path)
        saliency_image, result = api.explain([image], loaded, method=method, target=target, layer=layer, mask=label_for(item, mask, "mask"), regions=label_for(item, regions, "region map"), check=check, seed=seed, batch_size=batch_size or 16, volume=volume)
        written = write_map(image, saliency_image, target_path)
        for record in result["targets"]:
            for flag in record["flags"]:
                report.warn(f"{item.path}: target {record['target']}: {flag}")
        return {"path": str(item.path), "outputs": [str(p) for p in written], **result}

    return batch.run_items(items, work, emit=batch.emitter(), total=len(items), description="explain").exit_code


def read_key(path: Any) -> bytes | None:
    """--key FILE → the key bytes (None without one)."""
    from medtools.imagecipher.keyfile import read_key_file

    return read_key_file(path) if path is not None else None
