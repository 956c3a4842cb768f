"""Shared Typer options and the wrapper that maps errors to exit codes (the CLI side; core has no typer).

Every command is wrapped by ``command()``: a MedtoolsError becomes one line on stderr and
its exit code; SIGINT, SIGTERM and SIGHUP exit 128+n (``core.signals``: atomic writes
have already removed partial files). Options default to None so that unset flags keep
the model's or config's defaults.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medtools.core import context, report, signals
from medtools.core.errors import MedtoolsError
from medtools.core.paths import check_command_paths

Inputs = Annotated[list[str], typer.Argument(help="Files, folders, globs, or '-' for paths on stdin.", show_default=False)]
Output = Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (batches, mirrors inputs) or file (one result).")]
Model = Annotated[Path, typer.Option("-m", "--model", help="Checkpoint (.safetensors).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto|cpu|cuda|cuda:N (env MEDTOOLS_DEVICE).")]
Precision = Annotated[Optional[str], typer.Option("--precision", help="auto|fp32|bf16|fp16 (auto: bf16 on CUDA, fp32 on CPU).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model (CUDA).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Items (slices/images) per batch.", min=1)]
Workers = Annotated[int, typer.Option("--workers", help="Background I/O workers.", min=0)]
ItemWorkers = Annotated[Optional[int], typer.Option("--workers", help="Items processed at once, on threads (default: the usable cores; 0 or 1: one at a time).", min=0)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Shard = Annotated[Optional[str], typer.Option("--shard", help="K/N: process the K-th of N parts (default from SLURM_ARRAY_TASK_ID/COUNT).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them, so batches resume).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No logs or progress on stderr.")]
NanPolicy = Annotated[str, typer.Option("--nan-policy", help="Non-finite voxels (NaN/Inf) in an input: error (an item error naming the file and count) | zero | clip (±Inf to the finite max/min, NaN to the min).")]
# training commands
CheckpointOut = Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.safetensors).")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")]
Lr = Annotated[float, typer.Option("--lr", help="Learning rate (AdamW).")]
StepsPerEpoch = Annotated[Optional[int], typer.Option("--steps-per-epoch", min=1, help="Cap on optimizer steps per epoch.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT's .train-state.safetensors.")]
Deterministic = Annotated[bool, typer.Option("--deterministic", help="CUDA: deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG), recorded in the checkpoint; slower. On CPU a --seed already gives bit-identical runs.")]
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed of every random stream of the run (initial weights, batches, augmentation, workers): the same seed gives the same model.")]
KeepIds = Annotated[bool, typer.Option("--keep-ids", help="Store the training case and patient ids in the checkpoint (medtools.ids), only as HMACs under --id-key, for the hospital's own audit; by default a checkpoint holds counts and the manifest's SHA-256, never an id.")]
IdKey = Annotated[Optional[Path], typer.Option("--id-key", help="256-bit key file of --keep-ids (`medtools keys gen-key FILE`, mode 0600): its holder recomputes an id's HMAC; nobody else can.")]
TRAINING_FLAGS = (  # (parameter, Typer annotation, default when the command names none)
    ("epochs", Epochs, None),
    ("batch_size", Annotated[int, typer.Option("--batch-size", "-b", help="Items (slices/images) per batch.", min=1)], None),
    ("lr", Lr, None),
    ("steps_per_epoch", StepsPerEpoch, None),
    ("seed", TrainSeed, 0),
    ("device", Device, None),
    ("precision", Precision, None),
    ("compile", Compile, False),
    ("workers", Workers, 0),
    ("resume", Resume, False),
    ("deterministic", Deterministic, False),
    ("keep_ids", KeepIds, False),
    ("id_key", IdKey, None),
)


def training_options(*, epochs: int, batch_size: int, lr: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a ``*-train`` command (under ``@command``): adds the shared training flags
    (``TRAINING_FLAGS``) with this command's epochs, batch size and learning rate as defaults,
    and hands them to the command as one ``options`` (``core.train.TrainOptions``). The
    command declares only its own flags and an ``options`` parameter."""
    import inspect

    defaults = {"epochs": epochs, "batch_size": batch_size, "lr": lr}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func)
        if "options" not in own.parameters:
            raise TypeError(f"{func.__name__} takes no 'options' parameter")
        resolved = {}
        for param in own.parameters.values():
            if param.name == "options":
                continue
            annotation = eval(param.annotation, func.__globals__) if isinstance(param.annotation, str) else param.annotation  # noqa: S307 (the module's own annotations)
            resolved[param.name] = param.replace(annotation=annotation)
        tail = [name for name in ("json_output", "nan_policy", "quiet") if name in resolved]
        head = [p for name, p in resolved.items() if name not in tail]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=defaults.get(name, default)) for name, annotation, default in TRAINING_FLAGS]
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in head + shared + [resolved[n] for n in tail]]
        names = [name for name, _, _ in TRAINING_FLAGS]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from medtools.core.train import TrainOptions

            settings = {name: kwargs.pop(name) for name in names if name in kwargs}
            return func(*args, options=TrainOptions(**{**defaults, **{k: v for k, v in settings.items() if v is not None or k not in defaults}}), **kwargs)

        wrapper.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        wrapper.train_defaults = dict(defaults)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def emit_training_result(result: dict[str, Any], json_output: bool, record: report.RunRecord) -> None:
    """A training command's stdout: the checkpoint path, or the summary JSON with its run record."""
    if json_output:
        record.device = result.get("device")
        report.emit_json({**result, "run": {**record.as_dict(), "deterministic": bool(result.get("deterministic", False))}})
    else:
        report.emit_path(result["output"])


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Typer command body: its run context, error → exit code, signals → 128+n.

    The run context (quiet, JSON, NaN policy, permissions, device, seed, ...) is built from the
    command's own options and holds for this call only (``core.context.use``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signals.install()
        try:
            with context.use(context.RunContext.from_options(kwargs)):
                check_command_paths(kwargs)  # no output may be an input (side outputs included)
                code = func(*args, **kwargs)
        except MedtoolsError as exc:
            if os.environ.get("MEDTOOLS_DEBUG"):  # where it came from, for bug reports
                import traceback

                traceback.print_exc(file=sys.stderr)
            report.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # SIGINT, SIGTERM, SIGHUP
            print(f"interrupted ({exc})" if isinstance(exc, signals.Interrupted) else "interrupted", file=sys.stderr)
            raise typer.Exit(signals.exit_code(exc)) from None
        except BrokenPipeError:  # `medtools ... | head`: not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        if code:
            raise typer.Exit(int(code))
        return None

    return wrapper
