"""Brain privacy commands: seg-train, segment, seg-eval, reid-train, reid-eval, protect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.core import report
from medtools.cliutil import (
    BatchSize,
    CheckpointOut,
    Compile,
    emit_training_result,
    training_options,
    Device,
    Inputs,
    Json,
    Model,
    NanPolicy,
    Output,
    Overwrite,
    Precision,
    Quiet,
    Seed,
    Shard,
    Workers,
    command,
)

Data = Annotated[list[Path], typer.Argument(help="Manifest CSV or folders of cases.", show_default=False)]
Size = Annotated[int, typer.Option("--size", min=16, help="Slices are resized to size×size.")]
Modalities = Annotated[Optional[str], typer.Option("--modalities", help="Comma-separated, e.g. flair,t1ce (default: all present in every case).")]


def register(app: typer.Typer) -> None:
    app.command("seg-train")(seg_train)
    app.command("segment")(segment)
    app.command("seg-eval")(seg_eval)
    app.command("reid-train")(reid_train)
    app.command("reid-eval")(reid_eval)
    app.command("protect")(protect)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _data(paths: list[Path]):
    return paths[0] if len(paths) == 1 else paths


@command
@training_options(epochs=20, batch_size=16, lr=1e-3)
def seg_train(
    data: Data,
    output: CheckpointOut,
    modalities: Modalities = None,
    binary: Annotated[bool, typer.Option("--binary", help="Tumor vs background (any label > 0).")] = False,
    arch: Annotated[str, typer.Option("--arch", help="unet | unet-scse | unetplusplus | fpn | deeplabv3plus")] = "unet",
    encoder: Annotated[str, typer.Option("--encoder", help="smp encoder (random init), e.g. resnet34, resnet18.")] = "resnet34",
    size: Size = 128,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of patients held out for validation.")] = 0.2,
    val_patients: Annotated[Optional[str], typer.Option("--val-patients", help="Comma-separated patients to validate on (instead of --val-fraction), e.g. one cross-validation fold.")] = None,
    context: Annotated[int, typer.Option("--context", min=0, help="2.5-D: K neighbouring slices on each side as extra channels (2K+1 slices per modality).")] = 0,
    patch: Annotated[Optional[int], typer.Option("--patch", min=16, help="Train on random PxP crops of the --size slices (foreground-centred for the oversampled share); inference uses whole slices.")] = None,
    foreground_share: Annotated[float, typer.Option("--foreground-share", min=0.0, max=1.0, help="Share of each batch drawn from slices that contain the target.")] = 1 / 3,
    augment: Annotated[Optional[str], typer.Option("--augment", help="none | KEY=VALUE,... of rotate (deg), scale, elastic, gamma, brightness, mirror (x|y|xy|none), p; default rotate=15,scale=0.15,elastic=0,gamma=0.3,brightness=0.1,mirror=xy,p=0.5.")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning rate schedule: poly | cosine | constant.")] = "poly",
    keep_best: Annotated[bool, typer.Option("--keep-best/--keep-last", help="-o holds the epoch with the best per-case validation Dice (the last one beside it as *.last.safetensors), or the last epoch.")] = True,
    resize: Annotated[Optional[tuple[int, int]], typer.Option("--resize", help="Slices/images resized to H W (instead of --size square).")] = None,
    strip_background: Annotated[bool, typer.Option("--strip-background", help="Zero everything outside the largest bright component (threshold 0.05 of the normalised range); stored in the checkpoint and re-applied at inference.")] = False,
    equalize: Annotated[Optional[str], typer.Option("--equalize", help="hist | clahe histogram equalisation (scikit-image), stored in the checkpoint and re-applied.")] = None,
    adv_train: Annotated[float, typer.Option("--adv-train", help="PGD adversarial training: share of each batch replaced by PGD examples against the model (0 = off).")] = 0.0,
    adv_eps: Annotated[Optional[float], typer.Option("--adv-eps", help="--adv-train: L∞ budget, normalised units (as seg-eval --eps).")] = None,
    adv_steps: Annotated[Optional[int], typer.Option("--adv-steps", help="--adv-train: PGD steps (default 3).")] = None,
    options=None,
    json_output: Json = False,
    nan_policy: NanPolicy = "error",
    quiet: Quiet = False,
) -> int:
    """Train an smp segmenter on 2-D slices of volumes or on 2-D image/mask pairs; patient-wise validation, best epoch kept.

    Dice + cross-entropy, foreground oversampling, random crops (--patch), 2.5-D input (--context),
    on-the-fly augmentation, poly/cosine learning rate (docs/brain.md, "Training recipe").
    """
    from medtools.brain.segment import train_segmenter

    record = report.RunRecord(seed=options.seed)
    result = train_segmenter(
        _data(data), output, options=options, modalities=_split(modalities), binary=binary, arch=arch, encoder=encoder, size=size,
        val_fraction=val_fraction, val_patients=_split(val_patients), context=context, patch=patch, foreground_share=foreground_share, augment=augment,
        schedule=schedule, keep_best=keep_best, resize=resize,
        strip_background=strip_background, equalize=equalize, adv_train=adv_train, adv_eps=adv_eps, adv_steps=adv_steps,
    )
    emit_training_result(result, json_output, record)
    return 0


@command
def segment(
    inputs: Inputs,
    model: Model,
    output: Output = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write softmax maps (<case>_seg_prob.nii.gz).")] = False,
    out_format: Annotated[str, typer.Option("--format", help="nifti | dicom-seg (DICOM series input); PNG/JPEG inputs give PNG label images.")] = "nifti",
    tta: Annotated[bool, typer.Option("--tta", help="Test-time mirroring: mean of the softmax over x, y and xy flips (4× the compute).")] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help="Keep only the largest connected foreground component.")] = False,
    resample: Annotated[bool, typer.Option("--resample/--no-resample", help="Resample each volume in-plane to the model's training spacing (and back); it is always reoriented to the training orientation.")] = True,
    volume: Annotated[Optional[int], typer.Option("--volume", help="4-D series (DWI, perfusion, fMRI): segment the N-th 3-D volume (from 0); without it a 4-D input is an item error.")] = None,
    explain: Annotated[Optional[str], typer.Option("--explain", metavar="METHOD", help="Also write each case's saliency map beside its labels with the same model, as `medtools explain` does (<case>_<method>.nii.gz): gradcam | gradcam++ | occlusion | ig.")] = None,
    batch_size: BatchSize = None,
    workers: Workers = 2,
    shard: Shard = None,
    device: Device = None,
    precision: Precision = None,
    compile: Compile = False,
    overwrite: Overwrite = False,
    json_output: Json = False,
    nan_policy: NanPolicy = "error",
    quiet: Quiet = False,
) -> int:
    """Segment volumes (NIfTI, DICOM series, case folders, manifest) into label maps in the input geometry."""
    from medtools.brain.jobs import segment_job

    return segment_job(inputs, model, output, probabilities=probabilities, out_format=out_format, tta=tta, largest_component=largest_component, batch_size=batch_size, workers=workers, shard=shard, device=device, precision=precision, compile=compile, overwrite=overwrite, resample=resample, volume=volume, explain=explain)


@command
def seg_eval(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted label maps (with --attack: the cases, with images and ground truth).")],
    truth: Annotated[Optional[Path], typer.Argument(help="Ground truth: manifest CSV, case folders or a folder of label maps (not with --attack).")] = None,
    hd95: Annotated[bool, typer.Option("--hd95/--no-hd95", help="Compute HD95 (slower).")] = True,
    attack: Annotated[Optional[str], typer.Option("--attack", help="fgsm | pgd: white-box attack on the -m model's inputs (CE+Dice vs the ground truth); noise: random ±eps signs (baseline). Dice per eps as a curve.")] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="--attack: the seg checkpoint attacked.")] = None,
    eps: Annotated[str, typer.Option("--eps", help="--attack: L∞ budgets, comma-separated, as fractions of the normalised [0, 1] input range.")] = "0,0.005,0.01,0.02,0.05",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="--attack pgd: steps (default 10).")] = None,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="--attack pgd: step (default max(eps/4, 2.5·eps/steps)).")] = None,
    batch_size: BatchSize = None,
    device: Device = None,
    seed: Seed = 0,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Dice/IoU/HD95 per label and per BraTS region (WT, TC, ET), per case and mean; with --attack, Dice under FGSM/PGD per eps."""
    from medtools.brain.jobs import seg_eval_job

    return seg_eval_job(pred, truth, hd95=hd95, attack=attack, model=model, eps=eps, steps=steps, step_size=step_size, batch_size=batch_size, device=device, seed=seed)


@command
@training_options(epochs=20, batch_size=32, lr=1e-3)
def reid_train(
    data: Data,
    output: CheckpointOut,
    arch: Annotated[str, typer.Option("--arch", help="Any timm classifier (random init): resnet18, resnet34, densenet121, ...")] = "resnet18",
    label: Annotated[str, typer.Option("--label", help="Manifest column to predict: patient (re-identification) or e.g. class.")] = "patient",
    modalities: Modalities = None,
    size: Size = 128,
    train_visits: Annotated[Optional[str], typer.Option("--train-visits", help="Visits to train on (default: first visit of each patient).")] = None,
    val_visits: Annotated[Optional[str], typer.Option("--val-visits", help="Visits to validate on (default: the others).")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Held-out share when no visit split is possible.")] = 0.2,
    defence: Annotated[Optional[list[str]], typer.Option("--defence", help="Applied to every training and evaluation image, stored in the checkpoint (repeat or comma-separate): jpeg:Q | blur:SIGMA | lowpass:CUTOFF | median:K | quantise:BITS | aware | aware:slice (know protect's signature scheme) | adv:EPS (PGD adversarial training). See docs/brain.md.")] = None,
    options=None,
    json_output: Json = False,
    nan_policy: NanPolicy = "error",
    quiet: Quiet = False,
) -> int:
    """Train a re-identification attacker (patient id from slices) or any image classifier (--label)."""
    from medtools.brain.reid import train_reid

    record = report.RunRecord(seed=options.seed)
    result = train_reid(
        _data(data), output, options=options, arch=arch, label=label, modalities=_split(modalities), size=size,
        train_visits=_split(train_visits), val_visits=_split(val_visits), val_fraction=val_fraction, defence=defence,
    )
    emit_training_result(result, json_output, record)
    return 0


@command
def reid_eval(
    data: Data,
    model: Model,
    verify: Annotated[bool, typer.Option("--verify", help="Also verification: same/different patient from two images (feature cosine, ROC AUC over all pairs of cases; patients need not be known to the attacker).")] = False,
    batch_size: BatchSize = None,
    device: Device = None,
    json_output: Json = False,
    nan_policy: NanPolicy = "error",
    quiet: Quiet = False,
) -> int:
    """Top-1/top-5 accuracy, chance level and per-patient accuracy of an attacker on these cases (its checkpoint's defences applied)."""
    from medtools.brain.jobs import reid_eval_job

    return reid_eval_job(data, model, verify=verify, batch_size=batch_size, device=device)


@command
def protect(
    inputs: Inputs,
    attacker: Annotated[list[Path], typer.Option("--attacker", "-a", help="Re-identification checkpoint(s) to blind (several = ensemble).")],
    output: Output = None,
    utility: Annotated[Optional[Path], typer.Option("--utility", help="Segmentation checkpoint whose output must not change.")] = None,
    eps: Annotated[float, typer.Option("--eps", help="L∞ budget as a fraction of each modality's normalised range (p0.5–p99.5 window).")] = 0.05,
    steps: Annotated[int, typer.Option("--steps", min=1, help="PGD iterations.")] = 10,
    step_size: Annotated[Optional[float], typer.Option("--step-size", help="PGD step (default max(eps/4, 2.5·eps/steps)).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="untargeted | decoy | entropy | feature | signature | minmin (error-minimising noise per release, Huang et al. 2021) | minminmax (its robust variant, Fu et al. 2022). minmin/minminmax hold the whole run (the release) in memory and train a surrogate on it.")] = "untargeted",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="minmin/minminmax: surrogate-training / noise rounds at most (each: 10 surrogate steps, then --steps noise steps per batch; stops at 99 % surrogate accuracy).")] = 5,
    signature_share: Annotated[float, typer.Option("--signature-share", help="signature: fraction of eps spent on the case's secret block pattern (the rest: PGD towards its decoy).")] = 0.9,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help="signature: secret that draws each case's pattern and decoy; minmin/minminmax: the release's surrogate and noise seed (default: fresh random per run); refused when group/others may read it (chmod 600).")] = None,
    insecure_permissions: Annotated[bool, typer.Option("--insecure-permissions", help="Accept a --key-file that group/others may read or write (refused by default: exit 2).")] = False,
    utility_weight: Annotated[float, typer.Option("--utility-weight", help="Weight of the segmentation-preserving KL term.")] = 1.0,
    random_start: Annotated[bool, typer.Option("--random-start/--no-random-start", help="Start from uniform noise in the eps ball.")] = True,
    diversity: Annotated[bool, typer.Option("--diversity/--no-diversity", help="Random shifts each step (input diversity).")] = True,
    mask_background: Annotated[bool, typer.Option("--mask-background/--no-mask-background", help="Leave air (volume minimum) untouched.")] = True,
    batch_size: BatchSize = None,
    workers: Workers = 1,
    shard: Shard = None,
    seed: Seed = 0,
    device: Device = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    nan_policy: NanPolicy = "error",
    quiet: Quiet = False,
) -> int:
    """Add L∞ PGD noise that blinds re-identification while keeping segmentation (see docs/brain.md).

    It is not anonymisation; what it is and is not good for, attacker by attacker: docs/brain.md,
    "What the protection is and is not good for".
    """
    from medtools.brain.jobs import protect_job

    return protect_job(
        inputs, output, attackers=attacker, utility=utility, key_file=key_file, eps=eps, steps=steps, step_size=step_size, objective=objective,
        utility_weight=utility_weight, random_start=random_start, diversity=diversity, mask_background=mask_background,
        batch_size=batch_size, workers=workers, shard=shard, seed=seed, device=device, overwrite=overwrite, signature_share=signature_share, rounds=rounds,
    )
