"""Federated learning commands: fl-train (FLARE simulator), fl-job (a FLARE job folder for a real federation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import CheckpointOut, Deterministic, Device, Json, Lr, Precision, Quiet, StepsPerEpoch, TrainSeed, command

Kind = Annotated[str, typer.Argument(help="Model kind to train (seg).", show_default=False)]
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
Encoder = Annotated[Optional[str], typer.Option("--encoder", help="smp encoder (random init), e.g. resnet18.")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="unet | unet-scse | unetplusplus | fpn | deeplabv3plus")]
Modalities = Annotated[Optional[str], typer.Option("--modalities", help="Comma-separated, e.g. flair,t1ce (default: all present in every case).")]
Binary = Annotated[bool, typer.Option("--binary", help="Target vs background (any label > 0).")]
ValFraction = Annotated[Optional[float], typer.Option("--val-fraction", help="Share of each site's patients held out for the site's validation.")]
Augment = Annotated[Optional[str], typer.Option("--augment", help="As seg-train --augment (none | KEY=VALUE,...).")]
Schedule = Annotated[Optional[str], typer.Option("--schedule", help="Learning rate schedule within each round: poly | cosine | constant (default constant).")]


def register(app: typer.Typer) -> None:
    app.command("fl-train")(fl_train)
    app.command("fl-job")(fl_job)


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
    schedule: Schedule = "constant",
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
    schedule: Schedule = "constant",
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
