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


def _cases(inputs: list[str], shard: str | None, output: Path | None = None, outputs_of=None):
    """Cases from the positional inputs (the K-th of N parts when sharded), kept apart from -o.

    Cases found in an -o folder inside an input folder are earlier outputs and left out;
    an output that would overwrite a case file or land in a walked input folder exits 2.
    ``outputs_of(case)`` gives the paths a case would be written to.
    """
    from medtools.brain.cases import resolve_cases
    from medtools.core.inputs import check_left_out, check_separate, in_excluded_output, input_roots, select_shard

    roots = input_roots(inputs)
    found = resolve_cases(inputs)
    cases = [c for c in found if not any(in_excluded_output(p, output, roots) for p in c.files.values())]
    if output is not None and outputs_of is not None:
        for case in cases:
            sources = [*case.files.values(), *([case.label] if case.label is not None else [])]
            for target in outputs_of(case):
                check_separate(target, output, inputs=sources, roots=roots)
        kept = {id(c) for c in cases}
        check_left_out([p for c in found if id(c) not in kept for p in c.files.values()], [t for c in cases for t in outputs_of(c)], output)
    return select_shard(cases, shard, key=lambda c: c.case)


def _case_outputs(output: Path, names):
    """Where a case's files go under -o (its folder mirrored) for the given file names."""
    return lambda case: [output / case.rel_dir / name for name in names(case)]


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
        schedule=None if schedule == "constant" else schedule, keep_best=keep_best, resize=resize,
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
    from medtools.brain.segment import output_ext, segment_cases
    from medtools.core.inputs import check_output_arg, skip_existing

    output = check_output_arg(output, 2)
    targets = _case_outputs(output, lambda case: [f"{case.case}_seg{output_ext(case, out_format)}", *([f"{case.case}_seg_prob.nii.gz"] if probabilities and out_format != "dicom-seg" else [])])
    cases = _cases(inputs, shard, output, targets)
    record = report.RunRecord(options={"tta": tta, "largest_component": largest_component})
    record.add_checkpoint(model)
    # skip-existing here, for either format (segment_cases only knows the .nii.gz name)
    todo = [case for case in cases if not skip_existing(targets(case)[0], overwrite)]
    skipped = len(cases) - len(todo)
    results = segment_cases(todo, model, output, device=device, precision=precision, compile=compile, batch_size=batch_size or 32, workers=workers, probabilities=probabilities, overwrite=True, out_format=out_format, tta=tta, keep_largest=largest_component) if todo else iter(())
    return _report_cases(results, json_output, record, skipped=skipped)


def _report_cases(results, json_output: bool, record: report.RunRecord, *, skipped: int = 0) -> int:
    """core's per-item loop over (case, result) pairs: each path on stdout as soon as its file
    is renamed into place (or one JSON line per case), errors on stderr, the exit code."""
    import contextlib

    from medtools.core.errors import InputError, MedtoolsError, UsageError
    from medtools.core.io import on_renamed

    printed: set[str] = set()

    def announce(path: Path) -> None:
        printed.add(str(path))
        report.emit_path(path)

    def work(pair):
        case, result = pair
        if isinstance(result, BaseException):
            if isinstance(result, UsageError) or not isinstance(result, (MedtoolsError, OSError, ValueError, RuntimeError)):
                raise InputError(f"{type(result).__name__}: {result}" if not isinstance(result, MedtoolsError) else str(result)) from result
            raise result
        if result == "skipped":
            return "skipped"
        paths = result["outputs"] if isinstance(result, dict) else result
        if json_output:
            report.emit_jsonl(result if isinstance(result, dict) else {"case": case.case, "outputs": [str(p) for p in paths]})
        else:
            for path in paths:
                if str(path) not in printed:
                    report.emit_path(path)
        return result

    with contextlib.nullcontext() if json_output else on_renamed(announce):
        outcome = report.run_items(results, work, name=lambda pair: pair[0].case, description="cases")
    outcome.skipped += skipped
    if json_output:
        report.emit_jsonl({"summary": {"ok": outcome.ok, "failed": outcome.failed, "skipped": outcome.skipped}, "run": record.as_dict()})
    return outcome.exit_code


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
    from medtools.brain.evaluate import evaluate_pair, pair_files, summarise
    from medtools.core.errors import InputError

    if attack is not None or model is not None or truth is None:
        return _seg_eval_attack(pred, truth, attack=attack, model=model, eps=eps, steps=steps, step_size=step_size, batch_size=batch_size, device=device, seed=seed, json_output=json_output)
    pairs = pair_files(pred, truth)
    per_case: dict[str, dict] = {}

    def work(pair):
        case, pred_path, truth_path = pair
        if pred_path is None:
            raise InputError("no prediction for this case")
        per_case[case] = evaluate_pair(pred_path, truth_path, with_hd95=hd95)

    outcome = report.run_items(pairs, work, name=lambda p: p[0], total=len(pairs), description="seg-eval")
    if not per_case:
        raise InputError("no prediction matched any ground-truth case")
    mean = summarise(per_case)
    if json_output:
        report.emit_json({"mean": mean, "cases": per_case, "missing": [c for c, p, _ in pairs if p is None], "run": report.RunRecord().as_dict()})
    else:
        print(f"{'region':<12}{'dice':>8}{'iou':>8}{'hd95':>9}{'cases':>7}")
        for key, values in mean.items():
            print(f"{key:<12}{values['dice']:>8.4f}{values['iou']:>8.4f}{values['hd95']:>9.2f}{values['cases']:>7}")
    return outcome.exit_code


def _seg_eval_attack(cases_arg: Path, truth: Path | None, *, attack, model, eps, steps, step_size, batch_size, device, seed, json_output) -> int:
    """seg-eval --attack: brain/robust.py evaluate_attack on the cases, a curve in --json, a table otherwise."""
    from medtools.core.errors import UsageError

    if attack is None or model is None or truth is not None:
        raise UsageError("seg-eval takes PRED TRUTH, or CASES --attack fgsm|pgd -m seg.safetensors")
    from medtools.brain.robust import evaluate_attack

    record = report.RunRecord(seed=seed)
    record.add_checkpoint(model)
    result, outcome = evaluate_attack(_cases([str(cases_arg)], None), model, attack=attack, eps=eps, steps=steps, step_size=step_size, batch_size=batch_size or 16, device=device, seed=seed)
    if json_output:
        report.emit_json({**result, "run": record.as_dict()})
    else:
        regions = list(result["dice"])
        print(f"{'eps':<10}" + "".join(f"{r:>12}" for r in regions))
        for index, value in enumerate(result["eps"]):
            print(f"{value:<10g}" + "".join(f"{result['dice'][r][index]:>12.4f}" for r in regions))
    return outcome.exit_code


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
    from medtools.brain.reid import eval_reid

    record = report.RunRecord()
    record.add_checkpoint(model)
    result = eval_reid(_data(data), model, batch_size=batch_size or 64, device=device, verify=verify)
    if json_output:
        report.emit_json({**result, "run": record.as_dict()})
    else:
        if result["top1"] is not None:
            print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  chance {result['chance']:.4f}  items {result['items']}  identities {result['identities']}")
        if verify:
            v = result["verify"]
            print(f"verify auc {v['auc']:.4f}  pixel-baseline auc {v['pixel_auc']:.4f}  tpr@1%fpr {v['tpr_at_1pct_fpr']:.4f}  pairs {v['pairs']}  same-patient pairs {v['same_patient_pairs']}  cases {v['cases']}  patients {v['patients']}")
    return 0


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
    from medtools.brain.protect import protect_cases
    from medtools.core.inputs import check_output_arg

    output = check_output_arg(output, 2)
    secret = None
    if key_file is not None:
        from medtools.core.errors import UsageError
        from medtools.core.secrets import check_private_permissions

        check_private_permissions(key_file, "a protect secret")
        try:
            secret = key_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --key-file {key_file}: {exc.strerror}") from None
    cases = _cases(inputs, shard, output, _case_outputs(output, lambda case: [p.name for p in case.files.values()]))
    record = report.RunRecord(seed=seed)
    for path in attacker + ([utility] if utility else []):
        record.add_checkpoint(path)
    results = protect_cases(
        cases, output, attackers=attacker, utility=utility, eps=eps, steps=steps, step_size=step_size, objective=objective,
        utility_weight=utility_weight, random_start=random_start, diversity=diversity, mask_background=mask_background,
        batch_size=batch_size or 32, workers=workers, seed=seed, device=device, overwrite=overwrite,
        signature_share=signature_share, key=secret, rounds=rounds,
    )
    return _report_cases(results, json_output, record)
