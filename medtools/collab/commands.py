"""Collaborative segmentation commands: ae-train, klt-keygen, klt-encode, umn-train, umn-map,
klt-decode, collab-eval, collab-attack. Thin layer: parse flags, call one plain function.

Key material never reaches stdout, stderr or --json: only key paths and public key ids.
"""

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
    Output,
    Overwrite,
    Precision,
    Quiet,
    Seed,
    Shard,
    command,
    emit_training_result,
    training_options,
)
from medtools.core import report

KeyFile = Annotated[Path, typer.Option("-k", "--key", help="Client key file (klt-keygen; mode 0600).")]
Widths = Annotated[str, typer.Option("--widths", help="Channels of each scale's stage, comma-separated.")]


def register(app: typer.Typer) -> None:
    app.command("ae-train")(ae_train)
    app.command("klt-keygen")(klt_keygen)
    app.command("klt-encode")(klt_encode)
    app.command("umn-train")(umn_train)
    app.command("umn-map")(umn_map)
    app.command("klt-decode")(klt_decode)
    app.command("collab-eval")(collab_eval)
    app.command("collab-attack")(collab_attack)


def _ints(text: str | None, flag: str) -> list[int]:
    from medtools.core.errors import UsageError

    try:
        return [int(t) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None


@command
@training_options(epochs=30, batch_size=8, lr=2e-3)
def ae_train(
    inputs: Inputs,
    output: CheckpointOut,
    kind: Annotated[str, typer.Option("--kind", help="image (intensity AE) or mask (binary mask AE).")] = "image",
    size: Annotated[int, typer.Option("--size", min=16, help="Images are resized to size×size (divisible by 2^scales).")] = 256,
    widths: Widths = "32,64,128,256",
    latent_channels: Annotated[str, typer.Option("--latent-channels", help="Latent channels of each scale (S/2, S/4, …).")] = "4,8,16,32",
    latent_noise: Annotated[float, typer.Option("--latent-noise", min=0.0, help="Training noise on the latents (relative RMS) so decoding tolerates mapping errors.")] = 0.05,
    options=None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Train a client's skip-connected image or mask autoencoder with multi-scale latents."""
    from medtools.collab.autoencoder import train_autoencoder

    record = report.RunRecord(seed=options.seed)
    result = train_autoencoder(
        inputs, output, options=options, target=kind, size=size, widths=_ints(widths, "--widths"), latent_channels=_ints(latent_channels, "--latent-channels"),
        latent_noise=latent_noise,
    )
    emit_training_result(result, json_output, record)
    return 0


@command
def klt_keygen(
    output: Annotated[Path, typer.Option("-o", "--output", help="Key file to write (mode 0600).")],
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="An ae-image/ae-mask checkpoint: the key fits its latent channels.")] = None,
    latent_channels: Annotated[Optional[str], typer.Option("--latent-channels", help="Latent channels per scale, if no -m (default 4,8,16,32).")] = None,
    bias_scale: Annotated[float, typer.Option("--bias-scale", min=0.0, help="Standard deviation of the bias b.")] = 1.0,
    transform: Annotated[str, typer.Option("--transform", help="linear (z' = Qᵀz + b) or nonlinear (the same, then keyed invertible coupling layers).")] = "linear",
    block_permute: Annotated[int, typer.Option("--block-permute", min=0, help="Also permute G×G blocks of every latent scale's grid by the key (0: off; G must divide every scale's size).")] = 0,
    layers: Annotated[Optional[int], typer.Option("--layers", min=1, help="nonlinear: coupling layers per scale (default 2).")] = None,
    hidden: Annotated[Optional[int], typer.Option("--hidden", min=1, help="nonlinear: channels of each coupling layer's keyed conditioner (default 16).")] = None,
    kernel: Annotated[Optional[int], typer.Option("--kernel", min=1, help="nonlinear: odd kernel size of the conditioner's convolutions (default 3).")] = None,
    gain: Annotated[Optional[float], typer.Option("--gain", min=0.0, help="nonlinear: strength of the coupling layers (0: linear again; default 1).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Reproducible key (tests and examples only; default: OS CSPRNG).")] = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Make a client key: per-scale random orthogonal Q and bias b (linear), plus keyed coupling layers (nonlinear) and a block permutation (--block-permute)."""
    from medtools.collab.klt import keygen_job

    return keygen_job(
        output, model=model, latent_channels=_ints(latent_channels or "4,8,16,32", "--latent-channels"), bias_scale=bias_scale, seed=seed, overwrite=overwrite,
        transform=transform, block_permute=block_permute, layers=layers, hidden=hidden, kernel=kernel, gain=gain,
    )


@command
def klt_encode(
    inputs: Inputs,
    model: Model,
    key: KeyFile,
    output: Output = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store latents in float16 (half the payload).")] = False,
    batch_size: BatchSize = None,
    shard: Shard = None,
    device: Device = None,
    precision: Precision = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Client: images (ae-image) or masks (ae-mask) → protected multi-scale latents (one .safetensors each)."""
    from medtools.collab.latents import encode_images, finish
    from medtools.core.inputs import check_output_arg

    record = report.RunRecord()
    record.add_checkpoint(model)
    outcome = encode_images(inputs, model, key, check_output_arg(output, 2), fp16=fp16, batch_size=batch_size or 16, device=device, precision=precision, overwrite=overwrite, shard=shard)
    return finish(outcome, record)


@command
@training_options(epochs=30, batch_size=8, lr=2e-3)
def umn_train(
    inputs: Annotated[list[str], typer.Argument(help="Protected latent files or folders (image and mask latents of several clients).", show_default=False)],
    output: CheckpointOut,
    keys: Annotated[Optional[Path], typer.Option("--keys", help="Folder (or file) of the clients' keys; without it the UMN learns in the protected space.")] = None,
    widths: Widths = "32,64,128,256",
    dp_epsilon: Annotated[Optional[float], typer.Option("--dp-epsilon", help="Train with DP-SGD (opacus) to this privacy budget ε (against membership inference).")] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="DP δ (must be < 1/number of latent pairs).")] = 1e-3,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="DP-SGD per-sample gradient clipping norm C.")] = 1.0,
    options=None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Server: train the Unified Mapping Network on (image, mask) latent pairs of several clients; optional DP-SGD."""
    from medtools.collab.umn import train_umn

    record = report.RunRecord(seed=options.seed)
    result = train_umn(inputs, output, options=options, keys=keys, widths=_ints(widths, "--widths"), dp_epsilon=dp_epsilon, dp_delta=dp_delta, max_grad_norm=max_grad_norm)
    emit_training_result(result, json_output, record)
    return 0


@command
def umn_map(
    inputs: Inputs,
    model: Model,
    key: Annotated[Optional[Path], typer.Option("-k", "--key", help="The client's key (plain-space UMN; the seed's protocol).")] = None,
    output: Output = None,
    batch_size: BatchSize = None,
    shard: Shard = None,
    device: Device = None,
    precision: Precision = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Server: protected image latents → protected mask latents (invert → map → re-apply)."""
    from medtools.collab.latents import finish
    from medtools.collab.umn import map_latents
    from medtools.core.inputs import check_output_arg

    record = report.RunRecord()
    record.add_checkpoint(model)
    outcome = map_latents(inputs, model, key, check_output_arg(output, 2), batch_size=batch_size or 16, device=device, precision=precision, overwrite=overwrite, shard=shard)
    return finish(outcome, record)


@command
def klt_decode(
    inputs: Inputs,
    model: Model,
    key: Annotated[Optional[Path], typer.Option("-k", "--key", help="The client's key (omit to decode the latents as they are: an eavesdropper's view).")] = None,
    output: Output = None,
    batch_size: BatchSize = None,
    shard: Shard = None,
    device: Device = None,
    precision: Precision = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Client: remove the transform and decode: masks (ae-mask, 0/255) or images (ae-image) in the input's size and format."""
    from medtools.collab.latents import decode_latents, finish
    from medtools.core.inputs import check_output_arg

    record = report.RunRecord()
    record.add_checkpoint(model)
    outcome = decode_latents(inputs, model, key, check_output_arg(output, 2), batch_size=batch_size or 16, device=device, precision=precision, overwrite=overwrite, shard=shard)
    return finish(outcome, record)


@command
def collab_eval(
    pred: Annotated[Path, typer.Argument(help="Folder of decoded masks.", show_default=False)],
    truth: Annotated[Path, typer.Option("--truth", help="Folder of ground-truth masks (matched by case name).")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Clean images, for --ae-image PSNR/SSIM.")] = None,
    ae_image: Annotated[Optional[Path], typer.Option("--ae-image", help="Image autoencoder to score (PSNR/SSIM).")] = None,
    ae_mask: Annotated[Optional[Path], typer.Option("--ae-mask", help="Mask autoencoder to score on --truth (PSNR, Dice).")] = None,
    batch_size: BatchSize = None,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Dice/IoU of decoded masks (with empty and all-foreground baselines) and autoencoder quality."""
    from medtools.collab.evaluate import eval_job

    return eval_job(pred, truth, images=images, ae_image=ae_image, ae_mask=ae_mask, batch_size=batch_size or 16, device=device)


@command
def collab_attack(
    latents: Annotated[Optional[list[str]], typer.Argument(help="Victim's protected image latents (known-plaintext / eavesdropper attacks).", show_default=False)] = None,
    images: Annotated[Optional[list[Path]], typer.Option("--images", help="Victim's clean images, repeatable (the first --known are the attacker's known plaintexts; the rest are scored).")] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="Attacker's ae-image: the victim's (exact pairs) or a surrogate trained on public images.")] = None,
    known: Annotated[int, typer.Option("--known", min=1, help="Known plaintext images.")] = 1,
    known_pairs: Annotated[Optional[str], typer.Option("--known-pairs", help="Pixel pairs per scale to try, comma-separated (default d/2, d, d+1, 2d, 4(d+1), all).")] = None,
    known_images: Annotated[Optional[str], typer.Option("--known-images", help="Known-plaintext curve: numbers N of known images, comma-separated (e.g. 1,2,4,8,16,32); closed-form fit and a learned inverse per N.")] = None,
    inverse_steps: Annotated[int, typer.Option("--inverse-steps", min=1, help="Training steps of the learned inverse per N (--known-images).")] = 200,
    true_key: Annotated[Optional[Path], typer.Option("--true-key", help="Evaluator only: the victim's key, to report key-recovery error.")] = None,
    public: Annotated[Optional[Path], typer.Option("--public", help="Learned inversion: public images to train a key-agnostic decoder on (random keys per batch).")] = None,
    inversion_epochs: Annotated[int, typer.Option("--inversion-epochs", min=1, help="Epochs of the learned inversion attacker.")] = 20,
    umn: Annotated[Optional[Path], typer.Option("--umn", help="Membership inference on this UMN (needs --members, --nonmembers).")] = None,
    members: Annotated[Optional[list[Path]], typer.Option("--members", help="Latent pairs the UMN was trained on.")] = None,
    nonmembers: Annotated[Optional[list[Path]], typer.Option("--nonmembers", help="Latent pairs of held-out patients.")] = None,
    keys: Annotated[Optional[Path], typer.Option("--keys", help="Keys for the membership attack (the server's view).")] = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Attack protected latents: no key, wrong key, known plaintext (--known-pairs, --known-images), learned inversion (--public); MIA on the UMN (--umn)."""
    from medtools.collab.attacks import attack_job

    return attack_job(
        latents, images=images, model=model, known=known, known_pairs=_ints(known_pairs, "--known-pairs"), true_key=true_key, public=public,
        inversion_epochs=inversion_epochs, umn=umn, members=members, nonmembers=nonmembers, keys=keys, seed=seed, batch_size=batch_size or 16, device=device,
        known_images=_ints(known_images, "--known-images"), inverse_steps=inverse_steps,
    )
