"""``tstr``: are synthetic images useful? Train on synthetic, test on real (Esteban et al. 2017).

The same classifier (a timm network from ``medtools.nets.classifier``, trained by the one
loop ``core.train.fit`` with the same recipe and the same number of optimizer steps) is
trained three times:

* **TSTR** on the synthetic images only,
* **TRTR** on the real training images only (the reference),
* **real + synthetic** on both,

and each is tested on real images of *other patients* (``--real-test``). Reported per run:
accuracy, balanced accuracy and ROC AUC of the positive class with 95 % cluster-bootstrap
intervals over test patients, plus the paired bootstrap interval of AUC(TRTR) − AUC(TSTR).

Classes come from class folders (``DIR/NORMAL/…``, what ``synth --class all`` writes) or a
manifest column (``--label``). Real train and real test must not share a patient (patient ids
from the manifest rules or ``--patient-regex``): an overlap is refused with exit 5, the code
of an unusable input (``InputError``), as ``mia`` refuses overlapping members/non-members.
Model selection uses no test data: the classifier after the last step is tested.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import InputError, UsageError
from medtools.synth.images import ImageRef, check_disjoint_patients, collect_images, load_images

NORM = {"method": "unit", "model_range": [-1.0, 1.0]}
RUNS = ("tstr", "trtr", "mixed")  # mixed = real + synthetic


def labelled(sources: Sequence[str | Path], flag: str, *, label: str, patient_regex: str | None) -> list[ImageRef]:
    """Images with a class: class folders (discovered as manifest column ``class``) or a CSV column."""
    try:
        return collect_images(list(sources), patient_regex=patient_regex, label=label)
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None


def _describe(refs: Sequence[ImageRef], patients: bool = True) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in refs:
        counts[str(r.label)] = counts.get(str(r.label), 0) + 1
    out: dict[str, Any] = {"images": len(refs), "per_class": dict(sorted(counts.items()))}
    if patients:
        out["patients"] = len({r.patient for r in refs})
    return out


def train_and_test(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    classes: Sequence[str],
    output: Path,
    arch: str,
    size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str | None,
    provenance: dict[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train one classifier for ``steps`` optimizer steps on (x in [0, 1], class index); (test probabilities, fit summary)."""
    import torch
    from torch.utils.data import TensorDataset

    from medtools.core.metrics import positive_class
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import canonical_norm, to_model_range
    from medtools.core.train import TrainSpec, fit
    from medtools.nets.classifier import build_classifier

    norm = canonical_norm(NORM)
    counts = np.bincount(train_y, minlength=len(classes))
    if (counts == 0).any():
        raise InputError(f"class {classes[int(np.argmin(counts))]!r} has no training image in this set")
    weights = torch.tensor(len(train_y) / (len(classes) * counts), dtype=torch.float32)
    config = {"arch": arch, "in_channels": 1, "num_classes": len(classes), "drop_rate": 0.0, "image_size": size, "class_names": list(classes), "positive": positive_class(list(classes)), "encryption": "none"}
    torch.manual_seed(seed)
    model = build_classifier(arch=arch, in_channels=1, num_classes=len(classes))

    def step(net: Any, batch: Any) -> Any:
        x, y = batch
        flip = torch.rand(x.shape[0], device=x.device) < 0.5  # horizontal mirroring, the one augmentation
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        logits = net(to_model_range(x, norm))
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=weights.to(logits.device))

    dataset = TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.int64)))
    # one "epoch" of ``steps`` steps (the loader restarts as needed): the same optimizer steps
    # whatever the set's size, one checkpoint write and one BatchNorm recalibration
    spec = TrainSpec(
        output=output, kind="cls", config=config, norm=norm, provenance=provenance, epochs=1, batch_size=batch_size,
        lr=lr, seed=seed, device=device, steps_per_epoch=int(steps), drop_last=len(dataset) > batch_size,
    )
    result = fit(model, dataset, step, spec, model_inputs=lambda b: to_model_range(b[0], norm))
    model.eval()
    probs = Predictor.from_model(model, kind="cls", config=config, norm=norm, batch_size=max(batch_size, 64)).predict(test_x, softmax=True)
    return probs, result


def run_tstr(
    *,
    synthetic: Sequence[str | Path],
    real_train: Sequence[str | Path],
    real_test: Sequence[str | Path],
    arch: str = "resnet18",
    size: int = 32,
    epochs: int = 20,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    label: str = "class",
    runs: Sequence[str] = RUNS,
    bootstrap: int = 1000,
    patient_regex: str | None = None,
    keep: Path | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """TSTR / TRTR / real+synthetic on held-out real patients → one JSON-able document.

    Every run trains for the same number of optimizer steps: ``steps``, or ``epochs`` passes
    over the real training set (so a larger synthetic set buys no extra training).
    """
    from medtools.core.device import resolve_device
    from medtools.core.metrics import evaluate, paired_auc_difference, positive_class

    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise UsageError(f"--runs takes a comma-separated subset of {', '.join(RUNS)}, got {list(runs)}")
    train_refs = labelled(real_train, "--real-train", label=label, patient_regex=patient_regex)
    test_refs = labelled(real_test, "--real-test", label=label, patient_regex=patient_regex)
    check_disjoint_patients(train_refs, test_refs, ("--real-train", "--real-test"), "the test must hold other patients (split by patient; check --patient-regex)")
    import timm

    if not timm.is_model(arch):
        raise UsageError(f"unknown classifier arch {arch!r} (any timm model name, e.g. resnet18, densenet121)")
    synth_refs = labelled(synthetic, "--synthetic", label=label, patient_regex=None) if ("tstr" in runs or "mixed" in runs) else []
    classes = sorted({str(r.label) for r in train_refs} | {str(r.label) for r in test_refs})
    if len(classes) < 2:
        raise InputError(f"need at least two classes, found {classes}")
    extra = sorted({str(r.label) for r in synth_refs} - set(classes))
    if extra:
        raise InputError(f"--synthetic has classes the real data lacks: {', '.join(extra)} (real: {', '.join(classes)})")
    lookup = {c: i for i, c in enumerate(classes)}
    positive = positive_class(classes)
    report.log(f"classes {classes} (positive {positive}); synthetic {len(synth_refs)}, real train {len(train_refs)} images of {len({r.patient for r in train_refs})} patients, real test {len(test_refs)} of {len({r.patient for r in test_refs})}")

    def arrays(refs: Sequence[ImageRef]) -> tuple[np.ndarray, np.ndarray]:
        return load_images(refs, size, 1).astype(np.float32), np.array([lookup[str(r.label)] for r in refs], dtype=np.int64)

    real_x, real_y = arrays(train_refs)
    test_x, _ = arrays(test_refs)
    synth_x, synth_y = arrays(synth_refs) if synth_refs else (np.zeros((0, 1, size, size), np.float32), np.zeros(0, np.int64))
    total_steps = int(steps or epochs * max(1, len(real_x) // batch_size))
    sets = {"tstr": (synth_x, synth_y), "trtr": (real_x, real_y), "mixed": (np.concatenate([real_x, synth_x]), np.concatenate([real_y, synth_y]))}
    dev = resolve_device(device)
    truth = [str(r.label) for r in test_refs]
    patients = [r.patient for r in test_refs]
    results: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    holder = tempfile.TemporaryDirectory(prefix="medtools-tstr-") if keep is None else None
    folder = Path(holder.name) if holder else Path(keep)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in runs:
            x, y = sets[name]
            report.log(f"{name}: training {arch} on {len(x)} images for {total_steps} steps")
            probs, summary = train_and_test(
                x, y, test_x, classes=classes, output=folder / f"{name}.safetensors", arch=arch, size=size, steps=total_steps,
                batch_size=batch_size, lr=lr, seed=seed, device=str(dev), provenance={"tstr_run": name, "train_images": int(len(x))},
            )
            metrics = evaluate(truth, probs, classes, positive=positive, patients=patients, bootstrap=bootstrap, seed=seed)
            results[name] = {"train_images": int(len(x)), "final_loss": summary["final"].get("loss"), "train_seconds": summary["train_seconds"], **metrics}
            if keep is not None:
                results[name]["checkpoint"] = str(folder / f"{name}.safetensors")
            scores[name] = probs[:, lookup[positive]]
            report.log(f"{name}: AUC {metrics['auc']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}")
    finally:
        if holder is not None:
            holder.cleanup()
    y_true = np.array([int(t == positive) for t in truth])
    out: dict[str, Any] = {
        "classes": classes,
        "positive": positive,
        "sets": {"synthetic": _describe(synth_refs, patients=False), "real_train": _describe(train_refs), "real_test": _describe(test_refs)},
        "classifier": {"arch": arch, "size": size, "steps": total_steps, "batch_size": batch_size, "lr": lr, "augment": "horizontal flip", "loss": "class-weighted cross-entropy", "selection": "last step (no test data)"},
        "runs": results,
        "device": str(dev),
    }
    if "tstr" in scores and "trtr" in scores:
        gap = paired_auc_difference(y_true, scores["trtr"], scores["tstr"], patients=patients, bootstrap=bootstrap, seed=seed)
        out["auc_gap_trtr_minus_tstr"] = gap
    return out


def render(result: dict[str, Any]) -> list[str]:
    """tstr's table for people: one row per run with the AUC's patient-bootstrap interval."""
    rows = ["run\ttrain_images\taccuracy\tbalanced_accuracy\tauc\tauc_ci95"]
    for name, values in result["runs"].items():
        ci = (values.get("ci95") or {}).get("auc") or [float("nan")] * 2
        rows.append(f"{name}\t{values['train_images']}\t{values['accuracy']:.4f}\t{values['balanced_accuracy']:.4f}\t{values['auc']:.4f}\t{ci[0]:.4f}-{ci[1]:.4f}")
    return rows


def tstr_job(*, seed: int, **options: Any) -> int:
    """``tstr``: the three runs' metrics on stdout (table or JSON with the run record)."""
    from medtools.core import report

    result = run_tstr(seed=seed, **options)
    report.emit_result(result, render, record=report.RunRecord(seed=seed, device=result.pop("device", None)))
    return 0
