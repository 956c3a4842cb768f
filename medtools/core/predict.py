"""Predictor: checkpoint → model → preprocessing from ``medtools.norm`` → batched predict.

Every family's inference goes through this one class (segment, reid-eval, protect's
attackers and utility model, fid features, mia's denoiser, classify, the index):

    predictor = Predictor("seg.safetensors", kind="seg", device="auto")
    probs = predictor.predict(slices, softmax=True)     # (N, C, H, W) in [0, 1] → numpy
    logits = predictor.forward(x)                         # one differentiable batch (PGD)
    feats = predictor.features(slices)                    # (N, D) registered features

Input ``x`` is already normalised to [0, 1] by :func:`medtools.core.preprocess.normalise`
(the part that needs the whole volume); the predictor does the per-batch rest: resize to
the checkpoint's ``image_size`` (antialiased bilinear, as in training), map to the model
range (``model_range``, ``mean``/``std``), run the kind's registered forward under autocast
on the chosen device (channels_last on CUDA), and resize spatial outputs (``segment``
kinds) back to the input's size. A model is loaded once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import ckpt as ckpt_lib
from medtools.core import preprocess, registry
from medtools.core.errors import CheckpointError


class Predictor:
    """A loaded checkpoint ready for batched inference on one device."""

    def __init__(
        self,
        model: Path | str | ckpt_lib.Checkpoint,
        *,
        kind: str | tuple[str, ...] | None = None,
        device: Any = None,
        precision: str | None = None,
        compile: bool = False,
        batch_size: int = 32,
        requires_grad: bool = False,
    ):
        from medtools.core.device import prepare_model, resolve_device, resolve_precision

        checkpoint = model if isinstance(model, ckpt_lib.Checkpoint) else ckpt_lib.load(model, kind=kind)
        net = ckpt_lib.build_model(checkpoint)
        self.device = device if hasattr(device, "type") else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.checkpoint = checkpoint
        self.path = checkpoint.path
        from medtools.core.report import note_device

        note_device(self.device)
        self._setup(prepare_model(net, self.device, compile=compile), checkpoint.kind, checkpoint.config, checkpoint.norm, batch_size)
        if not requires_grad:
            for p in self.model.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_model(cls, model: Any, *, kind: str, config: dict[str, Any], norm: dict[str, Any] | None = None, precision: str = "fp32", batch_size: int = 64) -> "Predictor":
        """Wrap a model in memory (validation during training) with the same preprocessing."""
        self = cls.__new__(cls)
        self.device = next(model.parameters()).device
        self.precision = precision
        self.checkpoint = None
        self.path = None
        self._setup(model, kind, config, norm, batch_size)
        return self

    def _setup(self, model: Any, kind: str, config: dict[str, Any], norm: dict[str, Any] | None, batch_size: int) -> None:
        self.model = model
        self.kind = registry.get(kind)
        self.config = dict(config)
        self.norm = preprocess.canonical_norm(norm, dict(self.kind.default_norm) if self.kind.default_norm else None)
        size = self.config.get("image_size") or self.config.get("sample_size")
        self.size = (tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else int(size)) if size else None  # square or [H, W]
        self.batch_size = int(batch_size)
        self.modalities: list[str] = list(self.config.get("modalities") or [])
        self.class_names: list[str] = list(self.config.get("class_names") or [])
        self._forward = registry.resolve(self.kind.forward) if self.kind.forward else None
        self._features = registry.resolve(self.kind.features) if self.kind.features else None

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", len(self.modalities) or 1))

    def record(self) -> dict[str, Any]:
        """Checkpoint identity for a ``--json`` run record."""
        return {"path": str(self.path), "kind": self.kind.name, "device": str(self.device), "precision": self.precision}

    # -- one batch -------------------------------------------------------------------------
    def prepare(self, x: Any) -> Any:
        """[0, 1] tensor (N, C, H, W) → model input on the device (resize, model range)."""
        import torch

        x = x.to(self.device, non_blocking=True)
        if not x.is_floating_point():
            x = x.float()
        x = preprocess.to_model_range(preprocess.resize(x, self.size), self.norm)
        if self.device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Any, *, model_space: bool = False, **extra: Any) -> Any:
        """Model output for one batch, differentiable w.r.t. ``x`` (no autocast, no batching).

        Spatial outputs of ``segment`` kinds come back at the input's H×W; class logits as
        they are. ``model_space``: ``x`` is already model input (a DDPM's noised sample), so
        it is only moved to the device.
        """
        height, width = x.shape[-2:]
        inp = x.to(self.device, non_blocking=True) if model_space else self.prepare(x)
        out = self._forward(self.model, inp, **extra) if self._forward else self.model(inp)
        if self.kind.task == "segment" and tuple(out.shape[-2:]) != (height, width):
            import torch.nn.functional as F

            out = F.interpolate(out.float(), size=(height, width), mode="bilinear", align_corners=False)
        return out

    def embed(self, x: Any) -> Any:
        """Registered features for one batch (differentiable): (N, D)."""
        if self._features is None:
            raise CheckpointError(f"{self.kind.name} models have no registered features")
        return self._features(self.model, self.prepare(x))

    # -- batched inference ------------------------------------------------------------------
    def _batched(self, fn: Callable[..., Any], x: Any, batch_size: int | None, extra: dict[str, Any], post: Callable[[Any], Any]) -> np.ndarray:
        import torch

        from medtools.core.device import autocast

        n = len(x)
        step = int(batch_size or self.batch_size)
        out = []
        with torch.inference_mode(), autocast(self.device, self.precision):
            for start in range(0, n, step):
                chunk = x[start : start + step]
                chunk = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
                kw = {k: _batch_arg(v, start, step, len(chunk), self.device) for k, v in extra.items()}
                out.append(post(fn(chunk, **kw).float()).cpu().numpy())
        if not out:
            return np.zeros((0,), np.float32)
        return np.concatenate(out)

    def predict(self, x: Any, *, batch_size: int | None = None, softmax: bool = False, model_space: bool = False, **extra: Any) -> np.ndarray:
        """Outputs for all of ``x`` (numpy or tensor, N first) in batches → float32 numpy.

        ``extra`` keyword inputs of the kind's forward (a DDPM's ``timesteps``) are either one
        value for every item or a length-N array, batched alongside ``x``.
        """
        def fn(chunk: Any, **kw: Any) -> Any:
            return self.forward(chunk, model_space=model_space, **kw)

        return self._batched(fn, x, batch_size, extra, (lambda t: t.softmax(1)) if softmax else (lambda t: t))

    def features(self, x: Any, *, batch_size: int | None = None) -> np.ndarray:
        """(N, D) registered features (pooled bottleneck of a segmenter, pre-logits of a classifier)."""
        return self._batched(lambda chunk: self.embed(chunk), x, batch_size, {}, lambda t: t)


def _batch_arg(value: Any, start: int, step: int, n: int, device: Any) -> Any:
    import torch

    if isinstance(value, (int, float)):
        return torch.full((n,), value, device=device, dtype=torch.long if isinstance(value, int) else torch.float32)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return value.to(device).expand(n)
        return value[start : start + step].to(device)
    return value
