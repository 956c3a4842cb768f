"""Turn positional arguments into items and items into output paths.

Arguments are files, folders (walked recursively for supported files; a folder of DICOM
files is one series item when ``series=True``), globs, or ``-`` (paths on stdin, one per
line). Each item keeps a path relative to the argument it came from, and outputs under
``-o`` mirror that relative layout.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medtools.core.errors import InputError, UsageError
from medtools.core.io import DICOM_EXTS, IMAGE_EXTS, _looks_like_dicom, split_ext


@dataclass(frozen=True)
class Item:
    path: Path  # where to read it
    rel: Path  # relative path used to mirror it under -o

    def __str__(self) -> str:
        return str(self.path)


def _has_ext(path: Path, exts: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(e) for e in exts)


def _is_series_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(p.suffix.lower() in DICOM_EXTS or _looks_like_dicom(p) for p in files)


def _walk(root: Path, exts: Sequence[str], series: bool) -> Iterable[Item]:
    if series and _is_series_folder(root):
        yield Item(root, Path(root.name))
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if series and here != root and _is_series_folder(here):
            dirnames[:] = []
            yield Item(here, here.relative_to(root))
            continue
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if _has_ext(path, exts):
                yield Item(path, path.relative_to(root))


def _leading_plain_parts(pattern: str) -> list[str]:
    """The folders of a glob before its first wildcard: 'data/*/x.nii' → ['data']."""
    parts = list(Path(pattern).parts[:-1])
    plain = []
    for part in parts:
        if glob.has_magic(part):
            break
        plain.append(part)
    return plain


def _mirrored(paths: Sequence[Path], exts: Sequence[str] = IMAGE_EXTS, series: bool = False) -> list[Item]:
    """Items for paths given on stdin: relative paths mirror as they are; absolute ones
    (or ones with '..') mirror relative to their common folder, so that
    ``find /data -name '*.nii.gz' | medtools convert - -o out`` keeps /data's layout.
    A folder is walked as on the command line (``ls -d cases/* | medtools … -``)."""
    outside = [p for p in paths if p.is_absolute() or ".." in p.parts]
    base = None
    if outside:
        absolute = [Path(os.path.abspath(p)) for p in outside]
        base = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    items = []
    for path in paths:
        rel = Path(os.path.abspath(path)).relative_to(base) if path.is_absolute() or ".." in path.parts else path
        if path.is_dir():
            items.extend(Item(found.path, rel if found.path == path else rel / found.rel) for found in _walk(path, exts, series))
        else:
            items.append(Item(path, rel))
    return items


def expand_inputs(
    args: Sequence[str | Path],
    *,
    exts: Sequence[str] = IMAGE_EXTS,
    series: bool = False,
    stdin: Iterable[str] | None = None,
) -> list[Item]:
    """Expand files, folders, globs and '-' into sorted, de-duplicated items.

    Raises InputError (exit 5) when nothing usable is found; a named file that does not
    exist is also an InputError so that typos are not silently ignored.
    """
    items: list[Item] = []
    for arg in args:
        arg = str(arg)
        if arg == "-":
            source = stdin if stdin is not None else sys.stdin
            items.extend(_mirrored([Path(line.strip()) for line in source if line.strip()], exts, series))
            continue
        path = Path(arg)
        if path.is_dir():
            items.extend(_walk(path, exts, series))
        elif path.is_file():
            items.append(Item(path, Path(path.name)))
        elif glob.has_magic(arg):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True)) if Path(m).is_file()]
            plain = _leading_plain_parts(arg)  # mirror the layout below the glob's fixed folders
            items.extend(Item(m, m.relative_to(Path(*plain)) if plain else m) for m in matches)
        else:
            raise InputError(f"no such file or folder: {arg}")
    seen: set[Path] = set()
    unique = []
    for item in items:
        key = item.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    if not unique:
        raise InputError(f"no supported input found in {' '.join(map(str, args)) or '(nothing)'} (supported: {', '.join(exts)})")
    return unique


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'K/N' (1-based K) → (K, N); default from SLURM_ARRAY_TASK_ID/COUNT when set."""
    if spec is None:
        task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return None
        try:
            minimum = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
            k, n = (int(task) - minimum) // max(step, 1) + 1, int(count)
        except ValueError:
            raise UsageError(f"SLURM_ARRAY_TASK_ID={task!r}/SLURM_ARRAY_TASK_COUNT={count!r} are not integers; pass --shard K/N") from None
        if not (n >= 1 and 1 <= k <= n):
            raise UsageError(f"SLURM_ARRAY_TASK_ID={task} (min {minimum}, step {step}) is not one of {n} parts; pass --shard K/N")
        return k, n
    try:
        k_text, n_text = spec.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise UsageError(f"--shard must look like K/N (e.g. 2/8), got {spec!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise UsageError(f"--shard {spec}: need 1 <= K <= N")
    return k, n


def shard_items(items: Sequence[Item], shard: tuple[int, int] | None) -> list[Item]:
    """The K-th of N deterministic parts of the items sorted by path (round robin)."""
    ordered = sorted(items, key=lambda i: str(i.path))
    if shard is None:
        return list(ordered)
    k, n = shard
    return ordered[k - 1 :: n]


def output_for(item: Item, output: Path, *, ext: str | None = None, suffix: str = "", single: bool = False) -> Path:
    """Where the output of ``item`` goes: ``output/<rel>`` with a new extension/suffix.

    With ``single`` and an ``output`` that is not an existing folder and has an extension,
    ``output`` is the file itself.
    """
    if single and not output.is_dir() and split_ext(output)[1]:
        target = output
    else:
        stem, old_ext = split_ext(item.rel)
        if item.path.is_dir():  # DICOM series folder
            stem, old_ext = item.rel.name, ""
        rel_parent = item.rel.parent
        target = output / rel_parent / f"{stem}{suffix}{ext if ext is not None else old_ext}"
    if target.resolve() == item.path.resolve():
        raise UsageError(f"output would overwrite the input {item.path}; choose another -o")
    return target


def check_output_arg(output: Path | None, n_items: int) -> Path:
    if output is None:
        raise UsageError("missing -o/--output (a folder for batches, a file for one result)")
    if n_items > 1 and output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file but there are {n_items} inputs; give a folder")
    return output
