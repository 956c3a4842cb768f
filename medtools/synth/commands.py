"""synth-train, synth, fid, mia: flags only; each calls one plain function by keyword."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.core import report
from medtools.cliutil import BatchSize, Compile, Device, Json, Model, Overwrite, Precision, Quiet, Seed, Shard, Workers, command, emit_training_result, training_options

PatientRegex = Annotated[Optional[str], typer.Option("--patient-regex", help="Regex on file names giving the patient id (group 'patient' or 1); default: manifest rules.")]


def register(app: typer.Typer) -> None:
    app.command("synth-train")(synth_train)
    app.command("synth")(synth)
    app.command("fid")(fid)
    app.command("mia")(mia)
    app.command("tstr")(tstr)
    app.command("nearest")(nearest)


def _names(text: str) -> list[str]:
    """Comma-separated names: 'loss, pia' → ['loss', 'pia']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str | None, flag: str) -> list[int] | None:
    """'16,32' → [16, 32]; an unset option (None) stays None."""
    from medtools.core.errors import UsageError

    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None


@command
@training_options(epochs=50, batch_size=16, lr=2e-4)
def synth_train(
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.safetensors).")],
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Files, folders, globs, manifest CSVs, or '-' (default: the --classes-from folder).", show_default=False)] = None,
    size: Annotated[int, typer.Option("--size", min=8, help="Images are resized to size×size.")] = 64,
    channels: Annotated[int, typer.Option("--channels", help="1 (grayscale) or 3 (RGB).")] = 1,
    widths: Annotated[str, typer.Option("--widths", help="UNet block widths, one per resolution level.")] = "32,64,128",
    attention: Annotated[Optional[str], typer.Option("--attention", help="Levels (0 = full size) with self-attention; '' for none (default: the lowest resolution, e.g. 2 for 32,64,128).", show_default=False)] = None,
    layers_per_block: Annotated[int, typer.Option("--layers-per-block", min=1, help="ResNet blocks per level.")] = 2,
    norm_groups: Annotated[int, typer.Option("--norm-groups", min=1, help="GroupNorm groups (must divide every width).")] = 8,
    timesteps: Annotated[int, typer.Option("--timesteps", min=2, help="Diffusion steps of the DDPM scheduler.")] = 1000,
    schedule: Annotated[str, typer.Option("--schedule", help="Beta schedule: linear | scaled_linear | squaredcos_cap_v2.")] = "linear",
    ema_decay: Annotated[float, typer.Option("--ema-decay", min=0.0, max=1.0, help="EMA of the weights saved in the checkpoint (0: none; ~0.9999 for long runs).")] = 0.995,
    patient_regex: PatientRegex = None,
    dp_epsilon: Annotated[Optional[float], typer.Option("--dp-epsilon", help="Train with DP-SGD (opacus) to this privacy budget ε.")] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="DP δ (must be < 1/number of images).")] = 1e-5,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="DP-SGD per-sample gradient clipping norm C.")] = 1.0,
    label: Annotated[Optional[str], typer.Option("--label", help="Class-conditional: the class of each image is this manifest column (e.g. class).")] = None,
    classes_from: Annotated[Optional[Path], typer.Option("--classes-from", help="Class-conditional: the class of each image is its first folder below DIR (DIR/NORMAL/x.png → NORMAL).")] = None,
    label_dropout: Annotated[float, typer.Option("--label-dropout", help="Fraction of labels replaced by the null class (classifier-free guidance).")] = 0.1,
    options=None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Train a DDPM (diffusers UNet2DModel + 1000-step DDPMScheduler) on 2-D images; optional DP-SGD."""
    from medtools.core.errors import UsageError
    from medtools.synth.train import train_ddpm

    if not inputs and classes_from is None:
        raise UsageError("give training images (folders, CSVs, files) or --classes-from DIR")
    record = report.RunRecord(seed=options.seed)
    result = train_ddpm(
        inputs=inputs or [str(classes_from)], output=output, size=size, channels=channels, widths=_ints(widths, "--widths"),
        attention=_ints(attention, "--attention"), layers_per_block=layers_per_block, norm_groups=norm_groups,
        timesteps=timesteps, beta_schedule=schedule, options=options,
        ema_decay=ema_decay, patient_regex=patient_regex, dp_epsilon=dp_epsilon,
        dp_delta=dp_delta, max_grad_norm=max_grad_norm, label=label, classes_from=classes_from, label_dropout=label_dropout,
    )
    emit_training_result(result, json_output, record)
    return 0


@command
def synth(
    model: Model,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for sample-XXXXXX.png.")],
    n: Annotated[int, typer.Option("-n", "--images", min=1, help="Number of images (indices 0..n-1).")] = 16,
    sampler: Annotated[str, typer.Option("--sampler", help="ddpm | ddim | dpm-solver")] = "ddpm",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps (default: ddpm all, ddim 50, dpm-solver 20).")] = None,
    eta: Annotated[float, typer.Option("--eta", help="DDIM eta (0 = deterministic).")] = 0.0,
    bits: Annotated[int, typer.Option("--bits", help="PNG bit depth: 8 or 16.")] = 8,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class-conditional models: this class, or 'all' for N images of every class in OUTPUT/<CLASS>/.")] = None,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, help="Classifier-free guidance w: 0 unconditional, 1 conditional, >1 stronger.")] = 1.0,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    shard: Shard = None,
    device: Device = None,
    precision: Precision = None,
    compile: Compile = False,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Sample N images from a DDPM checkpoint; same seed → same images; paths on stdout."""
    from medtools.synth.sample import synth_job

    return synth_job(
        model=model, n=n, output=output, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size or 16, bits=bits, eta=eta,
        device=device, precision=precision, compile=compile, shard=shard, overwrite=overwrite, class_name=class_name, guidance=guidance,
    )


@command
def fid(
    real: Annotated[str, typer.Argument(help="Real images: folder, manifest CSV, or statistics .npz.", show_default=False)],
    fake: Annotated[Optional[str], typer.Argument(help="Generated images (folder, CSV or .npz); omit with --save-stats to only save REAL's statistics.", show_default=False)] = None,
    features: Annotated[Optional[Path], typer.Option("--features", help="Use the penultimate features of this medtools classifier (kind reid/cls) instead of Inception.")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights", help="Inception-v3 FID weights (.pth, torch-fidelity or pytorch-fid); env MEDTOOLS_INCEPTION_WEIGHTS.")] = None,
    size: Annotated[Optional[int], typer.Option("--size", min=8, help="Resize every image to size×size first (Inception only; e.g. the generator's size).")] = None,
    kid: Annotated[bool, typer.Option("--kid", help="Also Kernel Inception Distance (mean, std over subsets).")] = False,
    prc: Annotated[bool, typer.Option("--prc", help="Also precision, recall, F-score (k-NN manifolds).")] = False,
    save_stats: Annotated[Optional[Path], typer.Option("--save-stats", help="Write REAL's features and statistics to this .npz.")] = None,
    batch_size: BatchSize = None,
    workers: Workers = 0,
    seed: Seed = 0,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Fréchet distance between two image sets (torch-fidelity): Inception FID, or --features for a medical one."""
    from medtools.synth.fid import fid_job

    return fid_job(
        real=real, fake=fake, features=features, inception_weights=inception_weights, size=size, kid=kid, prc=prc,
        save_stats=save_stats, batch_size=batch_size or 32, workers=workers, seed=seed, device=device,
    )


@command
def mia(
    model: Model,
    members: Annotated[list[str], typer.Option("--members", help="Training images (folder, CSV, files); repeatable.")],
    nonmembers: Annotated[list[str], typer.Option("--nonmembers", help="Images of other patients (folder, CSV, files); repeatable.")],
    attacks: Annotated[str, typer.Option("--attacks", help="Comma-separated: loss (fixed-timestep denoising error), pia (proximal init.), secmi (DDIM inversion error).")] = "loss,pia,secmi",
    timesteps: Annotated[str, typer.Option("--timesteps", help="Timesteps of the loss and pia attacks.")] = "10,50,100,200",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Noise draws per timestep for the loss attack.")] = 4,
    roc: Annotated[Optional[Path], typer.Option("--roc", help="Write the ROC curves here (PNG) and as CSV beside it (.csv).")] = None,
    patient_regex: PatientRegex = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use at most this many images of each set (seeded choice).")] = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: Device = None,
    precision: Precision = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Membership inference on a DDPM: AUC, balanced accuracy, TPR at 1% and 0.1% FPR per attack."""
    from medtools.synth.mia import mia_job

    return mia_job(
        model=model, members=members, nonmembers=nonmembers, attacks=_names(attacks), timesteps=_ints(timesteps, "--timesteps"), repeats=repeats,
        roc=roc, patient_regex=patient_regex, limit=limit, batch_size=batch_size or 32, seed=seed, device=device, precision=precision,
    )


@command
def tstr(
    synthetic: Annotated[list[str], typer.Option("--synthetic", help="Synthetic training images: class folders (synth --class all) or a manifest CSV; repeatable.")],
    real_train: Annotated[list[str], typer.Option("--real-train", help="Real training images (class folders or manifest CSV); repeatable.")],
    real_test: Annotated[list[str], typer.Option("--real-test", help="Real test images of other patients; repeatable.")],
    arch: Annotated[str, typer.Option("--arch", help="timm classifier, the same for every run (resnet18, densenet121, ...).")] = "resnet18",
    size: Annotated[int, typer.Option("--size", min=8, help="Images are resized to size×size.")] = 32,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training length: this many passes over the real training set, for every run.")] = 20,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimizer steps per run (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (AdamW).")] = 1e-3,
    label: Annotated[str, typer.Option("--label", help="Manifest column with the class (class folders give 'class').")] = "class",
    runs: Annotated[str, typer.Option("--runs", help="Comma-separated subset of tstr, trtr, mixed (real + synthetic).")] = "tstr,trtr,mixed",
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples of test patients for the 95 % intervals.")] = 1000,
    keep: Annotated[Optional[Path], typer.Option("--keep", help="Keep the three classifiers (kind cls) in this folder.")] = None,
    patient_regex: PatientRegex = None,
    batch_size: BatchSize = None,
    seed: Seed = 0,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Train-on-synthetic test-on-real: the same classifier trained on synthetic, real, and both; AUC on held-out patients."""
    from medtools.synth.tstr import tstr_job

    return tstr_job(
        synthetic=synthetic, real_train=real_train, real_test=real_test, arch=arch, size=size, epochs=epochs, steps=steps,
        batch_size=batch_size or 32, lr=lr, label=label, runs=_names(runs), bootstrap=bootstrap, patient_regex=patient_regex, keep=keep, seed=seed, device=device,
    )


@command
def nearest(
    synthetic: Annotated[list[str], typer.Option("--synthetic", help="Synthetic images (folders, CSVs, files); repeatable.")],
    train: Annotated[list[str], typer.Option("--train", help="The generator's training images; repeatable.")],
    held_out: Annotated[Optional[list[str]], typer.Option("--held-out", help="Real images of other patients: the reference distances; repeatable.")] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="Also compare in this checkpoint's feature space (kind cls/reid/seg).")] = None,
    size: Annotated[Optional[int], typer.Option("--size", min=8, help="Pixel comparison size (default: the synthetic images' size).")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="PNG of the closest (synthetic | training) pairs; -features.png beside it with -m.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Closest pairs listed and drawn.")] = 16,
    patient_regex: PatientRegex = None,
    batch_size: BatchSize = None,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Nearest training image per synthetic image (pixels, features); copy-detection rate against held-out patients."""
    from medtools.synth.nearest import nearest_job

    return nearest_job(
        synthetic=synthetic, train=train, held_out=held_out or None, model=model, size=size, grid=grid, top=top,
        patient_regex=patient_regex, batch_size=batch_size or 64, device=device,
    )
