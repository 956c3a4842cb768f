"""`protect` driver: load each case once, run PGD over its slices in batches, write the protected
volumes with the input's format, dtype and geometry, and report what the noise costs and buys.

The models see each case as they were trained (the one geometry step, ``core.preprocess.model_grid``):
reoriented to the training orientation and resampled in-plane to its spacing. The noise is
computed there and mapped back onto the input's exact grid (exact reorientation; linear in-plane
only where the input was resampled) and added to the input's own voxels, so the protected file
has the input's shape, dtype, affine and header, and its voxels differ from the input's only by
the (rounded, clipped) noise. Attackers and utility model must share one recorded geometry."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.cases import SINGLE, Case, LoadedCase, load_case
from medtools.brain.minmin import MINMIN_OBJECTIVES
from medtools.brain.pgd import OBJECTIVES, case_decoy, default_step_size, image_quality, load_attackers, pgd_delta, quantise_delta, quantisation_steps, signature_pattern
from medtools.brain.defences import with_defences
from medtools.brain.segment import note_geometry, prefetch
from medtools.core.predict import Predictor
from medtools.core.device import resolve_device, seed_everything
from medtools.core.errors import UsageError
from medtools.core.inputs import skip_existing
from medtools.core.io import Image, write_image
from medtools.core.io.geometry import describe


def _union(lists: Sequence[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for items in lists:
        for item in items:
            if item not in out:
                out.append(item)
    return out


@dataclass
class ProtectModels:
    """Attackers and utility model loaded once, with the channel layout they share."""

    attackers: list[Predictor]
    utility: Predictor | None
    modalities: list[str]
    attacker_channels: list[list[int]]
    utility_channels: list[int] | None
    norm: dict[str, Any]
    device: Any


def _intensity(norm: dict[str, Any]) -> dict[str, Any]:
    """A norm without its geometry: what two models must share to read the same intensities."""
    return {k: v for k, v in norm.items() if k != "geometry"}


def load_protect_models(attackers: Sequence[Path | str | Predictor], utility: Path | str | Predictor | None = None, *, device: Any = None) -> ProtectModels:
    """The attacker checkpoints (``reid``/``cls``) and the optional ``seg`` utility model, loaded
    once (paths), or Predictors already loaded (``serve``: they must sit on one device)."""
    if not attackers:
        raise UsageError("protect needs at least one --attacker checkpoint")
    given = [a for a in [*attackers, utility] if isinstance(a, Predictor)]
    dev = given[0].device if given else device if hasattr(device, "type") else resolve_device(device)
    loaded = [with_defences(a) if isinstance(a, Predictor) else load_attackers([Path(a)], dev)[0] for a in attackers]  # a defended attacker sees its defences
    seg = utility if isinstance(utility, Predictor) or utility is None else Predictor(utility, kind="seg", device=dev, precision="fp32")
    if seg is not None and int(seg.config.get("context", 0)):
        raise UsageError("protect --utility: this segmenter was trained with --context (2.5-D neighbouring slices as channels), which protect's per-slice utility term does not feed yet; use a segmenter trained without --context")
    modalities = _union([a.modalities for a in loaded] + ([seg.modalities] if seg else [])) or [SINGLE]
    channel_of = {m: i for i, m in enumerate(modalities)}
    # every model reads the same intensities: the one normalisation the checkpoints recorded
    models = [*loaded, *([seg] if seg else [])]
    norms = {str(_intensity(m.norm)) for m in models}
    if len(norms) > 1:
        raise UsageError(f"the attackers and the utility model were trained with different normalisations ({'; '.join(sorted(norms))}); protect needs one")
    # and the same slices: the one training geometry those that record one share (see module docstring)
    geometries = {json.dumps(m.norm["geometry"], sort_keys=True): m.norm["geometry"] for m in models if m.norm.get("geometry")}
    if len(geometries) > 1:
        raise UsageError(f"the attackers and the utility model were trained in different geometries ({'; '.join(describe(g) for g in geometries.values())}); protect needs one: retrain on one set of scans")
    for model in models:
        if not model.norm.get("geometry"):
            note_geometry(model)
    norm = {**_intensity((seg or loaded[0]).norm), **({"geometry": next(iter(geometries.values()))} if geometries else {})}
    return ProtectModels(
        attackers=loaded,
        utility=seg,
        modalities=modalities,
        attacker_channels=[[channel_of[m] for m in (a.modalities or modalities)] for a in loaded],
        utility_channels=[channel_of[m] for m in seg.modalities] if seg else None,
        norm=norm,
        device=dev,
    )


@dataclass
class ProtectOptions:
    """The PGD knobs of ``protect`` (see ``brain/pgd.py`` for their meaning)."""

    eps: float = 0.05
    steps: int = 10
    step_size: float | None = None
    objective: str = "untargeted"
    utility_weight: float = 1.0
    random_start: bool = True
    diversity: bool = True
    mask_background: bool = True
    batch_size: int = 32
    signature_share: float = 0.9
    rounds: int = 5

    def check(self) -> "ProtectOptions":
        if not 0 < self.eps <= 1:
            raise UsageError("--eps must be in (0, 1] (a fraction of the normalised intensity range)")
        if not 0 <= self.signature_share < 1:
            raise UsageError("--signature-share must be in [0, 1)")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if self.rounds < 1:
            raise UsageError("--rounds must be at least 1")
        if self.step_size is None:
            self.step_size = default_step_size(self.eps, self.steps)
        return self


def _background(slices: np.ndarray) -> np.ndarray:
    """(Z, 1, H, W): voxels at or below 0 in every channel (air, the volume minimum)."""
    return np.stack([slices[:, c] <= 0 for c in range(slices.shape[1])], 1).all(1, keepdims=True)


def release_deltas(loaded: Sequence[LoadedCase], models: ProtectModels, options: ProtectOptions, *, key: bytes) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``minmin``/``minminmax``: the noise of every case of one release, computed jointly
    (brain/minmin.py) → (one (Z, C, H, W) delta per case, release info for the results)."""
    from medtools.brain.minmin import release_noise, release_seed

    shapes = {item.slices.shape[1:] for item in loaded}
    if len(shapes) > 1:
        raise UsageError(f"--objective {options.objective} needs the release's images at one size (found {', '.join(map(str, sorted(shapes)))}): resize first or protect each size in its own run")
    slices = np.concatenate([item.slices for item in loaded])
    labels = [item.case.patient or item.case.case for item in loaded for _ in range(len(item.slices))]
    quant = np.concatenate([np.repeat(quantisation_steps(item)[None], len(item.slices), 0) for item in loaded])
    mask = ~np.concatenate([_background(item.slices) for item in loaded]) if options.mask_background else None
    seed = release_seed(key, [item.case.case for item in loaded])
    delta, info = release_noise(
        slices, labels, template=models.attackers[0], channels=models.attacker_channels[0], eps=options.eps, steps=options.steps,
        step_size=options.step_size, rounds=options.rounds, robust=options.objective == "minminmax",
        utility=(models.utility, models.utility_channels) if models.utility is not None else None, utility_weight=options.utility_weight,
        quant=quant, mask=mask, batch_size=options.batch_size, seed=seed,
    )
    bounds = np.cumsum([0] + [len(item.slices) for item in loaded])
    return [delta[a:b] for a, b in zip(bounds[:-1], bounds[1:])], {**info, "release_cases": len(loaded), "release_patients": len(set(labels))}


def protect_loaded(loaded: LoadedCase, models: ProtectModels, options: ProtectOptions, *, key: bytes, generator: Any, delta: np.ndarray | None = None) -> tuple[list[Image], dict[str, Any]]:
    """One case in model space → (protected images in the input's dtype and geometry, metrics).
    ``delta`` (Z, C, H, W): noise computed elsewhere (``release_deltas``), only written here."""
    import torch

    case, dev, eps = loaded.case, models.device, options.eps
    for image in loaded.images:
        if image.format == "jpeg":
            raise UsageError("JPEG is lossy: protected noise would not survive; convert to PNG first")
    attackers = models.attackers
    identity = [a.class_names.index(case.patient) if case.patient in a.class_names else None for a in attackers]
    slices = loaded.slices
    if delta is not None:
        return _finish(loaded, models, options, identity, delta)
    if options.objective in MINMIN_OBJECTIVES:
        raise UsageError(f"--objective {options.objective} is computed for a whole release (protect_cases), not for one case")
    quant = torch.from_numpy(quantisation_steps(loaded)).view(1, -1, 1, 1).to(dev)
    decoys, base = None, None
    if options.objective == "signature":
        lead = attackers[0]
        decoy = case_decoy(key, case.case, identity[0], len(lead.class_names))
        decoy_name = lead.class_names[decoy]
        decoys = [a.class_names.index(decoy_name) if decoy_name in a.class_names else None for a in attackers]
        base = torch.from_numpy(signature_pattern(key, case.case, slices.shape[1], *slices.shape[-2:], options.signature_share * eps)).to(dev)
    background = _background(slices) if options.mask_background else None
    deltas = []
    for start in range(0, len(slices), options.batch_size):
        x = torch.from_numpy(slices[start : start + options.batch_size]).to(dev)
        mask = None if background is None else torch.from_numpy(~background[start : start + options.batch_size]).to(dev).float()
        delta = pgd_delta(
            x,
            list(zip(attackers, models.attacker_channels)),
            eps=eps,
            steps=options.steps,
            step_size=options.step_size,
            objective=options.objective,
            identity=identity,
            utility=(models.utility, models.utility_channels) if models.utility is not None else None,
            utility_weight=options.utility_weight,
            random_start=options.random_start,
            quant=quant,
            diversity=options.diversity,
            mask=mask,
            generator=generator,
            decoys=decoys,
            base=None if base is None else base.expand_as(x) * (mask if mask is not None else 1.0),
        )
        deltas.append(delta.cpu().numpy())
    return _finish(loaded, models, options, identity, np.concatenate(deltas))


def _finish(loaded: LoadedCase, models: ProtectModels, options: ProtectOptions, identity: list[int | None], delta: np.ndarray) -> tuple[list[Image], dict[str, Any]]:
    """Round and clip the noise into the output's dtype, then measure what it costs and buys."""
    slices, eps = loaded.slices, options.eps
    protected_images, real_delta = quantise_delta(loaded, delta, eps)
    protected_slices = slices + real_delta
    result = {"case": loaded.case.case, "patient": loaded.case.patient, "eps": eps, **image_quality(slices, protected_slices)}
    result.update(_whitebox(models.attackers, models.attacker_channels, identity, slices, protected_slices, models.device, options.batch_size))
    return protected_images, result


def protect_images(images: Sequence[Image], models: ProtectModels, *, case_id: str = "case", patient: str = "", key: bytes | None = None, seed: int = 0, **options: Any) -> tuple[list[Image], dict[str, Any]]:
    """In-memory entry point: the modality images of one case (``models.modalities`` order) →
    protected images and the metrics ``protect`` reports. ``options`` are ProtectOptions fields."""
    import torch

    from medtools.core.io import as_volume
    from medtools.core.preprocess import volumes_to_slices

    if len(images) != len(models.modalities):
        raise UsageError(f"the models read {len(models.modalities)} modalities ({', '.join(models.modalities)}), got {len(images)} images")
    from medtools.core.data import image_volume

    from medtools.core.preprocess import model_grid

    # a 4-D series is an input error naming its shape (image_volume), not a traceback
    volumes = [image_volume(i) if i.array.ndim > 3 else as_volume(i) for i in images]
    if any(v.shape != volumes[0].shape for v in volumes):
        raise UsageError(f"modality shapes differ: {', '.join(str(v.shape) for v in volumes)}")
    grid = model_grid(images[0], volumes[0].shape, models.norm)  # into the training geometry, when the models record one
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, windows = volumes_to_slices(volumes, models.norm)
    case = Case(case=case_id, patient=patient, visit="", files={}, label=None, rel_dir=Path("."))
    loaded = LoadedCase(case, list(images), windows, slices, None, grid)
    return protect_loaded(loaded, models, ProtectOptions(**options).check(), key=key if key is not None else os.urandom(32), generator=torch.Generator().manual_seed(seed))


def protect_cases(
    cases: Sequence[Case],
    output: Path,
    *,
    attackers: Sequence[Path],
    utility: Path | None = None,
    eps: float = 0.05,
    steps: int = 10,
    step_size: float | None = None,
    objective: str = "untargeted",
    utility_weight: float = 1.0,
    random_start: bool = True,
    diversity: bool = True,
    mask_background: bool = True,
    batch_size: int = 32,
    workers: int = 1,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    signature_share: float = 0.9,
    key: bytes | None = None,
    rounds: int = 5,
) -> Iterator[tuple[Case, Any]]:
    """Yields (case, result dict | 'skipped' | exception) per case, in order."""
    import torch

    options = ProtectOptions(
        eps=eps, steps=steps, step_size=step_size, objective=objective, utility_weight=utility_weight, random_start=random_start,
        diversity=diversity, mask_background=mask_background, batch_size=batch_size, signature_share=signature_share,
        rounds=rounds,
    ).check()
    key = key if key is not None else os.urandom(32)
    seed_everything(seed)
    models = load_protect_models(attackers, utility, device=device)
    modalities = models.modalities

    def targets_of(case: Case) -> dict[str, Path]:
        return {m: output / case.rel_dir / path.name for m, path in zip(modalities, case.files_for(modalities))}

    todo = []
    for case in cases:
        try:
            targets = targets_of(case)
        except Exception as exc:
            yield case, exc
            continue
        if skip_existing(targets.values(), overwrite):
            yield case, "skipped"
        else:
            todo.append(case)

    generator = torch.Generator().manual_seed(seed)
    if options.objective in MINMIN_OBJECTIVES:
        yield from _protect_release(todo, models, options, key=key, generator=generator, targets_of=targets_of, workers=workers)
        return
    for case, loaded in prefetch(todo, lambda c: load_case(c, modalities, models.norm, geometry=True), workers):
        yield case, loaded if isinstance(loaded, Exception) else _protect_and_write(case, loaded, models, options, key=key, generator=generator, targets_of=targets_of)


def _protect_and_write(case: Case, loaded: LoadedCase, models: ProtectModels, options: ProtectOptions, *, key: bytes, generator: Any, targets_of, delta: np.ndarray | None = None, extra: dict[str, Any] | None = None) -> Any:
    """One case protected (or its ``delta`` applied) and written → its result dict, or the exception."""
    try:
        protected_images, result = protect_loaded(loaded, models, options, key=key, generator=generator, delta=delta)
        written = [write_image(image, target) for image, target in zip(protected_images, targets_of(case).values())]
        return {**result, **(extra or {}), "outputs": [str(w) for w in written]}
    except Exception as exc:
        return exc


def _protect_release(todo: Sequence[Case], models: ProtectModels, options: ProtectOptions, *, key: bytes, generator: Any, targets_of, workers: int) -> Iterator[tuple[Case, Any]]:
    """``minmin``/``minminmax``: load the whole release (every case of this run), compute its
    noise jointly, then write and report case by case. Memory: the release's slices."""
    loaded, failed = [], []
    for case, item in prefetch(list(todo), lambda c: load_case(c, models.modalities, models.norm, geometry=True), workers):
        (failed if isinstance(item, Exception) else loaded).append((case, item))
    yield from failed
    if not loaded:
        return
    deltas, info = release_deltas([item for _, item in loaded], models, options, key=key)
    for (case, item), delta in zip(loaded, deltas):
        yield case, _protect_and_write(case, item, models, options, key=key, generator=generator, targets_of=targets_of, delta=delta, extra=info)


def _whitebox(attackers, channels, identity, clean: np.ndarray, protected: np.ndarray, dev: Any, batch_size: int) -> dict[str, Any]:
    """Fraction of slices each attacker still assigns to the case's identity, clean vs protected."""
    import torch

    out = {}
    keep = (clean.reshape(len(clean), -1).max(1) - clean.reshape(len(clean), -1).min(1)) > 1e-3
    for attacker, chans, known in zip(attackers, channels, identity):
        if known is None or not keep.any():
            continue
        scores = []
        for data in (clean[keep], protected[keep]):
            hits = 0
            with torch.no_grad():
                for start in range(0, len(data), batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(data[start : start + batch_size][:, chans])).to(dev)
                    hits += int((attacker.forward(x).argmax(1) == known).sum())
            scores.append(hits / len(data))
        out[f"whitebox_top1_clean[{attacker.path.name}]"] = scores[0]
        out[f"whitebox_top1_protected[{attacker.path.name}]"] = scores[1]
    return out
