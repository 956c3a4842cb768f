"""What a checkpoint tells about the people it was trained on, and how to make it tell less.

A checkpoint's provenance holds counts and the SHA-256 of the training manifest, never a path or
a case/patient id: ids are often hospital identifiers, and a shared model would name who it was
trained on. A hospital that wants its own audit trail trains with ``--keep-ids --id-key FILE``:
the ids are then stored under ``medtools.ids`` as keyed HMACs (:func:`id_hmac`), which the holder
of the key recomputes from an id and nobody else can invert or test a guess against.

:func:`reveals` says what a checkpoint's metadata discloses (``info`` shows it, ``serve``
refuses what is identifying), :func:`strip_checkpoint` writes a copy without it (``ckpt strip``):
the header is rewritten and the tensor bytes are copied as they are, so every tensor stays
bit-identical. Torch-free.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEME = "hmac-sha256/v1"
_DOMAIN = b"medtools id/v1\x00"
IDS_KEY = "medtools.ids"
STRIPPED_KEY = "medtools.stripped"
_MODEL_KEYS = ("medtools.kind", "medtools.version", "medtools.config", "medtools.norm")
# provenance keys whose strings name cases or people (train_cases, val_patients, subjects, ...)
_ID_WORDS = re.compile(r"case|patient|subject|visit|accession|mrn|person|people")
# provenance keys whose strings name the training files
_DATA_WORDS = re.compile(r"^(data|files|paths|items|inputs|images|manifest)$")
_ABSOLUTE = re.compile(r"^(/[^/\x00]+)+/?$|^[A-Za-z]:[\\/]|^\\\\[^\\]+\\|^file://|^~/")
_PATH_LIKE = re.compile(r"[/\\]|\.(nii|gz|dcm|png|jpe?g|csv|npy|npz|mha|nrrd|tiff?)$", re.IGNORECASE)
REMOVED_PATH = "<path removed>"


def id_hmac(key: bytes, value: str) -> str:
    """HMAC-SHA256 of one case or patient id under a 256-bit key, hex: ``HMAC(key,
    b"medtools id/v1\\0" + id as UTF-8)``. Whoever holds the key recomputes it from the id."""
    return hmac.new(key, _DOMAIN + str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def keyed_ids(key: bytes, groups: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """``medtools.ids``: each group (``train_cases``, ``val_patients``, ...) as the sorted
    HMACs of its distinct non-empty ids, with the scheme and the key's public id."""
    from medtools.core.secrets import key_id

    out: dict[str, Any] = {"scheme": SCHEME, "key_id": key_id(key)}
    for name, values in groups.items():
        out[name] = sorted({id_hmac(key, v) for v in values if v not in (None, "")})
    return out


def _leaves(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def is_absolute_path(text: str) -> bool:
    """A POSIX or Windows absolute path, a UNC path, a file:// URI or a ~/ path."""
    return bool(_ABSOLUTE.match(text.strip())) and "\n" not in text


def _classify(key: str, value: Any) -> str | None:
    """"ids", "paths" or None for one provenance entry (key without ``medtools.``)."""
    strings = list(_leaves(value))
    if not strings:
        return None
    if _ID_WORDS.search(key.lower()):
        return "ids"
    if _DATA_WORDS.match(key.lower()) and any(_PATH_LIKE.search(s) for s in strings):
        return "paths"
    return None


def reveals(metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a checkpoint's ``__metadata__`` discloses about its training data.

    ``clear_ids``: provenance keys holding case/patient ids in the clear (old checkpoints:
    ``train_cases``, ``val_cases``, ``val_patients``); ``paths``: keys holding file paths
    (``data``, or an absolute path anywhere); ``keyed_ids``: the HMAC'ed id groups and their
    sizes with the key id, or None; ``outputs``: ids that are the model's output (a patient
    re-identification model's class names), needed to use it and kept by ``ckpt strip``;
    ``identifying``: clear ids or paths present (``serve`` refuses such a checkpoint)."""
    clear, paths = [], []
    keyed = None
    for name, text in sorted(metadata.items()):
        if name in ("medtools.kind", "medtools.version") or not name.startswith("medtools."):
            continue
        value = _parsed(text)
        short = name[len("medtools."):]
        if name == IDS_KEY and isinstance(value, dict) and value.get("scheme") == SCHEME:
            keyed = {"scheme": SCHEME, "key_id": value.get("key_id"), "groups": {k: len(v) for k, v in value.items() if isinstance(v, list)}}
            continue
        kind = None if name in _MODEL_KEYS else _classify(short, value)
        if kind == "ids":
            clear.append(short)
        elif kind == "paths" or any(is_absolute_path(s) for s in _leaves(value)):
            paths.append(short)
    config = _parsed(metadata.get("medtools.config", "{}"))
    outputs = None
    if isinstance(config, dict) and metadata.get("medtools.kind") == "reid" and config.get("label", "patient") == "patient" and config.get("class_names"):
        outputs = {"config.class_names": f"{len(config['class_names'])} patient ids (the identities this re-identification model outputs)"}
    return {"identifying": bool(clear or paths), "clear_ids": clear, "paths": paths, "keyed_ids": keyed, "outputs": outputs}


def summary(found: Mapping[str, Any]) -> str:
    """One line for ``info``: what :func:`reveals` found."""
    parts = []
    if found["clear_ids"]:
        parts.append("clear ids in " + ", ".join(found["clear_ids"]))
    if found["paths"]:
        parts.append("paths in " + ", ".join(found["paths"]))
    if found["keyed_ids"]:
        groups = ", ".join(f"{k} {n}" for k, n in found["keyed_ids"]["groups"].items())
        parts.append(f"keyed ids (HMAC, key {found['keyed_ids']['key_id']}): {groups}")
    if found["outputs"]:
        parts.extend(f"{k}: {v}" for k, v in found["outputs"].items())
    return "; ".join(parts) if parts else "no ids or paths (counts and hashes only)"


def _without_paths(value: Any) -> tuple[Any, int]:
    if isinstance(value, str):
        return (REMOVED_PATH, 1) if is_absolute_path(value) else (value, 0)
    if isinstance(value, dict):
        out, n = {}, 0
        for k, v in value.items():
            out[k], m = _without_paths(v)
            n += m
        return out, n
    if isinstance(value, list):
        pairs = [_without_paths(v) for v in value]
        return [v for v, _ in pairs], sum(m for _, m in pairs)
    return value, 0


def strip_metadata(metadata: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata without identifying entries, what was done): clear-id and path keys and the
    keyed ids are removed; an absolute path inside any other entry becomes ``<path removed>``."""
    found = reveals(metadata)
    drop = {f"medtools.{k}" for k in found["clear_ids"] + found["paths"]} | {IDS_KEY}
    out: dict[str, str] = {}
    removed, replaced = [], 0
    for name, text in metadata.items():
        value = _parsed(text)
        short = name[len("medtools."):] if name.startswith("medtools.") else name
        if name in drop and (name == IDS_KEY or _classify(short, value) is not None):
            removed.append(short)
            continue
        clean, n = _without_paths(value)
        if n:
            replaced += n
            text = clean if isinstance(clean, str) else json.dumps(clean, sort_keys=True)
        out[name] = text
    done = {"removed": sorted(removed), "paths_replaced": replaced}
    if removed or replaced:
        out[STRIPPED_KEY] = json.dumps(done, sort_keys=True)
    return out, done


def _header(path: Path) -> tuple[dict[str, Any], int]:
    from medtools.core.ckpt import read_metadata

    read_metadata(path)  # a CheckpointError (exit 3) for anything that is not a whole safetensors file
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size)), 8 + size


def strip_checkpoint(source: Path | str, output: Path | str) -> dict[str, Any]:
    """Write ``output``: ``source`` with :func:`strip_metadata` applied to its metadata and its
    tensor bytes copied unchanged (atomically; ``output`` may not be ``source``). Returns what
    was removed and what the result still reveals."""
    from medtools.core.errors import CheckpointError, UsageError
    from medtools.core.io import atomic_path

    source, output = Path(source), Path(output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise UsageError(f"-o {output} is the checkpoint being stripped; write to another file")
    header, start = _header(source)
    metadata, done = strip_metadata(dict(header.get("__metadata__") or {}))
    if "medtools.kind" not in metadata:
        raise CheckpointError(f"{source} is not a medtools checkpoint (no medtools.kind in its metadata)")
    new = {"__metadata__": metadata, **{k: v for k, v in header.items() if k != "__metadata__"}}
    data = json.dumps(new, separators=(",", ":")).encode("utf-8")
    data += b" " * (-len(data) % 8)  # the tensor data stays 8-byte aligned, as safetensors writes it
    with atomic_path(output) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        dst.write(len(data).to_bytes(8, "little"))
        dst.write(data)
        src.seek(start)
        shutil.copyfileobj(src, dst, 1 << 20)
    return {"output": str(output), **done, "reveals": reveals(metadata)}
