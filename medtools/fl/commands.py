"""Federated learning commands: fl-train (FLARE simulator), fl-job (a FLARE job folder for a real federation), fl-attack (gradient inversion of a site's update)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import CheckpointOut, Deterministic, Device, Json, Lr, Overwrite, Precision, Quiet, Seed, Shard, StepsPerEpoch, TrainSeed, command

Kind = Annotated[str, typer.Argument(help="Model kind to train: seg or cls.", show_default=False)]
Sites = Annotated[list[Path], typer.Argument(help="One manifest CSV per site (site-1, site-2, ... in this order).", show_default=False)]
Rounds = Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")]
LocalEpochs = Annotated[int, typer.Option("--local-epochs", min=1, help="Epochs each site trains per round.")]
Algorithm = Annotated[str, typer.Option("--algorithm", help="fedavg | fedprox (FLARE's FedAvg controller; FedProx adds mu/2·‖w − w_global‖² to each site's loss).")]
Mu = Annotated[Optional[float], typer.Option("--mu", help="--algorithm fedprox: proximal coefficient (default 0.01).")]
DpEpsilon = Annotated[Optional[float], typer.Option("--dp-epsilon", help="DP-SGD (Opacus) at every site: total ε each site spends over all rounds (BatchNorm becomes GroupNorm).")]
DpDelta = Annotated[float, typer.Option("--dp-delta", help="DP δ per site.")]
MinSites = Annotated[Optional[int], typer.Option("--min-sites", min=1, help="Sites the server waits for in each round (default: all).")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Items (slices/images) per batch at each site.")]
Size = Annotated[Optional[int], typer.Option("--size", min=16, help="Slices/images resized to size×size.")]
Resize = Annotated[Optional[tuple[int, int]], typer.Option("--resize", help="Resize to H W instead of --size square.")]
Encoder = Annotated[Optional[str], typer.Option("--encoder", help="seg: smp encoder (random init), e.g. resnet18.")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="seg: unet | unet-scse | unetplusplus | fpn | deeplabv3plus; cls: densenet121 | xception | any timm model name.")]
Modalities = Annotated[Optional[str], typer.Option("--modalities", help="Comma-separated, e.g. flair,t1ce (default: all present in every case).")]
Binary = Annotated[bool, typer.Option("--binary", help="Target vs background (any label > 0).")]
ValFraction = Annotated[Optional[float], typer.Option("--val-fraction", help="Share of each site's patients held out for the site's validation.")]
Augment = Annotated[Optional[str], typer.Option("--augment", help="As seg-train --augment (none | KEY=VALUE,...).")]
Schedule = Annotated[Optional[str], typer.Option("--schedule", help="Learning rate schedule within each round: poly | cosine | constant (default constant).")]


def register(app: typer.Typer) -> None:
    app.command("fl-train")(fl_train)
    app.command("fl-job")(fl_job)
    app.command("fl-attack")(fl_attack)


@command
def fl_train(
    kind: Kind,
    sites: Sites,
    output: CheckpointOut,
    rounds: Rounds = 5,
    local_epochs: LocalEpochs = 1,
    algorithm: Algorithm = "fedavg",
    mu: Mu = None,
    dp_epsilon: DpEpsilon = None,
    dp_delta: DpDelta = 1e-5,
    min_sites: MinSites = None,
    size: Size = None,
    resize: Resize = None,
    encoder: Encoder = None,
    arch: Arch = None,
    modalities: Modalities = None,
    binary: Binary = False,
    val_fraction: ValFraction = None,
    augment: Augment = None,
    schedule: Schedule = None,
    batch_size: BatchSize = 16,
    lr: Lr = 1e-3,
    steps_per_epoch: StepsPerEpoch = None,
    seed: TrainSeed = 0,
    device: Device = None,
    precision: Precision = None,
    deterministic: Deterministic = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=1, help="Stop the simulator after this many seconds (exit 2, no model).")] = None,
    keep_workspace: Annotated[Optional[Path], typer.Option("--keep-workspace", help="Keep the FLARE job folder, workspace and log here.")] = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Federated training on NVIDIA FLARE's simulator: one client per site manifest runs KIND's own trainer, FedAvg/FedProx on the server.

    Writes the global model as an ordinary KIND checkpoint (segment, serve load it) with the rounds,
    site ids, per-round validation metrics and, with --dp-epsilon, the ε each site spent (docs/federated.md).
    """
    from medtools.fl.train import fl_train_job

    return fl_train_job(
        kind, sites, output, rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites,
        trainer=dict(size=size, resize=resize, encoder=encoder, arch=arch, modalities=modalities, binary=binary, val_fraction=val_fraction, augment=augment, schedule=schedule),
        options=dict(batch_size=batch_size, lr=lr, steps_per_epoch=steps_per_epoch, seed=seed, device=device, precision=precision, deterministic=deterministic),
        timeout=timeout, keep_workspace=keep_workspace, json_output=json_output,
    )


@command
def fl_job(
    kind: Kind,
    sites: Annotated[list[str], typer.Argument(help="Each site's manifest CSV, as a path on that site's machine (site-1, site-2, ... in this order).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="FLARE job folder to write (must not exist).")],
    rounds: Rounds = 5,
    local_epochs: LocalEpochs = 1,
    algorithm: Algorithm = "fedavg",
    mu: Mu = None,
    dp_epsilon: DpEpsilon = None,
    dp_delta: DpDelta = 1e-5,
    min_sites: MinSites = None,
    size: Size = None,
    resize: Resize = None,
    encoder: Encoder = None,
    arch: Arch = None,
    modalities: Modalities = None,
    binary: Binary = False,
    val_fraction: ValFraction = None,
    augment: Augment = None,
    schedule: Schedule = None,
    batch_size: BatchSize = 16,
    lr: Lr = 1e-3,
    steps_per_epoch: StepsPerEpoch = None,
    seed: TrainSeed = 0,
    device: Device = None,
    precision: Precision = None,
    deterministic: Deterministic = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Export the federated training job as a FLARE job folder (submit it to a provisioned federation or POC mode; docs/federated.md)."""
    from medtools.fl.train import fl_job_job

    return fl_job_job(
        kind, sites, output, rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites,
        trainer=dict(size=size, resize=resize, encoder=encoder, arch=arch, modalities=modalities, binary=binary, val_fraction=val_fraction, augment=augment, schedule=schedule),
        options=dict(batch_size=batch_size, lr=lr, steps_per_epoch=steps_per_epoch, seed=seed, device=device, precision=precision, deterministic=deterministic),
        json_output=json_output,
    )


# ---------------------------------------------------------------- fl-attack


@command
def fl_attack(
    inputs: Annotated[list[str], typer.Argument(help="Images (files, folders, globs, '-'): each is one site's only training image of the round (batch 1).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder for the reconstructions: <name>_plain.png, and <name>_dp.png with --dp-epsilon.")] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="The global model the site trains: a seg or cls checkpoint (default: a fresh small model, --kind/--arch).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="Fresh model's kind: cls (the image's class is inferred from the update) | seg (needs --mask or optimises the mask too).")] = "cls",
    arch: Annotated[Optional[str], typer.Option("--arch", help="Fresh model: cls: lenet (the gradient-leakage papers' small CNN; default) or a timm name (e.g. test_resnet); seg: unet | fpn | ... .")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Fresh seg model's smp encoder (default tu-test_resnet, depth 3).")] = None,
    classes: Annotated[int, typer.Option("--classes", min=2, help="Fresh model's classes.")] = 2,
    size: Annotated[Optional[int], typer.Option("--size", min=8, help="Images resized to size×size (default: the checkpoint's image size, else 32).")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="seg: folder of the masks the site trains on (same name, or NAME_mask.png); the attacker is given them.")] = None,
    labels: Annotated[str, typer.Option("--labels", help="infer (cls: iDLG from the last layer's update; seg without --mask: optimised with the image) | known (the attacker knows them).")] = "infer",
    label: Annotated[int, typer.Option("--label", min=0, help="cls: the class the site trains the image as.")] = 0,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Attacker's Adam iterations.")] = 2000,
    tv: Annotated[float, typer.Option("--tv", min=0.0, help="Total-variation prior weight.")] = 0.01,
    restarts: Annotated[int, typer.Option("--restarts", min=1, help="Random starts; the best gradient match is kept.")] = 1,
    dp_epsilon: Annotated[Optional[float], typer.Option("--dp-epsilon", help="Also attack the site's Opacus DP-SGD update at this ε (per-sample clipping + Gaussian noise).")] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="DP δ.")] = 1e-5,
    dp_max_grad_norm: Annotated[float, typer.Option("--dp-max-grad-norm", help="DP-SGD clipping norm.")] = 1.0,
    dp_sample_rate: Annotated[float, typer.Option("--dp-sample-rate", help="DP-SGD sampling rate q the noise is calibrated for (1: this update alone spends ε).")] = 1.0,
    dp_steps: Annotated[int, typer.Option("--dp-steps", min=1, help="DP-SGD steps the site's ε covers (1: this update alone spends ε).")] = 1,
    site_lr: Annotated[float, typer.Option("--site-lr", help="The site's SGD learning rate (the update's scale).")] = 0.01,
    shard: Shard = None,
    device: Device = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Gradient inversion of one site's update (Inverting Gradients, Geiping et al. 2020): reconstruct its training image, with and without DP.

    The site takes one SGD step on one image; the attacker, who knows the global model, recovers the
    image from the update and reports PSNR/SSIM against the true image and a random-start baseline
    (docs/federated.md, "Attacking the updates").
    """
    from medtools.fl.attack import AttackSettings, attack_files

    settings = AttackSettings(steps=steps, tv=tv, restarts=restarts, site_lr=site_lr, dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm, dp_sample_rate=dp_sample_rate, dp_steps=dp_steps, seed=seed, labels=labels, extra={"label": label})
    return attack_files(inputs, output, model=model, kind=kind, arch=arch, encoder=encoder, classes=classes, size=size, masks=mask, settings=settings, device=device, overwrite=overwrite, shard=shard)
