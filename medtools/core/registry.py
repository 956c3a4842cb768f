"""Model kinds and architectures, as plain torch-free data that families register.

A family's ``models.py`` calls :func:`register_kind` once per checkpoint kind it writes
(``seg``, ``reid``, ``ddpm``, ``cls``, …) and nothing else at import time: builders are
``"module:function"`` strings resolved only when a model is built, so reading the
registry (CLI ``--arch`` choices, ``medtools info --json``, the checkpoint kind check)
never imports torch.

``core`` names no family: :func:`discover` imports ``medtools.<package>.models`` for
every sub-package of medtools that has one (the family list is whatever is installed).

Config keys: a kind lists the keys its builder takes (``builder_keys``) and the keys that
only describe the model for its users (``info_keys``: modalities, image size, class
names…). A checkpoint whose ``medtools.config`` has a key in neither is refused (exit 3),
as is an ``arch`` outside ``archs`` (when the kind has a closed list).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medtools.core.errors import CheckpointError


@dataclass(frozen=True)
class Kind:
    """One checkpoint kind: how to rebuild its model from ``medtools.config`` alone."""

    name: str
    family: str
    builder: str | None  # "module:function" taking the builder keys as keywords; None: no model (keys)
    description: str = ""
    builder_keys: tuple[str, ...] = ()
    info_keys: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()  # closed list of config["arch"] values; empty = builder decides
    open_archs: bool = False  # any name the builder library knows (timm) is accepted
    forward: str | None = None  # "module:function"(model, x, **extra) -> tensor; default model(x)
    features: str | None = None  # "module:function"(model, x) -> (N, D) features
    task: str = "image"  # "segment" (spatial output), "classify" (N, K), "denoise" (x, t), "none"
    tiny: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)  # small configs for contract tests
    default_norm: Mapping[str, Any] | None = None  # medtools.norm assumed when a checkpoint recorded none
    example: str | None = None  # "module:function"(config, n, size) -> (x, extra kwargs): contract-test inputs
    channels_key: str | None = "in_channels"
    trainer: str | None = None  # "module:function" training this kind (the *-train command's); fl-train runs it at each site

    @property
    def config_keys(self) -> tuple[str, ...]:
        return self.builder_keys + self.info_keys


KINDS: dict[str, Kind] = {}
_DISCOVERED = False


def register_kind(name: str, *, family: str, builder: str | None, **fields: Any) -> Kind:
    """Register (or re-register, e.g. on module reload) a checkpoint kind."""
    if builder is not None and ":" not in builder:
        raise ValueError(f"builder must be 'module:function', got {builder!r}")
    for key in ("builder_keys", "info_keys", "archs", "tiny"):
        if key in fields:
            fields[key] = tuple(fields[key])
    kind = Kind(name=name, family=family, builder=builder, **fields)
    previous = KINDS.get(name)
    if previous is not None and previous.family != family:
        raise ValueError(f"model kind {name!r} is already registered by family {previous.family!r}")
    KINDS[name] = kind
    return kind


def discover() -> dict[str, Kind]:
    """Import every installed family's ``models`` module once; returns the registry."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        import medtools

        for info in sorted(pkgutil.iter_modules(medtools.__path__), key=lambda i: i.name):
            if not info.ispkg or info.name == "core":
                continue
            name = f"medtools.{info.name}.models"
            try:
                if importlib.util.find_spec(name) is None:
                    continue
            except ModuleNotFoundError:
                continue
            importlib.import_module(name)
    return KINDS


def get(name: str) -> Kind:
    """The registered kind ``name`` (CheckpointError naming the known kinds otherwise)."""
    if name not in KINDS:
        discover()
    try:
        return KINDS[name]
    except KeyError:
        raise CheckpointError(f"unknown model kind {name!r}; this medtools builds: {', '.join(sorted(KINDS))}") from None


def resolve(spec: str) -> Callable[..., Any]:
    """'module:function' → the function (imports the module)."""
    module_name, func_name = spec.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def check_config(kind: Kind, config: Mapping[str, Any], *, where: str = "config") -> dict[str, Any]:
    """The builder's keywords from a full config; unknown keys or arch → CheckpointError."""
    unknown = sorted(set(config) - set(kind.config_keys))
    if unknown:
        raise CheckpointError(f"{where}: unknown {kind.name} config key(s) {', '.join(unknown)} (known: {', '.join(kind.config_keys)})")
    arch = config.get("arch")
    if arch is not None and kind.archs and not kind.open_archs and arch not in kind.archs:
        raise CheckpointError(f"{where}: unknown {kind.name} arch {arch!r}; this medtools has {', '.join(kind.archs)}")
    return {k: v for k, v in config.items() if k in kind.builder_keys}


def describe() -> list[dict[str, Any]]:
    """Plain-data view of the registry for ``info --json`` (torch-free)."""
    discover()
    return [
        {
            "kind": k.name,
            "family": k.family,
            "description": k.description,
            "archs": list(k.archs) + (["<any timm model>"] if k.open_archs else []),
            "config_keys": list(k.config_keys),
            "task": k.task,
        }
        for k in sorted(KINDS.values(), key=lambda k: k.name)
    ]
