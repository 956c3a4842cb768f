"""--device / --precision / --compile: one parser for the CLI and the Python API.

``auto`` (the default, or env MEDTOOLS_DEVICE) means CUDA when available, else CPU with
a one-line notice. An explicit ``cuda`` on a machine without it is a usage error (exit 2):
silently falling back would hide a misconfigured job.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from medtools.core.errors import UsageError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def validate_device(spec: str | None) -> str:
    """Check the syntax of a device string (torch-free); None → env or 'auto'."""
    spec = (spec or os.environ.get("MEDTOOLS_DEVICE") or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


def resolve_device(spec: str | None = None):
    """A torch.device for the spec; see module docstring for the fallback rule."""
    spec = validate_device(spec)  # before importing torch: a typo fails at once

    import torch

    from medtools.core.report import log

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log("note: no CUDA device found, running on CPU")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available")
    return torch.device(spec)


def resolve_precision(precision: str | None, device: Any, *, training: bool = False) -> str:
    """'auto' → bf16 on CUDA where supported, else fp32 (training) or fp16 (inference on
    older GPUs); fp32 on CPU. Training never picks fp16 by itself and refuses it when asked:
    the shared loop has no loss scaler."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    is_cuda = getattr(device, "type", str(device)) == "cuda"
    if precision == "auto":
        if is_cuda:
            import torch

            if torch.cuda.is_bf16_supported():
                return "bf16"
            return "fp32" if training else "fp16"
        return "fp32"
    if precision == "fp16" and not is_cuda:
        raise UsageError("--precision fp16 needs CUDA; use fp32 or bf16 on CPU")
    if precision == "fp16" and training:
        raise UsageError("training in fp16 is not supported (use bf16 or fp32)")
    return precision


def autocast(device: Any, precision: str):
    """Autocast context for the precision (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=dtype)


def prepare_model(model: Any, device: Any, *, compile: bool = False, channels_last: bool | None = None):
    """Move to device; channels_last on CUDA for conv nets; optional torch.compile."""
    import torch

    model = model.to(device)
    if channels_last is None:
        channels_last = getattr(device, "type", "") == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch (all devices)."""
    if seed is None:
        return
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
