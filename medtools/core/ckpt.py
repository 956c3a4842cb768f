"""safetensors checkpoints with medtools metadata; models are rebuilt from config alone.

``__metadata__`` (string → string) holds ``medtools.kind``, ``medtools.version``,
``medtools.config`` (JSON), ``medtools.norm`` (JSON) and provenance keys. Loading checks
the kind; any problem (missing, truncated, wrong kind, config that does not build) is a
CheckpointError → exit 3. No pickles, ever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import CheckpointError
from medtools.core.io import atomic_path

_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Checkpoint:
    path: Path
    kind: str
    config: dict[str, Any]
    norm: dict[str, Any]
    metadata: dict[str, str]
    tensors: dict[str, Any] = field(default_factory=dict)  # name → torch.Tensor

    @property
    def provenance(self) -> dict[str, Any]:
        return {k[len("medtools."):]: _maybe_json(v) for k, v in self.metadata.items() if k.startswith("medtools.") and k not in ("medtools.kind", "medtools.config", "medtools.norm")}


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def clean_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Strip DDP/compile prefixes and make tensors contiguous, unshared copies."""
    cleaned = {}
    for name, tensor in state.items():
        while name.startswith(_PREFIXES):  # any nesting order: _orig_mod.module.x
            name = name.split(".", 1)[1]
        # a compiled submodule leaves "._orig_mod." inside names; ".module." inside a name
        # is a real submodule called "module" and is kept
        name = name.replace("._orig_mod.", ".")
        cleaned[name] = tensor.detach().cpu().contiguous().clone()
    return cleaned


def save(
    path: Path | str,
    tensors: dict[str, Any],
    *,
    kind: str,
    config: dict[str, Any],
    norm: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``tensors`` is a state dict (prefixes are stripped)."""
    from safetensors.torch import save_file

    import medtools

    metadata = {
        "medtools.kind": kind,
        "medtools.version": medtools.__version__,
        "medtools.config": json.dumps(config, sort_keys=True),
        "medtools.norm": json.dumps(norm or {}, sort_keys=True),
    }
    for key, value in (provenance or {}).items():
        metadata[f"medtools.{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(clean_state_dict(tensors), str(tmp), metadata=metadata)
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file without loading tensors (fast, torch-free)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ValueError("file too short")
            size = int.from_bytes(size_bytes, "little")
            if size <= 0 or size > 100_000_000 or size + 8 > path.stat().st_size:
                raise ValueError("bad header length")
            header = json.loads(handle.read(size))
        data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + size + data_end > path.stat().st_size:
            raise ValueError("file is truncated")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors checkpoint ({exc})") from None
    return dict(header.get("__metadata__") or {})


def load(path: Path | str, *, kind: str | tuple[str, ...] | None = None, tensors: bool = True) -> Checkpoint:
    """Read a checkpoint; check its kind. ``kind`` may be a tuple of acceptable kinds."""
    path = Path(path)
    metadata = read_metadata(path)
    found = metadata.get("medtools.kind")
    if found is None:
        raise CheckpointError(f"{path} is not a medtools checkpoint (no medtools.kind in its metadata)")
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted and found not in wanted:
        raise CheckpointError(f"{path}: expected a {' or '.join(wanted)} checkpoint, found kind {found!r}")
    try:
        config = json.loads(metadata.get("medtools.config", "{}"))
        norm = json.loads(metadata.get("medtools.norm", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt medtools.config/norm metadata ({exc})") from None
    ckpt = Checkpoint(path=path, kind=found, config=config, norm=norm, metadata=metadata)
    if tensors:
        from safetensors.torch import load_file

        try:
            ckpt.tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    return ckpt


def _builder(kind: str, config: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    """(builder function, its keywords) for a registered kind; CheckpointError for an unknown
    kind, a kind with no model, an unknown config key or arch, a builder that does not import."""
    from medtools.core import registry

    spec = registry.KINDS.get(kind) or registry.discover().get(kind)
    if spec is None or spec.builder is None:
        raise CheckpointError(f"{where}: kind {kind!r} has no model to build")
    keywords = registry.check_config(spec, config, where=where)
    try:
        return registry.resolve(spec.builder), keywords
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{where}: this medtools cannot build {kind} models ({exc})") from None


def new_model(kind: str, config: dict[str, Any]):
    """A fresh model of a registered kind from a full config (training uses this, so a
    checkpoint rebuilds exactly as it was trained). Unknown keys → CheckpointError; the
    builder's own errors (UsageError for an unknown arch or encoder) pass through."""
    from medtools.core import registry

    registry.get(kind)  # an unknown kind names the kinds this medtools builds
    builder, keywords = _builder(kind, config, f"{kind} config")
    return builder(**keywords)


def build_model(ckpt: Checkpoint, *, load_weights: bool = True):
    """Rebuild the model from the registry (kind → builder(**config)) and load its weights (strict).

    Every failure is a CheckpointError (exit 3): an unregistered kind, a kind with no model,
    an unknown config key or arch, a builder that rejects the config, weights that do not fit.
    """
    from medtools.core.errors import MedtoolsError

    builder, keywords = _builder(ckpt.kind, ckpt.config, str(ckpt.path))
    try:
        model = builder(**keywords)
    except (TypeError, ValueError, KeyError, RuntimeError, MedtoolsError) as exc:
        raise CheckpointError(f"{ckpt.path}: config does not build a {ckpt.kind} model ({exc})") from None
    if load_weights:
        try:
            model.load_state_dict(ckpt.tensors, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:3]
            raise CheckpointError(f"{ckpt.path}: weights do not match the config ({' '.join(first)})") from None
    model.eval()
    return model


def load_model(path: Path | str, kind: str | tuple[str, ...], device: Any = None):
    """Checkpoint + rebuilt model on ``device`` in eval mode."""
    ckpt = load(path, kind=kind)
    model = build_model(ckpt)
    if device is not None:
        model = model.to(device)
    return ckpt, model
