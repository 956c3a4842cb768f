"""One training loop for every ``*-train`` command.

Families give the model, the dataset and ``step(model, batch) -> loss`` (plus an optional
``validate(model) -> metrics``); this loop does the rest: seeding, device and precision,
optional torch.compile, DDP under ``torchrun``, EMA, progress and per-epoch logs,
a checkpoint every epoch (model weights + a ``.train-state.safetensors`` sidecar with the
optimizer, EMA and RNG state) and ``--resume`` from that sidecar.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core import ckpt, report
from medtools.core.device import autocast, resolve_device, resolve_precision, seed_everything
from medtools.core.errors import CheckpointError, UsageError


@dataclass
class TrainSpec:
    """Everything the loop needs besides model, data and step; CLI flags map onto it."""

    output: Path
    kind: str
    config: dict[str, Any]
    norm: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str | None = None
    precision: str | None = None
    compile: bool = False
    workers: int = 0
    resume: bool = False
    ema_decay: float | None = None
    steps_per_epoch: int | None = None  # cap (None = one pass over the data)
    grad_clip: float | None = None
    monitor: str | None = None  # validation metric logged as "best"
    keep_best: bool = False  # with monitor: -o ends as the best-monitor epoch's weights, the last epoch at <stem>.last.safetensors
    schedule: str | None = None  # learning rate per step: None (constant) | "poly" (nnU-Net, power 0.9) | "cosine"
    precise_bn_batches: int = 50  # recompute BatchNorm statistics before each save (0 = off)
    drop_last: bool = False


def state_path(output: Path) -> Path:
    """``seg.safetensors`` → ``seg.train-state.safetensors``."""
    name = output.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    return output.with_name(stem + ".train-state.safetensors")


def sibling_path(output: Path, tag: str) -> Path:
    """``seg.safetensors`` → ``seg.<tag>.safetensors`` (``best`` during training, ``last`` after keep_best)."""
    name = output.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    return output.with_name(f"{stem}.{tag}.safetensors")


SCHEDULES = ("poly", "cosine")


def lr_factor(schedule: str | None, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``:
    poly ``(1 − t)^0.9`` (nnU-Net, Isensee et al. 2021) or cosine ``(1 + cos πt) / 2``."""
    if not schedule:
        return 1.0
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise UsageError(f"unknown --schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


def distributed_context() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


class EMA:
    """Exponential moving average of parameters (kept in fp32 on the model's device)."""

    def __init__(self, model: Any, decay: float):
        import torch

        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if torch.is_floating_point(v)}

    def update(self, model: Any) -> None:
        import torch

        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key in self.shadow:
                    self.shadow[key].lerp_(value.detach().float(), 1.0 - self.decay)

    def state_dict_for(self, model: Any) -> dict[str, Any]:
        """The model's state dict with EMA values substituted for floating tensors."""
        state = dict(model.state_dict())
        for key, value in self.shadow.items():
            state[key] = value.to(state[key].dtype)
        return state


def _move(batch: Any, device: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


def _optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flatten an optimizer state dict into tensors + JSON-able rest (safetensors holds no pickles)."""
    import torch

    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _restore_optimizer(optimizer: Any, tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def recalibrate_batchnorm(model: Any, loader: Any, device: Any, batches: int, inputs: Callable[[Any], Any]) -> bool:
    """Recompute BatchNorm running statistics with the final weights ("precise BN",
    Wu & Johnson 2021): with few steps and a fast optimizer the running averages lag the
    weights and eval-mode predictions collapse. Returns False when the model has no BN."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= batches:
                break
            model(inputs(_move(batch, device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True


def fit(
    model: Any,
    train_set: Any,
    step: Callable[[Any, Any], Any],
    spec: TrainSpec,
    *,
    validate: Callable[[Any], dict[str, float]] | None = None,
    optimizer_factory: Callable[[Any], Any] | None = None,
    prepare: Callable[[Any, Any, Any], tuple[Any, Any, Any]] | None = None,
    after_epoch: Callable[[int, Any], dict[str, Any]] | None = None,
    collate_fn: Callable | None = None,
    model_inputs: Callable[[Any], Any] | None = None,
    batch_sampler: Any | None = None,
) -> dict[str, Any]:
    """Train ``model`` and write ``spec.output`` each epoch; returns history and final metrics.

    ``step(model, batch)`` returns a scalar loss (batch already on the device, inside
    autocast). ``prepare(model, optimizer, loader)`` may wrap all three (e.g. opacus);
    ``after_epoch(epoch, model)`` returns extra provenance to store (e.g. DP epsilon).
    ``model_inputs(batch)`` picks the model input from a batch for BatchNorm
    recalibration (default: the first element); pass ``spec.precise_bn_batches=0`` to skip.
    ``batch_sampler`` (e.g. :class:`medtools.core.data.ForegroundBatchSampler`) replaces the
    shuffled batches; its ``set_epoch(epoch)`` is called each epoch so a resumed run sees the
    same batches.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    rank, local_rank, world = distributed_context()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and spec.device not in ("cpu",) else "gloo"
            dist.init_process_group(backend=backend)
        device = torch.device(f"cuda:{local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device, training=True)
    seed_everything(spec.seed)
    is_main = rank == 0

    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_factory(model) if optimizer_factory else torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    ema = EMA(model, spec.ema_decay) if spec.ema_decay else None

    start_epoch, history = 0, []
    sidecar = state_path(spec.output)
    if spec.resume:
        if not sidecar.exists():
            raise CheckpointError(f"--resume: no training state at {sidecar}")
        saved = ckpt.load(sidecar, kind="train-state")
        if saved.config.get("for", spec.kind) != spec.kind:
            raise CheckpointError(f"--resume: {sidecar} is the training state of a {saved.config['for']} model, not {spec.kind}")
        try:
            model.load_state_dict({k[len("model."):]: v for k, v in saved.tensors.items() if k.startswith("model.")})
            _restore_optimizer(optimizer, saved.tensors, saved.config["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:240] or type(exc).__name__
            raise CheckpointError(f"--resume: {sidecar} does not match this model and its options ({reason})") from None
        if ema is not None:
            for key in ema.shadow:
                if f"ema.{key}" in saved.tensors:
                    ema.shadow[key] = saved.tensors[f"ema.{key}"].to(device).float()
        if "rng.cpu" in saved.tensors:
            torch.set_rng_state(saved.tensors["rng.cpu"])
        start_epoch = int(saved.config["epoch"])
        history = list(saved.config.get("history", []))
        report.log(f"resuming from epoch {start_epoch} ({sidecar})")

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed) if distributed else None
    generator = torch.Generator().manual_seed(spec.seed)
    if batch_sampler is not None:
        if distributed:
            if not hasattr(batch_sampler, "set_rank"):
                raise UsageError("this batch sampler cannot run under torchrun (it has no set_rank)")
            batch_sampler.set_rank(rank)  # each process draws its own batches
        loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=spec.workers, pin_memory=device.type == "cuda", collate_fn=collate_fn, persistent_workers=spec.workers > 0)
    else:
        loader = DataLoader(
            train_set,
            batch_size=spec.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=spec.workers,
            pin_memory=device.type == "cuda",
            drop_last=spec.drop_last,
            generator=generator,
            collate_fn=collate_fn,
            persistent_workers=spec.workers > 0,
        )
    if len(loader) == 0:
        raise UsageError(f"batch size {spec.batch_size} leaves no batch from {len(train_set)} training items")

    train_model = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if prepare is not None:
        train_model, optimizer, loader = prepare(train_model, optimizer, loader)
    if spec.compile:
        train_model = torch.compile(train_model)

    steps = spec.steps_per_epoch or len(loader)
    extra: dict[str, Any] = {}
    best: float | None = None
    best_epoch: int | None = None
    if spec.monitor:  # a resumed run knows the best epoch so far from its history
        for past in history:
            if spec.monitor in past and (best is None or past[spec.monitor] > best):
                best, best_epoch = past[spec.monitor], past["epoch"]
    best_file = sibling_path(spec.output, "best")
    if spec.keep_best and spec.resume and best_epoch is not None and spec.output.exists() and not best_file.exists():
        import shutil

        shutil.copyfile(spec.output, best_file)  # a finished run's -o is its best epoch: keep it while -o is rewritten
    base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]  # kept in the optimizer state, so --resume continues the schedule
    total_steps = steps * spec.epochs
    started = time.time()
    for epoch in range(start_epoch, spec.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        # The shuffle order is a function of (seed, epoch), so a resumed run sees the same
        # batches as an uninterrupted one.
        generator.manual_seed(spec.seed * 1_000_003 + epoch)
        if batch_sampler is not None and hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        train_model.train()
        epoch_start, total, count = time.time(), 0.0, 0
        iterator = iter(loader)
        for index in report.progress(range(steps), total=steps, description=f"epoch {epoch + 1}/{spec.epochs}"):
            if spec.schedule:
                factor = lr_factor(spec.schedule, epoch * steps + index, total_steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                batch = next(iterator)
            batch = _move(batch, device)
            with autocast(device, precision):
                loss = step(train_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UsageError(f"loss became {value} at epoch {epoch + 1}; lower --lr")
            total += value
            count += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(count, 1), "seconds": round(time.time() - epoch_start, 2)}
        if after_epoch is not None:
            extra.update(after_epoch(epoch + 1, model))
            record.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
        if ema is None and spec.precise_bn_batches and prepare is None:
            recalibrate_batchnorm(model, loader, device, spec.precise_bn_batches, model_inputs or (lambda b: b[0] if isinstance(b, (list, tuple)) else b))
        weights = ema.state_dict_for(model) if ema is not None else model.state_dict()
        if is_main and validate is not None:
            eval_model = model
            if ema is not None:
                import copy

                eval_model = copy.deepcopy(model)
                eval_model.load_state_dict(weights)
            eval_model.eval()
            with torch.no_grad(), autocast(device, precision):
                record.update(validate(eval_model))
        improved = False
        if spec.monitor and spec.monitor in record:
            improved = best is None or record[spec.monitor] > best
            if improved:
                best, best_epoch = record[spec.monitor], epoch + 1
        history.append(record)
        if is_main:
            report.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            provenance = {**spec.provenance, **extra, "epochs": epoch + 1, "seed": spec.seed, "history": history}
            ckpt.save(spec.output, weights, kind=spec.kind, config=spec.config, norm=spec.norm, provenance=provenance)
            if spec.keep_best and improved:
                ckpt.save(best_file, weights, kind=spec.kind, config=spec.config, norm=spec.norm, provenance={**provenance, "best_epoch": epoch + 1, "monitor": spec.monitor})
            opt_tensors, opt_plain = _optimizer_tensors(optimizer)
            state = {f"model.{k}": v for k, v in model.state_dict().items()}
            state.update(opt_tensors)
            if ema is not None:
                state.update({f"ema.{k}": v for k, v in ema.shadow.items()})
            state["rng.cpu"] = torch.get_rng_state()
            ckpt.save(sidecar, state, kind="train-state", config={"epoch": epoch + 1, "optimizer": opt_plain, "history": history, "for": spec.kind})
        if distributed:
            torch.distributed.barrier()
    if distributed:
        torch.distributed.destroy_process_group()
    if is_main and spec.keep_best and best_file.exists():
        os.replace(spec.output, sibling_path(spec.output, "last"))
        os.replace(best_file, spec.output)
    final = history[-1] if history else {}
    return {
        "output": str(spec.output),
        "device": str(device),
        "precision": precision,
        "world_size": world,
        "epochs": spec.epochs,
        "final": final,
        "best": best,
        "best_epoch": best_epoch,
        "history": history,
        "train_seconds": round(time.time() - started, 2),
        **({"extra": json.loads(json.dumps(extra, default=str))} if extra else {}),
    }
