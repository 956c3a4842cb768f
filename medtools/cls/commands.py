"""cls commands: slices, cls-train, classify, cls-eval, cipher-attack (thin Typer layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import (
    BatchSize,
    CheckpointOut,
    Device,
    Inputs,
    Json,
    Model,
    Overwrite,
    Precision,
    Quiet,
    Seed,
    command,
    emit_training_result,
    training_options,
)
from medtools.core import report

Data = Annotated[list[Path], typer.Argument(help="Class folders (ROOT/<CLASS>/*.png) or a manifest CSV.", show_default=False)]
KeyFile = Annotated[Optional[Path], typer.Option("--key", "--key-file", help="256-bit key file (`medtools keys gen-key FILE`).")]
BlockSize = Annotated[int, typer.Option("--block-size", min=1, help="Block size of --encryption block (as `encrypt --block-size`).")]


def register(app: typer.Typer) -> None:
    app.command("slices")(slices)
    app.command("cls-train")(cls_train)
    app.command("classify")(classify)
    app.command("cls-eval")(cls_eval)
    app.command("cipher-attack")(cipher_attack)


def _key(path: Optional[Path]) -> Optional[bytes]:
    from medtools.imagecipher.keyfile import read_key_file

    return read_key_file(path) if path is not None else None


def _data(paths: list[Path]):
    return paths[0] if len(paths) == 1 else paths


@command
def slices(
    data: Annotated[list[Path], typer.Argument(help="Case folders (BraTS, Brain-Tumor-Progression, phantoms) or a manifest CSV.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder: Tumor/ and NoTumor/ PNGs + manifest.csv.")],
    labels_from_mask: Annotated[bool, typer.Option("--labels-from-mask/--no-labels-from-mask", help="Class from the tumour mask (the only labelling there is).")] = True,
    min_area: Annotated[int, typer.Option("--min-area", min=1, help="Tumour pixels for a Tumor slice (slices with 1..N-1 are skipped).")] = 20,
    min_brain: Annotated[float, typer.Option("--min-brain", help="Skip slices with less than this share of head pixels.")] = 0.1,
    modality: Annotated[Optional[str], typer.Option("--modality", help="flair | t1 | t1ce | t2 (default: the first present in that order).")] = None,
    every: Annotated[int, typer.Option("--every", min=1, help="Keep every N-th slice.")] = 1,
    size: Annotated[Optional[int], typer.Option("--size", min=8, help="Resize slices to size×size (default: native).")] = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """2-D slices of brain volumes labelled Tumor / NoTumor from the mask; patient id kept in the name."""
    from medtools.cls.slices import write_slices
    from medtools.core.errors import UsageError

    if not labels_from_mask:
        raise UsageError("slices labels by the tumour mask only (--labels-from-mask)")
    from medtools.core import batch

    pairs = write_slices(_data(data), output, modality=modality, min_area=min_area, min_brain=min_brain, every=every, size=size, overwrite=overwrite)
    return batch.run_pairs(pairs, emit=batch.emitter(), description="cases").exit_code


@command
@training_options(epochs=10, batch_size=16, lr=1e-3)
def cls_train(
    data: Data,
    output: CheckpointOut,
    arch: Annotated[str, typer.Option("--arch", help="densenet121 | xception (timm legacy_xception) | any timm model name.")] = "densenet121",
    encryption: Annotated[str, typer.Option("--encryption", help="none | block | logistic-sine: train on images encrypted on the fly with --key.")] = "none",
    key: KeyFile = None,
    block_size: BlockSize = 16,
    size: Annotated[int, typer.Option("--size", min=16, help="Images are resized to size×size before encryption.")] = 128,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Block-aligned shifts and block-grid mirror (commute with the block cipher).")] = True,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of patients held out for validation.")] = 0.2,
    options=None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Train a tumour/finding classifier (timm, random init) on plain or encrypted images; patient-wise validation."""
    from medtools.cls.train import train_classifier

    record = report.RunRecord(seed=options.seed)
    result = train_classifier(
        _data(data), output, options=options, arch=arch, size=size, encryption=encryption, key=_key(key), block_size=block_size,
        augment_images=augment, val_fraction=val_fraction,
    )
    emit_training_result(result, json_output, record)
    return 0


@command
def classify(
    inputs: Inputs,
    model: Model,
    key: KeyFile = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV (path,label,probability,<class>...) instead of JSON Lines.")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the table to this file (atomically) instead of stdout.")] = None,
    explain: Annotated[Optional[str], typer.Option("--explain", metavar="METHOD", help="Also write each image's saliency map with the same model, as `medtools explain` does (with --explain-dir): gradcam | gradcam++ | occlusion | ig; paths and numbers in the record's explain.")] = None,
    explain_dir: Annotated[Optional[Path], typer.Option("--explain-dir", help="Folder for the --explain maps (mirrors the inputs).")] = None,
    batch_size: BatchSize = None,
    device: Device = None,
    precision: Precision = None,
    quiet: Quiet = False,
) -> int:
    """Classify images: JSON Lines (or --csv) with path, label, probability of the positive class."""
    from medtools.cls.classify import classify_command

    return classify_command(inputs, model, key=_key(key), csv_output=csv_output, output=output, batch_size=batch_size or 32, device=device, precision=precision, explain=explain, explain_dir=explain_dir)


@command
def cls_eval(
    data: Data,
    model: Model,
    key: KeyFile = None,
    positive: Annotated[Optional[str], typer.Option("--positive", help="Positive class (default: the model's, e.g. Tumor).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples (by patient) for the 95 % CIs.")] = 1000,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = None,
    precision: Precision = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Accuracy, balanced accuracy, AUC, sensitivity, specificity, confusion matrix, patient-bootstrap CIs."""
    from medtools.cls.classify import eval_job

    return eval_job(_data(data), model, key=_key(key), positive=positive, bootstrap=bootstrap, seed=seed, device=device, precision=precision, batch_size=batch_size or 32)


@command
def cipher_attack(
    inputs: Inputs,
    method: Annotated[str, typer.Option("--method", "-m", help="block | logistic-sine")] = "block",
    key: KeyFile = None,
    block_size: BlockSize = 16,
    attack: Annotated[str, typer.Option("--attack", help="known-plaintext | ciphertext-only | both")] = "both",
    seed: Seed = 0,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Attack block / logistic-sine encryption of these plain images (encrypted here with --key) and score the recovery."""
    from medtools.cls.attack import attack_command

    result = attack_command(inputs, method=method, key=_key(key), block_size=block_size, attack=attack, seed=seed)
    report.emit_result(result, report.to_json, record=report.RunRecord(seed=seed))
    return 0
