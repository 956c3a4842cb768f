"""Tumor segmentation: train an smp U-Net on 2-D slices, segment volumes back in their geometry.

Training: Dice + cross-entropy, random flips and intensity jitter, patient-wise validation
split with per-epoch Dice (and BraTS WT/TC/ET when the labels are BraTS-style), on the
shared loop (core.train.fit). Training records its geometry (the cases' most common
orientation, their median spacing, the slicing axis) in ``medtools.norm`` and maps every case
into it. Inference maps each volume into that geometry (reorient, in-plane resampling), batches
slices of several volumes together, resizes them to the training size, and maps the
probabilities back (training size, spacing, orientation) before the argmax, so the label map
has the input's exact shape and affine whatever the input's storage order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.cases import SINGLE, Case, LoadedCase, load_case
from medtools.brain.metrics import BRATS_REGIONS, dice, is_brats
from medtools.brain.models import BRATS_LABEL_MAP
from medtools.core import ckpt, report
from medtools.core.data import build_slice_set, data_ids, data_provenance, dataset_geometry, image_volume, map_labels, split_by_patient
from medtools.core.errors import InputError, UsageError
from medtools.core.inputs import skip_existing
from medtools.core.io import RASTER_EXTS, RASTER_FORMATS, Image, write_image
from medtools.core.predict import Predictor
from medtools.core.preprocess import DEFAULT_NORM, model_grid, slices_to_volume, stack_context, volumes_to_slices
from medtools.core.manifest import MODALITIES, load_rows
from medtools.core.train import TrainOptions, fit, initial_weights, train_options

TRAIN_DEFAULTS = TrainOptions(epochs=20, batch_size=16, lr=1e-3)  # seg-train's


def common_modalities(rows: Sequence[dict[str, str]]) -> list[str]:
    """Modalities present in every row, in the canonical order."""
    present = [m for m in MODALITIES if all(r.get(m) for r in rows)]
    if not present and all(r.get(SINGLE) for r in rows):
        return [SINGLE]  # 2-D image/mask pairs
    if not present:
        raise InputError("no modality is present in every case; pass --modalities")
    return present


def label_scheme(values: set[int], binary: bool) -> tuple[dict[int, int], list[int]]:
    """(raw label → class index, class index → raw label written by segment)."""
    if binary:
        mapping = {v: int(v > 0) for v in values | {0}}
        foreground = sorted(values - {0})
        return mapping, [0, foreground[0] if len(foreground) == 1 else 1]  # a 0/255 mask is written back as 0/255
    if values <= {0, 1}:
        return {0: 0, 1: 1}, [0, 1]
    if is_brats(values):
        return dict(BRATS_LABEL_MAP), [0, 1, 2, 4]
    ordered = sorted(values | {0})
    return {v: i for i, v in enumerate(ordered)}, ordered


def _size_arg(size: int, resize: Sequence[int] | None) -> int | list[int]:
    """The stored ``image_size``: ``size`` (square) or ``--resize H W``."""
    if resize:
        if len(resize) != 2 or min(resize) < 16:
            raise UsageError(f"--resize takes two sizes H W of at least 16, got {list(resize)}")
        return [int(resize[0]), int(resize[1])]
    return int(size)


def _case_dice(pred: np.ndarray, truth: np.ndarray, case_index: np.ndarray, classes: int) -> float:
    """Mean over validation cases of the case's mean Dice over foreground classes (3-D, per case)."""
    scores = []
    for case in np.unique(case_index):
        rows = case_index == case
        scores.append(np.mean([dice(pred[rows] == c, truth[rows] == c) for c in range(1, classes)]))
    return float(np.mean(scores)) if scores else 0.0


def check_input_sizes(model: Any, sizes: Sequence[tuple[int, int]], channels: int, arch: str) -> None:
    """UsageError before any training when the architecture cannot take an input size (smp's
    FPN, for one, needs sides divisible by 32): one forward pass of zeros per size."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for height, width in sizes:
                try:
                    model(torch.zeros(1, channels, height, width))
                except RuntimeError as exc:
                    reason = " ".join(str(exc).split())[:200]
                    raise UsageError(f"--arch {arch} cannot take {height}x{width} inputs ({reason}); pick --size/--resize/--patch sides divisible by 32") from None
    finally:
        model.train(was_training)


def train_segmenter(
    data: Path | str | Sequence[Path | str],
    output: Path,
    *,
    options: TrainOptions | None = None,
    modalities: Sequence[str] | None = None,
    binary: bool = False,
    arch: str = "unet",
    encoder: str = "resnet34",
    size: int = 128,
    resize: Sequence[int] | None = None,
    val_fraction: float = 0.2,
    val_patients: Sequence[str] | None = None,
    context: int = 0,
    patch: int | None = None,
    foreground_share: float = 1 / 3,
    augment: str | None = None,
    schedule: str | None = "poly",
    keep_best: bool = True,
    strip_background: bool = False,
    equalize: str | None = None,
    adv_train: float = 0.0,
    adv_eps: float | None = None,
    adv_steps: int | None = None,
    normalization: str = "batch",
    loop: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a segmenter on 2-D slices of volumes or on 2-D image/mask pairs (see docs/brain.md).

    ``options`` (or single shared settings such as ``epochs=3``) are the shared training
    settings (``core.train.TrainOptions``; defaults ``TRAIN_DEFAULTS``).

    Recipe: foreground oversampling (``foreground_share`` of each batch from slices with the
    target), random ``patch`` crops (foreground-centred for those), ``context`` K neighbouring
    slices per side as channels, on-the-fly augmentation (``augment``, core.augment), a
    ``schedule`` (poly/cosine) and, with a validation split, the best epoch by the per-case
    validation Dice kept as ``output`` (the last one beside it, ``*.last.safetensors``).

    ``normalization`` "group" builds the network with GroupNorm instead of BatchNorm (DP-SGD
    needs per-sample gradients). ``loop`` replaces ``core.train.fit`` with a loop of the same
    signature (federated training runs fit once per round there, ``medtools.fl``).
    """
    from medtools.core.augment import augment_batch, crop_batch, parse_augment
    from medtools.core.data import ForegroundBatchSampler
    from medtools.core.preprocess import with_preprocessing
    from medtools.core.train import RandomStreams

    options = train_options(options, TRAIN_DEFAULTS, **settings)
    seed, batch_size = options.seed, options.batch_size
    rows = [r for r in load_rows(data) if r.get("label")]
    if not rows:
        raise InputError(f"no labelled cases in {data}")
    modalities = list(modalities) if modalities else common_modalities(rows)
    if context < 0:
        raise UsageError("--context must be ≥ 0")
    aug = parse_augment(augment)
    image_size = _size_arg(size, resize)
    norm = with_preprocessing(DEFAULT_NORM, strip_background=strip_background, equalize=equalize)
    if val_patients:
        held = set(val_patients)
        unknown = held - {r["patient"] for r in rows}
        if unknown:
            raise InputError(f"--val-patients {', '.join(sorted(unknown))} not in the data")
        train_rows, val_rows = [r for r in rows if r["patient"] not in held], [r for r in rows if r["patient"] in held]
    else:
        train_rows, val_rows = split_by_patient(rows, val_fraction, seed)
    if not train_rows:
        raise InputError("no training cases left after the validation split")
    report.log(f"seg-train: {len(train_rows)} training cases, {len(val_rows)} validation cases ({len({r['patient'] for r in val_rows})} patients), modalities {','.join(modalities)}")
    geometry = dataset_geometry(train_rows, modalities[0])  # orientation, spacing, slicing axis: every case is mapped into it
    if geometry is not None:
        from medtools.core.io.geometry import describe

        norm = {**norm, "geometry": geometry}
        report.log(f"seg-train: training geometry {describe(geometry)}")
    load = dict(modalities=modalities, size=image_size, need_label=True, norm=norm, context=context)
    train_set = build_slice_set(train_rows, **load)
    val_set = build_slice_set(val_rows, **load) if val_rows else None
    values = set(np.unique(train_set.labels).tolist())
    if val_set is not None:
        values |= set(np.unique(val_set.labels).tolist())
    mapping, label_values = label_scheme(values, binary)
    train_set.labels = map_labels(train_set.labels, mapping)
    if val_set is not None:
        val_set.labels = map_labels(val_set.labels, mapping)
    classes = len(label_values)
    config = {
        "arch": arch,
        "encoder": encoder,
        "in_channels": len(modalities) * (2 * context + 1),
        "classes": classes,
        "modalities": modalities,
        "image_size": image_size,
        "label_values": label_values,
        **({"context": context} if context else {}),
        **({"normalization": normalization} if normalization != "batch" else {}),
    }
    with initial_weights(seed):
        model = ckpt.new_model("seg", config)
    sizes = {tuple(int(v) for v in train_set.images.shape[-2:])} | ({(patch, patch)} if patch else set())
    check_input_sizes(model, sorted(sizes), config["in_channels"], arch)
    foreground = train_set.labels.reshape(len(train_set), -1).max(axis=1) > 0
    sampler = ForegroundBatchSampler(foreground, batch_size, share=foreground_share, batches=options.steps_per_epoch, seed=seed)
    streams = RandomStreams(seed)  # crops and augmentation: their own stream, reseeded by fit each epoch

    def make_batch(batch: Any) -> tuple[Any, Any]:
        """The training batch as the network sees it: crops (the sampler's foreground items,
        last in the batch, centred on the target), then augmentation. Extra batch transforms
        (e.g. adversarial examples) go after this call in ``step``."""
        images, labels = batch
        images, labels = crop_batch(images, labels, patch, n_foreground=sampler.n_foreground, generator=streams.torch("crop"))
        return augment_batch(images, labels, aug, generator=streams.torch("augment"))

    from medtools.brain.robust import adv_settings, adversarial_batch, seg_loss

    adv = adv_settings(adv_train, adv_eps, adv_steps)  # --adv-train: PGD examples for that share of each batch

    def step(net: Any, batch: Any) -> Any:
        images, labels = make_batch(batch)
        if adv:
            images = adversarial_batch(net, images, labels, **adv, generator=streams.torch("adversarial"))
        return seg_loss(net(images), labels)

    def validate(net: Any) -> dict[str, float]:
        if val_set is None:
            return {}
        pred = Predictor.from_model(net, kind="seg", config=config, norm=norm, batch_size=batch_size * 2).predict(val_set.images).argmax(1)
        raw_pred, raw_true = np.asarray(label_values)[pred], np.asarray(label_values)[val_set.labels]
        metrics = {f"val_dice_{label_values[c]}": dice(pred == c, val_set.labels == c) for c in range(1, classes)}
        metrics["val_dice_fg"] = dice(pred > 0, val_set.labels > 0)
        if is_brats(label_values):
            for name, members in BRATS_REGIONS.items():
                metrics[f"val_{name}"] = dice(np.isin(raw_pred, members), np.isin(raw_true, members))
        metrics["val_dice_mean"] = _case_dice(pred, val_set.labels, val_set.case_index, classes)
        return metrics

    recipe = {**({"adv_train": adv} if adv else {}), "context": context, "patch": patch, "foreground_share": foreground_share, "augment": aug.as_dict(), "schedule": schedule, "keep_best": keep_best and val_set is not None}
    spec = options.spec(
        output=output,
        kind="seg",
        config=config,
        norm=norm,
        provenance={**data_provenance(rows, train_rows, val_rows), **options.id_provenance(**data_ids(train_rows, val_rows)), "label_map": {str(k): v for k, v in mapping.items()}, "recipe": recipe},
        monitor="val_dice_mean",
        keep_best=keep_best and val_set is not None,
        schedule=schedule,
    )
    result = (loop or fit)(model, train_set.torch_dataset("labels"), step, spec, validate=validate, batch_sampler=sampler, streams=streams)
    result.update({"train_slices": len(train_set), "val_slices": 0 if val_set is None else len(val_set), "classes": classes, "label_values": label_values, "modalities": modalities, "recipe": recipe})
    return result


def load_segmenter(path: Path | str, *, device: str | None = None, precision: str | None = None, compile: bool = False, batch_size: int = 32) -> Predictor:
    """A ``seg`` checkpoint as a Predictor (loaded once; reuse it for every case)."""
    return Predictor(path, kind="seg", device=device, precision=precision, compile=compile, batch_size=batch_size)


TTA_FLIPS = ((), (-1,), (-2,), (-2, -1))  # identity, mirror x (width), mirror y (height), both


def model_input(predictor: Predictor, slices: np.ndarray) -> np.ndarray:
    """One case's (Z, C, H, W) slices → the model's channels (2.5-D context stacked when the
    checkpoint was trained with ``--context``)."""
    return stack_context(slices, int(predictor.config.get("context", 0)))


def predict_probs(predictor: Predictor, x: np.ndarray, *, tta: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Softmax (N, classes, H, W) of model inputs ``x``; ``tta``: the mean over the mirrored
    copies (``TTA_FLIPS``), each prediction flipped back."""
    if not tta:
        return predictor.predict(x, softmax=True, batch_size=batch_size)
    total = None
    for dims in TTA_FLIPS:
        flipped = np.ascontiguousarray(np.flip(x, dims)) if dims else x
        probs = predictor.predict(flipped, softmax=True, batch_size=batch_size)
        probs = np.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    return (total / len(TTA_FLIPS)).astype(np.float32)


def largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected foreground component (labels > 0, face-connected in 3-D);
    every other foreground voxel becomes background."""
    from medtools.core.preprocess import largest_component_mask

    return np.where(largest_component_mask(labels > 0), labels, 0).astype(labels.dtype)


def probability_volume(probs: np.ndarray, grid: Any = None) -> np.ndarray:
    """(Z, classes, H, W) slice probabilities → (x, y, z, classes) float32 on the input's grid
    (``grid``: mapped back from the training geometry, linear in-plane, exact reorientation)."""
    volume = np.moveaxis(np.moveaxis(probs, 1, -1), 0, 2).astype(np.float32)  # (H, W, Z, classes) = (x, y, z, c)
    return grid.from_model(volume) if grid is not None else volume


def label_volume(predictor: Predictor, probs: np.ndarray, *, keep_largest: bool = False, grid: Any = None) -> np.ndarray:
    """(Z, classes, H, W) probabilities → raw label volume (x, y, z) uint8 (the training labels'
    values) on the input's grid: with a ``grid`` the probabilities are mapped back (linear)
    before the argmax."""
    values = np.asarray(predictor.config["label_values"])
    if grid is not None:
        labels = values[probability_volume(probs, grid).argmax(-1)].astype(np.uint8)
    else:
        labels = slices_to_volume(values[probs.argmax(1)].astype(np.uint8))
    return largest_component(labels) if keep_largest else labels


def note_geometry(predictor: Predictor) -> None:
    """Say once per run that a checkpoint records no training geometry (slices as stored)."""
    if not predictor.norm.get("geometry"):
        report.log(f"{Path(str(predictor.path)).name if predictor.path else 'the model'}: no training geometry recorded (a checkpoint from before it): volumes are sliced along their last array axis as stored, without reorienting or resampling")


def segment_images(images: Sequence[Image], predictor: Predictor, *, batch_size: int | None = None, tta: bool = False, keep_largest: bool = False, resample: bool = True, volume: int | None = None) -> Image:
    """In-memory entry point: the modality images of one case (in ``predictor.modalities``
    order) → the label image in the first image's geometry (NIfTI header/affine kept).

    Volumes are mapped into the checkpoint's training geometry (orientation, in-plane spacing
    unless ``resample`` is False) and the labels back onto the input's grid; ``volume`` picks
    one volume of a 4-D series."""
    if len(images) != max(len(predictor.modalities), 1):
        raise InputError(f"the model expects {len(predictor.modalities)} modalities ({', '.join(predictor.modalities)}), got {len(images)} images")
    volumes = [image_volume(image, volume=volume) for image in images]  # a colour picture → one gray slice
    if any(v.shape != volumes[0].shape for v in volumes):
        raise InputError(f"modality shapes differ: {', '.join(str(v.shape) for v in volumes)}")
    grid = model_grid(images[0], volumes[0].shape, predictor.norm, resample=resample)
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, _ = volumes_to_slices(volumes, predictor.norm)
    probs = predict_probs(predictor, model_input(predictor, slices), tta=tta, batch_size=batch_size)
    return _label_image(images[0], label_volume(predictor, probs, keep_largest=keep_largest, grid=grid))


def _label_image(reference: Image, labels: np.ndarray) -> Image:
    if reference.format in RASTER_FORMATS:  # a picture gives a picture of the labels
        return Image(labels[:, :, 0], format="png")
    if reference.array.ndim == 2:  # a 2-D input gives a 2-D label image
        labels = labels[:, :, 0]
    header = reference.meta.get("header")
    return Image(labels, affine=reference.affine, format="nifti", meta={"header": header} if header is not None else {})


def output_ext(case: Case, out_format: str = "nifti") -> str:
    """``.dcm`` (DICOM SEG), ``.png`` for picture inputs (PNG/JPEG/TIFF), else ``.nii.gz``."""
    if out_format == "dicom-seg":
        return ".dcm"
    first = next(iter(case.files.values()))
    return ".png" if first.name.lower().endswith(RASTER_EXTS) else ".nii.gz"


def segmentation_target(case: Case, output: Path, suffix: str = "_seg", out_format: str = "nifti") -> Path:
    """Where ``segment`` writes a case's label map (mirrors the case folder under ``output``)."""
    return output / case.rel_dir / f"{case.case}{suffix}{output_ext(case, out_format)}"


def prefetch(cases: Sequence[Case], loader, workers: int) -> Iterator[tuple[Case, Any]]:
    """Yield (case, loader(case) or the exception) in order, loading ahead in threads that run in
    the caller's run context (NaN policy, ...): core.batch.prefetch."""
    from medtools.core.batch import prefetch as ordered_prefetch

    return ordered_prefetch(cases, loader, workers)


def segment_cases(
    cases: Sequence[Case],
    model_path: Path,
    output: Path,
    *,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
    batch_size: int = 32,
    workers: int = 2,
    probabilities: bool = False,
    overwrite: bool = False,
    suffix: str = "_seg",
    out_format: str = "nifti",
    tta: bool = False,
    keep_largest: bool = False,
    resample: bool = True,
    volume: int | None = None,
    side: Any = None,
):
    """Segment cases; yields (case, written paths or 'skipped' or an exception) in input order.

    ``tta``: mean of the mirrored predictions (:func:`predict_probs`); ``keep_largest``: only
    the largest connected foreground component is kept (:func:`largest_component`).
    Each case is mapped into the checkpoint's training geometry (reoriented; resampled
    in-plane to its spacing unless ``resample`` is False) and its outputs back onto the
    input's grid. ``volume``: which volume of 4-D series (without it a 4-D series is an item
    error naming its shape).

    Slices of consecutive cases are gathered until a batch is full so small volumes still
    fill the device.

    ``side(case, images, segmenter)`` → (paths, numbers), when given, runs after a case's outputs
    are written, with the same loaded model (``segment --explain``); the case then yields
    ``{"case", "outputs", **numbers}``.
    """
    if out_format not in ("nifti", "dicom-seg"):
        raise UsageError("--format must be nifti or dicom-seg")
    segmenter = load_segmenter(model_path, device=device, precision=precision, compile=compile, batch_size=batch_size)
    note_geometry(segmenter)
    targets = {case.case: segmentation_target(case, output, suffix, out_format) for case in cases}
    todo = [c for c in cases if not skip_existing(targets[c.case], overwrite)]
    for case in cases:
        if case not in todo:
            yield case, "skipped"
    group: list[LoadedCase] = []

    def flush() -> Iterator[tuple[Case, Any]]:
        if not group:
            return
        slices = np.concatenate([model_input(segmenter, g.slices) for g in group])
        probs = predict_probs(segmenter, slices, tta=tta)
        start = 0
        for loaded in group:
            n = len(loaded.slices)
            case_probs = probs[start : start + n]
            start += n
            try:
                written = _write_outputs(loaded, case_probs, segmenter, targets[loaded.case.case], probabilities, out_format, keep_largest)
                if side is not None:
                    extra, numbers = side(loaded.case, loaded.images, segmenter)
                    written = {"case": loaded.case.case, "outputs": [str(p) for p in [*written, *extra]], **numbers}
                yield loaded.case, written
            except Exception as exc:  # reported per item by the caller
                yield loaded.case, exc
        group.clear()

    for case, loaded in prefetch(todo, lambda c: load_case(c, segmenter.modalities or [SINGLE], segmenter.norm, geometry=True, resample=resample, volume=volume), workers):
        if isinstance(loaded, Exception):
            yield case, loaded
            continue
        if group and loaded.slices.shape[-2:] != group[0].slices.shape[-2:]:
            yield from flush()  # one batch holds slices of one size
        group.append(loaded)
        if sum(len(g.slices) for g in group) >= batch_size:
            yield from flush()
    yield from flush()


def _write_outputs(loaded: LoadedCase, probs: np.ndarray, segmenter: Predictor, target: Path, probabilities: bool, out_format: str, keep_largest: bool = False) -> list[Path]:
    reference = loaded.images[0]
    labels = label_volume(segmenter, probs, keep_largest=keep_largest, grid=loaded.grid)
    written = []
    if out_format == "dicom-seg":
        from medtools.brain.dicomseg import write_dicom_seg

        written.append(write_dicom_seg(loaded, labels if reference.array.ndim == 3 else labels[:, :, 0], target))
    else:
        label_image = _label_image(reference, labels)
        written.append(write_image(label_image, target, format=label_image.format))
    if probabilities:
        volume = probability_volume(probs, loaded.grid)  # (x, y, z, classes) on the input's grid
        prob_path = target.with_name(target.name.replace(".nii.gz", "_prob.nii.gz").replace(".dcm", "_prob.nii.gz").replace(".png", "_prob.nii.gz"))
        written.append(write_image(Image(volume, affine=reference.affine, format="nifti"), prob_path, format="nifti"))
    return written
