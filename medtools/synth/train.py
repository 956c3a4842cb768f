"""DDPM training (Ho et al. 2020) through the shared loop, optionally with DP-SGD (opacus).

The step is the DDPM objective: pick t uniformly, noise the image with the training
scheduler, regress the UNet's prediction on the noise (MSE). Differential privacy wraps
model, optimizer and loader in the ``prepare`` hook of ``core.train.fit``
(``PrivacyEngine.make_private``: Poisson sampling, per-sample gradients clipped to
``max_grad_norm``, Gaussian noise calibrated so that the planned number of steps spends
exactly ``--dp-epsilon`` at ``--dp-delta``); ``after_epoch`` stores the epsilon actually
spent so far, with the accountant's history so that ``--resume`` continues the account.

The diffusers UNet2DModel needed no layer replaced for opacus 1.6: it uses GroupNorm (not
BatchNorm), Conv2d, Linear and SiLU, and attention is built from Linear layers plus a
parameter-free ``scaled_dot_product_attention``; ``ModuleValidator.validate`` finds
nothing to fix. One change was needed: opacus' default hook-based per-sample gradients
are wrong (all zero) for the convolutions that follow a self-attention block (mid block,
attention up blocks), while its functorch mode (``grad_sample_mode="functorch"``) matches
per-example autograd exactly (tests/test_synth_units.py checks this), so DP training uses
functorch mode. It is still checked at run time: a config it rejects is refused rather
than silently "fixed" (``ModuleValidator.fix`` would change the architecture, and a
checkpoint must rebuild from its config alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtools.core import ckpt, report
from medtools.core.dp import DPSGD, check_options
from medtools.core.preprocess import canonical_norm, to_model_range
from medtools.core.errors import InputError, UsageError
from medtools.core.train import TrainOptions, fit, initial_weights, train_options
from medtools.synth.images import collect_images, data_fingerprint, load_images
from medtools.synth.models import DEFAULT_ATTENTION, DEFAULT_WIDTHS, count_parameters, unet_config
from medtools.synth.schedule import scheduler_config, target_for, training_scheduler

GRAD_SAMPLE_MODE = "functorch"  # opacus' "hooks" mode gives zero per-sample grads after UNet attention blocks
DDPM_NORM = {"method": "unit", "model_range": [-1.0, 1.0]}  # [0,1] by bit depth, then 2x-1 for the UNet
TRAIN_DEFAULTS = TrainOptions(epochs=50, batch_size=16, lr=2e-4)  # synth-train's


def ddpm_step(scheduler: Any, *, null_class: int | None = None, label_dropout: float = 0.1):
    """``step(model, batch) -> loss`` for core.train.fit: the simple DDPM loss.

    With ``null_class`` (a class-conditional UNet) a batch is (images, class indices) and each
    label is replaced by the null class with probability ``label_dropout``, so one network
    learns both ε(x, t, y) and ε(x, t) for classifier-free guidance (Ho & Salimans 2022).
    """

    def step(model: Any, batch: Any) -> Any:
        import torch
        import torch.nn.functional as F

        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy = scheduler.add_noise(x0, noise, t)
        if null_class is None:
            predicted = model(noisy, t).sample
        else:
            labels = batch[1]
            dropped = torch.rand(labels.shape[0], device=labels.device) < label_dropout
            labels = torch.where(dropped, torch.full_like(labels, null_class), labels)
            predicted = model(noisy, t, class_labels=labels).sample
        return F.mse_loss(predicted.float(), target_for(scheduler, x0, noise, t).float())

    return step


def train_ddpm(
    *,
    inputs: Sequence[str],
    output: Path,
    size: int = 64,
    channels: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    attention: Sequence[int] | None = DEFAULT_ATTENTION,
    layers_per_block: int = 2,
    norm_groups: int = 8,
    timesteps: int = 1000,
    beta_schedule: str = "linear",
    ema_decay: float | None = 0.995,
    patient_regex: str | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    label: str | None = None,
    classes_from: str | Path | None = None,
    label_dropout: float = 0.1,
    options: TrainOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a DDPM on 2-D images; writes ``output`` (kind ddpm) every epoch and returns fit()'s summary.

    ``label`` (a manifest column) or ``classes_from`` (class folders of that folder) makes it
    class-conditional, with ``label_dropout`` of the labels replaced by the null class.
    ``options`` (or single shared settings such as ``epochs=3``): ``core.train.TrainOptions``,
    defaults ``TRAIN_DEFAULTS``. The noise, timesteps and label dropout of each step draw from
    the loop's per-epoch step stream (and DP-SGD's sampling and noise too), so a seed fixes them.
    """
    import torch
    from torch.utils.data import TensorDataset

    options = train_options(options, TRAIN_DEFAULTS, **settings)
    batch_size, precision = options.batch_size, options.precision

    if label and classes_from is not None:
        raise UsageError("give --label COLUMN or --classes-from DIR, not both")
    if not 0.0 <= label_dropout < 1.0:
        raise UsageError(f"--label-dropout must be in [0, 1), got {label_dropout}")
    sched_config = scheduler_config(timesteps=timesteps, beta_schedule=beta_schedule)
    refs = collect_images(inputs, patient_regex=patient_regex, label=label, classes_from=classes_from)
    class_names = sorted({r.label for r in refs if r.label}) if (label or classes_from is not None) else None
    if class_names is not None and len(class_names) < 2:
        raise InputError(f"a class-conditional model needs at least two classes, found {class_names}")
    config = unet_config(size=size, channels=channels, widths=widths, attention=attention, layers_per_block=layers_per_block, norm_groups=norm_groups, class_names=class_names)
    patients = sorted({r.patient for r in refs})
    report.log(f"{len(refs)} images of {len(patients)} patients at {size}×{size}×{channels}")
    images = to_model_range(torch.from_numpy(load_images(refs, size, channels)), canonical_norm(DDPM_NORM))
    if class_names is None:
        dataset = TensorDataset(images)
    else:
        lookup = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([lookup[r.label] for r in refs], dtype=torch.long)
        report.log("classes: " + ", ".join(f"{c} {int((labels == i).sum())}" for i, c in enumerate(class_names)) + f"; label dropout {label_dropout}")
        dataset = TensorDataset(images, labels)

    dp: DPSGD | None = None
    if dp_epsilon is not None:
        check_options(epsilon=dp_epsilon, delta=dp_delta, n_items=len(refs), unit="training images", compile=options.compile, precision=precision)
        precision = "fp32"
        per_epoch = options.steps_per_epoch or -(-len(dataset) // batch_size)
        history = None
        if options.resume and Path(output).is_file():  # ε already spent by the run being resumed
            history = (ckpt.load(output, tensors=False).provenance.get("dp") or {}).get("accountant_history")
        dp = DPSGD(
            epsilon=dp_epsilon, delta=dp_delta, max_grad_norm=max_grad_norm, planned_steps=options.epochs * per_epoch,
            grad_sample_mode=GRAD_SAMPLE_MODE, what="UNet", history=history, extra={"layers_replaced": []},
        )

    with initial_weights(options.seed):
        model = ckpt.new_model("ddpm", config)
    attention_levels = [i for i, b in enumerate(config["down_block_types"]) if b.startswith("Attn")]
    report.log(f"UNet2DModel: {count_parameters(model) / 1e6:.2f}M parameters, widths {list(widths)}, attention at levels {attention_levels}")
    scheduler = training_scheduler(sched_config)
    provenance = {
        "scheduler": sched_config,
        "train_images": len(refs),
        "train_patients": len(patients),
        "data_sha256": data_fingerprint(refs),
        **options.id_provenance(train_patients=patients, train_images=[r.path.name for r in refs]),
        **({"label_dropout": label_dropout, "class_counts": {c: sum(r.label == c for r in refs) for c in class_names}} if class_names else {}),
    }
    spec = options.replace(precision=precision).spec(
        output=Path(output),
        kind="ddpm",
        config=config,
        norm=DDPM_NORM,
        provenance=provenance,
        weight_decay=0.0,
        ema_decay=ema_decay or None,
    )
    if len(dataset) < 1:
        raise InputError("no training images")
    result = fit(
        model,
        dataset,
        ddpm_step(scheduler, null_class=config.get("null_class"), label_dropout=label_dropout),
        spec,
        prepare=dp.prepare if dp else None,
        after_epoch=dp.after_epoch if dp else None,
    )
    result.update({"train_images": len(refs), "train_patients": len(patients), "parameters": count_parameters(model)})
    return result


def scheduler_of(checkpoint: Any) -> dict[str, Any]:
    """The DDPMScheduler config a ``ddpm`` checkpoint was trained with (CheckpointError if absent)."""
    sched_config = checkpoint.provenance.get("scheduler")
    if not isinstance(sched_config, dict):
        from medtools.core.errors import CheckpointError

        raise CheckpointError(f"{checkpoint.path}: no scheduler config (medtools.scheduler) in the checkpoint metadata")
    return sched_config


def load_ddpm(path: Path | str, device: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """(checkpoint, UNet in eval mode on ``device``, DDPMScheduler config) for sampling."""
    checkpoint, model = ckpt.load_model(path, "ddpm", device)
    return checkpoint, model, scheduler_of(checkpoint)
