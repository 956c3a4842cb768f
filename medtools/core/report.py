"""The stdout/stderr contract: machine output on stdout, logs and progress on stderr.

stdout carries written paths (one per line) or JSON; everything for humans goes to
stderr and is silenced by ``-q`` (the run context's ``quiet``). The per-item loop, its errors
and exit codes are core/batch.py's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _quiet() -> bool:
    from medtools.core.context import current

    return current().quiet


def log(message: str) -> None:
    """A human message on stderr (silenced by -q in the run context)."""
    if not _quiet():
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr; shown even with -q because it changes what happened."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def emit_path(path: Path | str) -> None:
    """A written file's path on stdout (for xargs and pipes)."""
    print(str(path), flush=True)


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=_default, allow_nan=True)


def emit_json(obj: Any) -> None:
    """One JSON document on stdout."""
    print(to_json(obj), flush=True)


def emit_jsonl(obj: Any) -> None:
    """One JSON Lines record on stdout."""
    print(to_json(obj, indent=None), flush=True)


def emit_paths(paths: Iterable[Path | str]) -> None:
    """Written files' paths on stdout, one per line."""
    for path in paths:
        emit_path(path)


def emit_result(result: dict[str, Any], render: Any = None, *, record: "RunRecord | None" = None) -> None:
    """A command's one result on stdout: with --json (the run context) one JSON document carrying
    the ``run`` record; otherwise ``render(result)`` (a string or lines) for people, if given."""
    from medtools.core.context import current

    if current().json:
        emit_json({**result, "run": record.as_dict()} if record is not None else result)
    elif render is not None:
        text = render(result)
        lines = [text] if isinstance(text, str) else list(text)
        for line in lines:
            print(line, flush=True)


def progress(iterable: Iterable[T], *, total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate with a rich progress bar on stderr when stderr is a TTY and not quiet."""
    if _quiet() or not sys.stderr.isatty():
        yield from iterable
        return
    from rich.progress import Progress

    from rich.console import Console

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for value in iterable:
            yield value
            bar.advance(task)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RunRecord:
    """Provenance for --json results (DESIGN: versions, checkpoint hash, device, seed, time)."""

    started: float = field(default_factory=time.time)
    device: str | None = None
    seed: int | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # settings that change the outputs (segment: tta, largest_component)

    def add_checkpoint(self, path: Path | str) -> None:
        from medtools.core.errors import CheckpointError

        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        self.checkpoints[str(path)] = sha256_file(path)

    def as_dict(self) -> dict[str, Any]:
        import medtools
        from medtools.core.context import current

        devices = current().devices
        record: dict[str, Any] = {
            "medtools": medtools.__version__,
            "python": sys.version.split()[0],
            "device": self.device or (", ".join(devices) if devices else None),
            "seed": self.seed,
            "checkpoints": self.checkpoints,
            "wall_s": round(time.time() - self.started, 3),
            "argv": sys.argv[1:],
        }
        if "torch" in sys.modules:
            record["torch"] = sys.modules["torch"].__version__
        if self.options:
            record["options"] = dict(self.options)
        return record


def note_device(device: Any) -> None:
    """Record a device this run actually ran a model on (the Predictor and training call it)."""
    from medtools.core.context import current

    current().note_device(device)
