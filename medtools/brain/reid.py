"""Re-identification attacker: a classifier that predicts who a slice (or image) belongs to.

Identity labels come from the manifest (``patient`` by default, any column with
``--label``, e.g. ``class`` for NORMAL/PNEUMONIA chest X-rays). The honest evaluation is
across visits: train on one exam of each patient, test on the patient's other exams; a
random split of slices from the same scan flatters the attacker. With ``--train-visits``
unset and patients with several visits, the first visit (sorted) trains and the others
validate.

Volumes go through the one geometry step (``core.preprocess.model_grid``): ``reid-train``
records its cases' geometry (most common orientation, median spacing, slicing axis) in
``medtools.norm`` and maps every case into it; ``reid-eval`` and ``case_identities`` map each
input into it, so a scan stored in another array order gives the attacker the same slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.brain.segment import common_modalities, note_geometry
from medtools.core import ckpt, report
from medtools.core.data import SliceSet, build_image_set, build_slice_set, data_ids, data_provenance, dataset_geometry
from medtools.core.errors import InputError, UsageError
from medtools.core.manifest import MODALITIES, load_rows
from medtools.core.predict import Predictor
from medtools.core.preprocess import DEFAULT_NORM, UNIT_NORM
from medtools.core.train import TrainOptions, fit, initial_weights, train_options

TRAIN_DEFAULTS = TrainOptions(epochs=20, batch_size=32, lr=1e-3)  # reid-train's


def _is_volume_rows(rows: Sequence[dict[str, str]]) -> bool:
    return any(r.get(m) for r in rows for m in MODALITIES)


def load_items(rows: Sequence[dict[str, str]], *, modalities: Sequence[str] | None, size: int, label: str, class_names: Sequence[str] | None = None, norm: dict[str, Any] | None = None) -> tuple[SliceSet, np.ndarray, list[str]]:
    """Slices (volumes) or images (2-D) with targets from manifest column ``label``."""
    names = list(class_names) if class_names is not None else sorted({r[label] for r in rows if r.get(label)})
    lookup = {n: i for i, n in enumerate(names)}
    if _is_volume_rows(rows):
        data = build_slice_set(rows, modalities or common_modalities(rows), size=size, norm=norm or DEFAULT_NORM)
        row_by_case = {r.get("case", str(i)): r for i, r in enumerate(rows)}
        targets = np.array([lookup.get(row_by_case[data.cases[c]].get(label, ""), -1) for c in data.case_index])
    else:
        data = build_image_set(rows, size=size)
        targets = np.array([lookup.get(r.get(label, ""), -1) for r in rows if "image" in r])
    return data, targets, names


def split_visits(rows: Sequence[dict[str, str]], train_visits: Sequence[str] | None, val_visits: Sequence[str] | None, val_fraction: float, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]], str]:
    """(train rows, validation rows, description of the split)."""
    if train_visits:
        train = [r for r in rows if r.get("visit") in set(train_visits)]
        val = [r for r in rows if r.get("visit") in set(val_visits)] if val_visits else [r for r in rows if r.get("visit") not in set(train_visits)]
        return train, val, f"visits {','.join(train_visits)} → {','.join(val_visits or ['others'])}"
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(row)
    if all(len({r.get("case") for r in group}) > 1 for group in by_patient.values()) and _is_volume_rows(rows):
        train, val = [], []
        for group in by_patient.values():
            ordered = sorted(group, key=lambda r: (r.get("visit", ""), r.get("case", "")))
            train.append(ordered[0])
            val.extend(ordered[1:])
        return train, val, "first visit of each patient → other visits"
    # one exam per patient (or 2-D images): split images within each label
    rng = np.random.default_rng(seed)
    mask = rng.random(len(rows)) < val_fraction
    return [r for r, m in zip(rows, mask) if not m], [r for r, m in zip(rows, mask) if m], f"random {val_fraction:.0%} of items (no cross-visit split possible)"


def _augment(images: Any, generator: Any = None) -> Any:
    """Random rotation (±10°), shift (±6%), scale (±5%) and intensity jitter per sample:
    identity must survive the pose and scanner changes between visits. ``generator``: a CPU
    torch.Generator (the draws are made on the CPU and moved to the images' device)."""
    import math

    import torch
    import torch.nn.functional as F

    n, device = images.shape[0], images.device

    def rand(*shape: int) -> Any:
        return torch.rand(*shape, generator=generator).to(device)

    angle = (rand(n) - 0.5) * math.radians(20)
    zoom = 1.0 + (rand(n) - 0.5) * 0.1
    shift = (rand(n, 2) - 0.5) * 0.12
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    scale = 1.0 + 0.2 * (rand(n, 1, 1, 1) - 0.5)
    return images * scale


def train_reid(
    data: Path | str | Sequence[Path | str],
    output: Path,
    *,
    arch: str = "resnet18",
    label: str = "patient",
    modalities: Sequence[str] | None = None,
    size: int = 128,
    train_visits: Sequence[str] | None = None,
    val_visits: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    defence: str | Sequence[str] | None = None,
    options: TrainOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train an attacker; ``defence`` (see ``brain/defences.py``) is applied to every training and
    validation image and stored in the checkpoint (``config.defence``) for reid-eval and protect.
    ``options`` (or single shared settings such as ``epochs=3``): ``core.train.TrainOptions``,
    defaults ``TRAIN_DEFAULTS``."""
    import torch

    from medtools.core.train import RandomStreams

    options = train_options(options, TRAIN_DEFAULTS, **settings)
    seed, batch_size = options.seed, options.batch_size

    from medtools.brain.defences import adv_eps, apply_defences, parse_defences

    defences = parse_defences(defence)
    import torch.nn.functional as F

    rows = [r for r in load_rows(data) if r.get(label)]
    if not rows:
        raise InputError(f"no cases with a {label!r} column in {data}")
    if _is_volume_rows(rows):
        modalities = list(modalities) if modalities else common_modalities(rows)
    train_rows, val_rows, how = split_visits(rows, train_visits, val_visits, val_fraction, seed)
    if not train_rows:
        raise UsageError("the split leaves no training cases (check --train-visits)")
    class_names = sorted({r[label] for r in train_rows})
    report.log(f"reid-train: {len(class_names)} {label} classes; split: {how}; {len(train_rows)} training, {len(val_rows)} validation cases")
    norm = dict(DEFAULT_NORM) if modalities else dict(UNIT_NORM)
    if modalities:
        geometry = dataset_geometry(train_rows, modalities[0])  # orientation, spacing, slicing axis: every case is mapped into it
        if geometry is not None:
            from medtools.core.io.geometry import describe

            norm["geometry"] = geometry
            report.log(f"reid-train: training geometry {describe(geometry)}")
    train_set, train_y, _ = load_items(train_rows, modalities=modalities, size=size, label=label, class_names=class_names, norm=norm)
    if defences:
        report.log(f"reid-train: defences {', '.join(defences)}")
        train_set.images = apply_defences(train_set.images, defences, groups=train_set.case_index)
    val = None
    if val_rows:
        val_set, val_y, _ = load_items(val_rows, modalities=modalities, size=size, label=label, class_names=class_names, norm=norm)
        keep = val_y >= 0
        if keep.any():
            val = (apply_defences(val_set.images[keep], defences, groups=val_set.case_index[keep]), val_y[keep])
        else:
            report.log(f"reid-train: no validation item has a {label} seen in training (open set): no validation top-1")
    in_channels = train_set.images.shape[1]
    config = {"arch": arch, "in_channels": in_channels, "num_classes": len(class_names), "image_size": size, "class_names": class_names, "label": label, "modalities": list(modalities or [])}
    if defences:
        config["defence"] = defences
    eps = adv_eps(defences)
    with initial_weights(seed):
        model = ckpt.new_model("reid", config)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(train_set.images), torch.from_numpy(train_y.astype(np.int64)))

    streams = RandomStreams(seed)

    def step(net: Any, batch: Any) -> Any:
        images, targets = batch
        images = _augment(images, streams.torch("augment"))
        if eps:
            images = images + _adversarial_delta(net, images, targets, eps, config, norm, generator=streams.torch("adversarial"))
        return F.cross_entropy(net(images).float(), targets, label_smoothing=0.1)

    def validate(net: Any) -> dict[str, float]:
        if val is None:
            return {}
        logits = Predictor.from_model(net, kind="reid", config=config, norm=norm, batch_size=batch_size * 2).predict(val[0])
        return {"val_top1": float((logits.argmax(1) == val[1]).mean()), "val_chance": 1.0 / len(class_names)}

    spec = options.spec(
        output=output,
        kind="reid",
        config=config,
        norm=norm,
        provenance={**data_provenance(rows, train_rows, val_rows), **options.id_provenance(**data_ids(train_rows, val_rows)), "split": how},  # no paths; ids only as HMACs
        monitor="val_top1",
    )
    result = fit(model, dataset, step, spec, validate=validate, streams=streams)
    result.update({"classes": len(class_names), "label": label, "split": how, "train_items": len(dataset), "val_items": 0 if val is None else len(val[1]), "defence": defences})
    return result


def _adversarial_delta(net: Any, images: Any, targets: Any, eps: float, config: dict[str, Any], norm: dict[str, Any], *, generator: Any = None) -> Any:
    """PGD (brain/pgd.py, untargeted, random start) against the model being trained, at L∞ eps in
    normalised units: adversarial training (Madry et al. 2018), the ``adv:EPS`` defence."""
    from medtools.brain.defences import ADV_STEPS
    from medtools.brain.pgd import pgd_delta

    was_training = net.training
    net.eval()  # the attack does not update BatchNorm statistics
    try:
        attacker = Predictor.from_model(net, kind="reid", config=config, norm=norm)
        delta = pgd_delta(images, [(attacker, list(range(images.shape[1])))], eps=eps, steps=ADV_STEPS, step_size=eps / 2, objective="untargeted", identity=[targets], diversity=False, generator=generator)
    finally:
        net.train(was_training)
    return delta.detach()


def eval_reid(data: Path | str | Sequence[Path | str], model_path: Path, *, batch_size: int = 64, device: str | None = None, precision: str | None = None, verify: bool = False, max_verify_items: int = 3000, seed: int = 0) -> dict[str, Any]:
    """Top-1/top-5, chance level and per-identity accuracy of an attacker on the given cases.

    The defences recorded in the checkpoint (``config.defence``) are applied first. ``verify``
    adds the verification task (same or different patient, from two scans or images: cosine
    similarity of the attacker's features, ROC AUC over all pairs of cases), which needs no
    patient known to the attacker."""
    from medtools.brain.defences import apply_defences

    attacker = Predictor(model_path, kind=("reid", "cls"), device=device, precision=precision, batch_size=batch_size)
    config = attacker.config
    label, names = config.get("label", "patient"), config["class_names"]
    defences = list(config.get("defence") or [])
    rows = [r for r in load_rows(data) if r.get(label)]
    if not rows:
        raise InputError(f"no cases with a {label!r} column in {data}")
    if _is_volume_rows(rows):
        note_geometry(attacker)
    items, targets, _ = load_items(rows, modalities=config.get("modalities") or None, size=int(config["image_size"]), label=label, class_names=names, norm=attacker.norm)
    images = apply_defences(items.images, defences, groups=items.case_index) if defences else items.images
    known = targets >= 0
    unknown = sorted({r[label] for r in rows} - set(names))
    result: dict[str, Any] = {"label": label, "defence": defences}
    if verify:
        result["verify"] = verification(attacker, images, _item_identities(items, rows, label), items.case_index, max_items=max_verify_items, seed=seed)
    if unknown:
        report.warn(f"{len(unknown)} {label} value(s) unknown to the attacker are left out{' of identification' if verify else ''}: {', '.join(unknown[:5])}{'…' if len(unknown) > 5 else ''}")
    if not known.any():
        if verify:
            return {**result, "top1": None, "top5": None, "chance": 1.0 / len(names), "items": 0, "identities": 0, "per_identity": {}}
        raise InputError(f"none of the {label} values in {data} is known to the attacker")
    logits = attacker.predict(images[known])
    y = targets[known]
    top5 = np.argsort(-logits, axis=1)[:, :5]
    per = {}
    for index in sorted(set(y.tolist())):
        sel = y == index
        per[names[index]] = {"top1": float((logits[sel].argmax(1) == index).mean()), "items": int(sel.sum())}
    result.update({
        "top1": float((logits.argmax(1) == y).mean()),
        "top5": float((top5 == y[:, None]).any(1).mean()),
        "chance": 1.0 / len(names),
        "items": int(known.sum()),
        "identities": len(per),
        "per_identity": per,
    })
    return result


def _item_identities(items: SliceSet, rows: Sequence[dict[str, str]], label: str) -> np.ndarray:
    """The ``label`` value (patient) of each item, as strings."""
    if _is_volume_rows(rows):
        by_case = {r.get("case", str(i)): r.get(label, "") for i, r in enumerate(rows)}
        return np.array([by_case[items.cases[c]] for c in items.case_index])
    return np.array([r.get(label, "") for r in rows if "image" in r])


def verification(attacker: Predictor, images: np.ndarray, identities: np.ndarray, cases: np.ndarray, *, max_items: int = 3000, seed: int = 0) -> dict[str, Any]:
    """Same/different patient from two cases (two scans or two 2-D images): cosine similarity of
    the attacker's features (a scan's: the mean over its slices) over all pairs of cases (at most
    ``max_items`` cases, drawn with ``seed``); ROC AUC and TPR at 1 % FPR (sklearn.metrics).
    0.5 is chance; ``pixel_auc`` scores the same pairs by the cosine of the raw (defended) pixels,
    the baseline a model must beat (an untrained network already scores well above 0.5 where
    patients look different, docs/results.md)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    features = attacker.features(images).reshape(len(images), -1).astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    # one embedding per case (a scan: the mean of its slices' unit features; a 2-D image: itself)
    names, inverse = np.unique(cases, return_inverse=True)
    embedding = np.zeros((len(names), features.shape[1]))
    np.add.at(embedding, inverse, features)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True) + 1e-12
    case_identity = np.empty(len(names), dtype=object)
    case_identity[inverse] = identities
    index = np.arange(len(names))
    if len(index) > max_items:
        index = np.sort(np.random.default_rng(seed).choice(index, max_items, replace=False))
    first, second = np.triu_indices(len(index), k=1)
    first, second = index[first], index[second]
    same = case_identity[first] == case_identity[second]
    if same.all() or not same.any():
        raise InputError("verification needs pairs of the same and of different patients (at least two cases of one patient, and two patients)")
    scores = np.einsum("ij,ij->i", embedding[first], embedding[second])
    # the baseline any number must beat: the same pairs scored by raw pixel similarity (no model)
    pixels = np.zeros((len(names), int(np.prod(images.shape[1:]))))
    np.add.at(pixels, inverse, images.reshape(len(images), -1).astype(np.float64))
    pixels -= pixels.mean(axis=1, keepdims=True)
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True) + 1e-12
    fpr, tpr, _ = roc_curve(same, scores)
    return {
        "auc": float(roc_auc_score(same, scores)),
        "pixel_auc": float(roc_auc_score(same, np.einsum("ij,ij->i", pixels[first], pixels[second]))),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "pairs": int(len(same)),
        "same_patient_pairs": int(same.sum()),
        "cases": int(len(index)),
        "patients": int(len(set(case_identity[index].tolist()))),
    }


def case_identities(images: Sequence[Any], attacker: Predictor, *, top: int = 5) -> dict[str, Any]:
    """In-memory entry point: the modality images of one case (the attacker's modality order) →
    the attacker's ``top`` identities, softmax averaged over the case's non-empty slices, after
    the defences recorded in the checkpoint (what ``reid-eval`` scores per slice)."""
    from medtools.brain.defences import apply_defences
    from medtools.core.io import as_volume
    from medtools.core.preprocess import resize, volumes_to_slices

    config = attacker.config
    modalities = list(config.get("modalities") or [])
    if modalities and len(images) != len(modalities):
        raise InputError(f"the attacker reads {len(modalities)} modalities ({', '.join(modalities)}), got {len(images)} images")
    from medtools.core.data import image_volume

    volumes = [image_volume(image) if image.array.ndim > 3 else as_volume(image) for image in images]  # 4-D: an input error naming the shape
    if any(v.shape != volumes[0].shape for v in volumes):
        raise InputError(f"modality shapes differ: {', '.join(str(v.shape) for v in volumes)}")
    from medtools.core.preprocess import model_grid

    grid = model_grid(images[0], volumes[0].shape, attacker.norm)  # into the training geometry, when the attacker records one
    if grid is not None:
        volumes = [grid.to_model(v) for v in volumes]
    slices, _ = volumes_to_slices(volumes, attacker.norm)
    flat = slices.reshape(len(slices), -1)
    keep = flat.max(axis=1) - flat.min(axis=1) > 1e-3  # as training: constant slices carry no identity
    if not keep.any():
        raise InputError("every slice of this case is constant: nothing to identify")
    x = resize(slices[keep], int(config["image_size"])).astype(np.float32)
    defences = list(config.get("defence") or [])
    if defences:
        x = apply_defences(x, defences, groups=np.zeros(len(x), dtype=int))
    probs = attacker.predict(x, softmax=True).mean(axis=0)
    names = list(config["class_names"])
    order = np.argsort(-probs)[: max(1, min(top, len(names)))]
    return {"top": [{"identity": names[i], "probability": float(probs[i])} for i in order], "slices": int(keep.sum()), "identities": len(names), "defence": defences}


def render_reid(result: dict[str, Any]) -> list[str]:
    """reid-eval's summary for people: identification and, when asked, verification."""
    lines = []
    if result["top1"] is not None:
        lines.append(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  chance {result['chance']:.4f}  items {result['items']}  identities {result['identities']}")
    if "verify" in result:
        v = result["verify"]
        lines.append(f"verify auc {v['auc']:.4f}  pixel-baseline auc {v['pixel_auc']:.4f}  tpr@1%fpr {v['tpr_at_1pct_fpr']:.4f}  pairs {v['pairs']}  same-patient pairs {v['same_patient_pairs']}  cases {v['cases']}  patients {v['patients']}")
    return lines
