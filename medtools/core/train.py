"""One training loop for every ``*-train`` command.

Families give the model, the dataset and ``step(model, batch) -> loss`` (plus an optional
``validate(model) -> metrics``); this loop does the rest: seeding, device and precision,
optional torch.compile, DDP under ``torchrun``, EMA, progress and per-epoch logs,
a checkpoint every epoch (model weights + a ``.train-state.safetensors`` sidecar with the
optimizer, EMA and random-stream state) and ``--resume`` from that sidecar.

Reproducibility: every random stream of a run is derived from its seed
(:func:`derive_seed`), one per purpose (:class:`RandomStreams`): the initial weights
(:func:`initial_weights`), the shuffle order, the DataLoader workers, per-item draws of
datasets that ask for them (``item_seeds``), augmentation, and the global torch stream the
step uses (dropout, noise). Each epoch's streams are a function of (seed, purpose, rank,
epoch), so ``--resume`` after epoch k continues exactly like an uninterrupted run and the
result is the same for any number of ``--workers``. On CPU the same seed gives bit-identical
checkpoints; on CUDA that needs ``deterministic`` (docs/cli.md). Wall times are kept apart
from what must match: the checkpoint's ``medtools.timings``, never ``medtools.history``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core import report
from medtools.core.device import autocast, resolve_device, resolve_precision
from medtools.core.errors import CheckpointError, UsageError


@dataclass(frozen=True)
class TrainOptions:
    """The settings every ``*-train`` command shares (the flags of the same names), with
    their defaults in this one place. A trainer keeps its own defaults as a copy with a few
    fields changed (``DEFAULTS = TrainOptions(epochs=20, batch_size=32)``) and declares only
    its own settings; :func:`train_options` merges what a caller passes."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None
    precision: str | None = None
    compile: bool = False
    workers: int = 0
    resume: bool = False
    steps_per_epoch: int | None = None  # cap (None = one pass over the data)
    deterministic: bool = False  # CUDA: deterministic kernels (torch.use_deterministic_algorithms + cuBLAS workspace)
    keep_ids: bool = False  # store the training case/patient ids, as keyed HMACs only (core.ids)
    id_key: Path | None = None  # the 256-bit key of those HMACs (a `keys gen-key` file)

    def __post_init__(self) -> None:
        if self.keep_ids and self.id_key is None:
            raise UsageError("--keep-ids stores ids only as keyed HMACs: give --id-key FILE too (make one with `medtools keys gen-key FILE`)")
        if self.id_key is not None and not self.keep_ids:
            raise UsageError("--id-key is the key of --keep-ids: add --keep-ids, or drop --id-key (checkpoints hold no ids by default)")

    def replace(self, **changes: Any) -> "TrainOptions":
        return dataclasses.replace(self, **changes)

    def id_provenance(self, **groups: Any) -> dict[str, Any]:
        """``{"ids": ...}`` (``medtools.ids``) with each group of ids (``train_cases=[...]``,
        ``val_patients=[...]``) as HMACs under ``id_key`` when ``keep_ids``; else ``{}``:
        a checkpoint never holds an id in the clear."""
        if not self.keep_ids:
            return {}
        from medtools.core.ids import keyed_ids
        from medtools.core.secrets import read_key_file

        return {"ids": keyed_ids(read_key_file(self.id_key), groups)}

    def spec(self, **loop: Any) -> "TrainSpec":
        """The loop's :class:`TrainSpec`: these settings plus the trainer's (output, kind, config, ...)."""
        return TrainSpec(**{name: getattr(self, name) for name in OPTION_NAMES}, **loop)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainOptions))


def train_options(options: TrainOptions | None, defaults: TrainOptions, **settings: Any) -> TrainOptions:
    """``options`` (or the trainer's ``defaults``) with any of the shared settings passed one
    by one (``epochs=3, device="cpu"``) on top; an unknown name is a TypeError as for any
    misspelt keyword."""
    unknown = sorted(set(settings) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unexpected training setting(s) {', '.join(unknown)}; the shared ones are {', '.join(OPTION_NAMES)}")
    base = options if options is not None else defaults
    return base.replace(**settings) if settings else base


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed for one random stream, a fixed function of the run's seed and the
    stream's keys (purpose name, rank, epoch, ...): SHA-256, not Python's salted hash."""
    digest = hashlib.sha256(json.dumps([int(seed), *keys], separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def initial_weights(seed: int) -> Iterator[None]:
    """Build a model inside this block: its random initialisation draws from a stream of
    ``seed`` (the same on every DDP rank) and the caller's global torch stream is left as it was.

    ``with initial_weights(options.seed): model = ckpt.new_model("seg", config)``
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        yield


class RandomStreams:
    """The named random streams of one training run, one per purpose: ``torch(name)`` is a
    CPU ``torch.Generator``, ``numpy(name)`` a ``numpy.random.Generator``. The loop reseeds
    every stream at the start of each epoch from (seed, name, rank, epoch), so a step that
    draws from ``streams.torch("augment")`` is reproducible, resumable and per-rank."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.rank = 0
        self.epoch = 0
        self._torch: dict[str, Any] = {}
        self._numpy: dict[str, Any] = {}

    def stream_seed(self, name: str, epoch: int | None = None) -> int:
        return derive_seed(self.seed, name, self.rank, self.epoch if epoch is None else epoch)

    def torch(self, name: str) -> Any:
        if name not in self._torch:
            import torch

            self._torch[name] = torch.Generator().manual_seed(self.stream_seed(name))
        return self._torch[name]

    def numpy(self, name: str) -> Any:
        if name not in self._numpy:
            import numpy as np

            self._numpy[name] = np.random.Generator(np.random.PCG64(self.stream_seed(name)))
        return self._numpy[name]

    def start(self, epoch: int, rank: int = 0) -> None:
        """Reseed every stream for ``epoch`` on ``rank``."""
        import numpy as np

        self.epoch, self.rank = int(epoch), int(rank)
        for name, generator in self._torch.items():
            generator.manual_seed(self.stream_seed(name))
        for name, generator in self._numpy.items():
            generator.bit_generator.state = np.random.PCG64(self.stream_seed(name)).state

    def names(self) -> list[str]:
        return sorted(set(self._torch) | set(self._numpy))


def _worker_init(worker_id: int) -> None:
    """DataLoader workers: python's and numpy's global streams from the worker's torch seed
    (itself drawn from the run's ``workers`` stream), never from the parent's state."""
    import random

    import numpy as np
    import torch

    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % (2**32))


class _Shuffle:
    """A random order of ``n`` items for each pass over it, from (run seed, rank, epoch, pass):
    unlike one generator shared by all passes, the order does not depend on how far
    DataLoader workers read ahead in an earlier pass."""

    def __init__(self, n: int, streams: RandomStreams):
        self.n, self.streams = n, streams
        self.passes = 0

    def restart(self) -> None:
        self.passes = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        self.passes += 1
        generator = torch.Generator().manual_seed(derive_seed(self.streams.seed, "shuffle", self.streams.rank, self.streams.epoch, self.passes))
        yield from torch.randperm(self.n, generator=generator).tolist()


class _ItemSeeds:
    """Wraps a sampler (or batch sampler) so a dataset with ``item_seeds = True`` receives
    ``(index, seed)``: the seed is a function of (run seed, rank, epoch, pass over the sampler
    in the epoch, position in the pass), so per-item random draws do not depend on which
    worker loads the item nor on how far the workers read ahead."""

    def __init__(self, sampler: Any, streams: RandomStreams, batched: bool):
        self.sampler, self.streams, self.batched = sampler, streams, batched
        self.passes = 0

    def restart(self) -> None:
        self.passes = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.passes += 1
        base = (self.streams.seed, "items", self.streams.rank, self.streams.epoch, self.passes)
        position = 0
        for entry in self.sampler:
            if self.batched:
                batch = []
                for i in entry:
                    position += 1
                    batch.append((int(i), derive_seed(*base, position)))
                yield batch
            else:
                position += 1
                yield (int(entry), derive_seed(*base, position))


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)``, cuDNN deterministic without benchmark,
    and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (needed by cuBLAS for deterministic GEMMs) for
    the block; the previous settings are restored after it."""
    if not enabled:
        yield
        return
    import torch

    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]
        if previous[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@dataclass(frozen=True, kw_only=True)
class TrainSpec(TrainOptions):
    """Everything the loop needs besides model, data and step: the shared
    :class:`TrainOptions` settings (inherited, so their defaults stay in one place) plus the
    trainer's (``TrainOptions.spec`` builds one)."""

    output: Path
    kind: str
    config: dict[str, Any]
    norm: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 1e-4
    ema_decay: float | None = None
    grad_clip: float | None = None
    monitor: str | None = None  # validation metric logged as "best"
    keep_best: bool = False  # with monitor: -o ends as the best-monitor epoch's weights, the last epoch at <stem>.last.safetensors
    schedule: str | None = None  # learning rate per step: None (constant) | "poly" (nnU-Net, power 0.9) | "cosine" | "constant"
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


SCHEDULES = ("poly", "cosine", "constant")


def lr_factor(schedule: str | None, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``:
    poly ``(1 − t)^0.9`` (nnU-Net, Isensee et al. 2021) or cosine ``(1 + cos πt) / 2``."""
    if not schedule or schedule == "constant":
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
    streams: RandomStreams | None = None,
) -> dict[str, Any]:
    """Train ``model`` and write ``spec.output`` each epoch; returns history and final metrics.

    ``step(model, batch)`` returns a scalar loss (batch already on the device, inside
    autocast). ``prepare(model, optimizer, loader)`` may wrap all three (e.g. opacus);
    ``after_epoch(epoch, model)`` returns extra provenance to store (e.g. DP epsilon).
    ``model_inputs(batch)`` picks the model input from a batch for BatchNorm
    recalibration (default: the first element); pass ``spec.precise_bn_batches=0`` to skip.
    ``batch_sampler`` (e.g. :class:`medtools.core.data.ForegroundBatchSampler`) replaces the
    shuffled batches; its ``set_epoch(epoch)`` is called each epoch so a resumed run sees the
    same batches. ``streams`` holds the step's own random streams (e.g. augmentation); the
    loop reseeds them each epoch. A dataset with ``item_seeds = True`` gets ``(index, seed)``.
    Build ``model`` inside :func:`initial_weights` so its initialisation is seeded too.
    """
    import torch

    rank, local_rank, world = distributed_context()
    distributed = world > 1
    with contextlib.ExitStack() as stack:
        stack.enter_context(deterministic_kernels(spec.deterministic))
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
        # the loop seeds the global torch stream each epoch; the caller's is restored after it
        stack.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        run = _Run(model, train_set, step, spec, device, rank, world, streams or RandomStreams(spec.seed))
        try:
            result = run.train(validate=validate, optimizer_factory=optimizer_factory, prepare=prepare, after_epoch=after_epoch, collate_fn=collate_fn, model_inputs=model_inputs, batch_sampler=batch_sampler)
        except BaseException:
            run.teardown(clean=False)
            raise
        run.teardown(clean=True)
        return result


def _shutdown_workers(loader: Any) -> None:
    """Stop a DataLoader's worker processes and pin-memory thread now, not at interpreter exit."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


class _Run:
    """One call of :func:`fit` (kept in an object so that teardown can reach what it built)."""

    def __init__(self, model: Any, train_set: Any, step: Callable, spec: TrainSpec, device: Any, rank: int, world: int, streams: RandomStreams):
        self.model, self.train_set, self.step, self.spec, self.device = model, train_set, step, spec, device
        self.rank, self.world, self.streams = rank, world, streams
        self.loaders: list[Any] = []
        self.train_model: Any = None
        self.sampler: Any = None
        self.batch_sampler: Any = None
        self.item_seeds: _ItemSeeds | None = None
        self.shuffle: _Shuffle | None = None

    def teardown(self, *, clean: bool) -> None:
        """Every rank stops its loader workers, drops its DDP wrapper (the reducer holds the
        process group's pending work) and destroys the process group before it returns, so
        no communication thread is left to the interpreter's exit (an abort there:
        "terminate called without an active exception"). After a clean run the ranks first
        meet at a barrier, so none destroys its group while another still talks to it."""
        import gc

        import torch

        for loader in self.loaders:
            _shutdown_workers(loader)
        self.loaders.clear()
        self.train_model = None
        gc.collect()
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            if clean:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def _loader(self, batch_sampler: Any, collate_fn: Callable | None) -> Any:
        import torch
        from torch.utils.data import DataLoader, DistributedSampler

        spec, streams = self.spec, self.streams
        common = dict(
            num_workers=spec.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_fn,
            persistent_workers=spec.workers > 0,
            generator=streams.torch("workers"),  # the workers' base seeds (the order comes from _Shuffle, so any --workers shuffles alike)
            worker_init_fn=_worker_init if spec.workers > 0 else None,
        )
        seeds = bool(getattr(self.train_set, "item_seeds", False))
        if batch_sampler is not None:
            if self.world > 1:
                if not hasattr(batch_sampler, "set_rank"):
                    raise UsageError("this batch sampler cannot run under torchrun (it has no set_rank)")
                batch_sampler.set_rank(self.rank)  # each process draws its own batches
            self.batch_sampler = batch_sampler
            if seeds:
                batch_sampler = self.item_seeds = _ItemSeeds(batch_sampler, streams, batched=True)
            return DataLoader(self.train_set, batch_sampler=batch_sampler, **common)
        if self.world > 1:
            sampler = self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=spec.seed)
        else:
            sampler = self.shuffle = _Shuffle(len(self.train_set), streams)
        if seeds:
            sampler = self.item_seeds = _ItemSeeds(sampler, streams, batched=False)
        return DataLoader(self.train_set, batch_size=spec.batch_size, sampler=sampler, drop_last=spec.drop_last, **common)

    def _start_epoch(self, epoch: int) -> None:
        """Every random stream of the epoch from (seed, purpose, rank, epoch): a resumed run
        and an uninterrupted one draw the same numbers from here on."""
        import torch

        self.streams.start(epoch, self.rank)
        torch.manual_seed(derive_seed(self.spec.seed, "step", self.rank, epoch))  # dropout, noise: the step's global draws
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.batch_sampler is not None and hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        if self.item_seeds is not None:
            self.item_seeds.restart()
        if self.shuffle is not None:
            self.shuffle.restart()

    def train(self, *, validate, optimizer_factory, prepare, after_epoch, collate_fn, model_inputs, batch_sampler) -> dict[str, Any]:
        import torch

        from medtools.core import ckpt

        spec, device, model = self.spec, self.device, self.model
        precision = resolve_precision(spec.precision, device, training=True)
        is_main = self.rank == 0
        distributed = self.world > 1
        torch.manual_seed(derive_seed(spec.seed, "setup"))  # anything drawn before the first epoch

        model = self.model = model.to(device)
        if device.type == "cuda":
            model = self.model = model.to(memory_format=torch.channels_last)
        optimizer = optimizer_factory(model) if optimizer_factory else torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        ema = EMA(model, spec.ema_decay) if spec.ema_decay else None

        start_epoch, history, timings = 0, [], []
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
            saved_seed = (saved.config.get("rng") or {}).get("seed", spec.seed)
            if int(saved_seed) != int(spec.seed):
                raise CheckpointError(f"--resume: {sidecar} was trained with --seed {saved_seed}, not {spec.seed}; resume with the same seed")
            if ema is not None:
                for key in ema.shadow:
                    if f"ema.{key}" in saved.tensors:
                        ema.shadow[key] = saved.tensors[f"ema.{key}"].to(device).float()
            start_epoch = int(saved.config["epoch"])
            history = list(saved.config.get("history", []))
            timings = list(saved.config.get("timings", []))
            if start_epoch >= spec.epochs and not spec.output.exists():
                # nothing left to train, and the model this state belongs to is gone: exit 0 with no
                # -o would lie (the state holds the last epoch, not -o's best epoch or its extras)
                raise CheckpointError(
                    f"--resume: {sidecar} already holds all {start_epoch} epochs but {spec.output} is missing; "
                    f"resume with more --epochs than {start_epoch} or train again without --resume"
                )
            report.log(f"resuming from epoch {start_epoch} ({sidecar})")

        loader = self._loader(batch_sampler, collate_fn)
        self.loaders.append(loader)
        if len(loader) == 0:
            raise UsageError(f"batch size {spec.batch_size} leaves no batch from {len(self.train_set)} training items")

        train_model = model
        if distributed:
            train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if prepare is not None:
            self._start_epoch(start_epoch)  # e.g. opacus draws its noise from the step stream
            train_model, optimizer, loader = prepare(train_model, optimizer, loader)
            self.loaders.append(loader)
        if spec.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model

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
        recorded = {"seed": spec.seed, "deterministic": bool(spec.deterministic)}
        for epoch in range(start_epoch, spec.epochs):
            self._start_epoch(epoch)
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
                    loss = self.step(train_model, batch)
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
            del iterator
            # what must match run to run (history) apart from wall times (timings)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(count, 1)}
            timing = {"epoch": epoch + 1, "train_seconds": round(time.time() - epoch_start, 2)}
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
            timing["seconds"] = round(time.time() - epoch_start, 2)
            history.append(record)
            timings.append(timing)
            if is_main:
                report.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in {**record, "seconds": timing["seconds"]}.items()))
                provenance = {**spec.provenance, **extra, "epochs": epoch + 1, **recorded, "history": history, "timings": timings}
                ckpt.save(spec.output, weights, kind=spec.kind, config=spec.config, norm=spec.norm, provenance=provenance)
                if spec.keep_best and improved:
                    ckpt.save(best_file, weights, kind=spec.kind, config=spec.config, norm=spec.norm, provenance={**provenance, "best_epoch": epoch + 1, "monitor": spec.monitor})
                opt_tensors, opt_plain = _optimizer_tensors(optimizer)
                state = {f"model.{k}": v for k, v in model.state_dict().items()}
                state.update(opt_tensors)
                if ema is not None:
                    state.update({f"ema.{k}": v for k, v in ema.shadow.items()})
                # every random stream of the next epoch is a function of (seed, purpose, rank, epoch):
                # the seed and the next epoch's stream seeds are the whole random state to resume from
                rng = {"seed": spec.seed, "next_epoch": epoch + 1, "streams": {name: self.streams.stream_seed(name, epoch + 1) for name in self.streams.names()}, "step": derive_seed(spec.seed, "step", 0, epoch + 1)}
                ckpt.save(sidecar, state, kind="train-state", config={"epoch": epoch + 1, "optimizer": opt_plain, "history": history, "timings": timings, "rng": rng, "for": spec.kind})
            if distributed:
                torch.distributed.barrier()
        if is_main and spec.keep_best and best_file.exists():
            os.replace(spec.output, sibling_path(spec.output, "last"))
            os.replace(best_file, spec.output)
        final = history[-1] if history else {}
        return {
            "output": str(spec.output),
            "device": str(device),
            "precision": precision,
            "deterministic": bool(spec.deterministic),
            "seed": spec.seed,
            "world_size": self.world,
            "epochs": spec.epochs,
            "final": final,
            "best": best,
            "best_epoch": best_epoch,
            "history": history,
            "timings": timings,
            "train_seconds": round(time.time() - started, 2),
            **({"extra": json.loads(json.dumps(extra, default=str))} if extra else {}),
        }
