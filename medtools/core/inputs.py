"""Turn positional arguments into items and items into output paths.

Arguments are files, folders (walked recursively for supported files; a folder of DICOM
files is one series item when ``series=True``), globs, or ``-`` (paths on stdin, one per
line). Each item keeps a path relative to the argument it came from, and outputs under
``-o`` mirror that relative layout. DICOM files are recognised by extension or, without
one (PACS exports such as ``MR.1.3.12.2…``), by the ``DICM`` magic at offset 128.

Outputs and inputs never mix: an output folder inside an input folder is left out of the
walk (outputs are never re-read), and an output that would land on an input or inside a
walked input folder is refused (UsageError, exit 2), so inputs are never overwritten.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from medtools.core.errors import InputError, UsageError
from medtools.core.io.formats import DICOM_EXTS, IMAGE_EXTS, is_dicom_file, split_ext

T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    path: Path  # where to read it
    rel: Path  # relative path used to mirror it under -o
    root: Path | None = None  # the input folder it was found in (None: named directly)

    def __str__(self) -> str:
        return str(self.path)


def _has_ext(path: Path, exts: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(e) for e in exts)


def is_dicom(path: Path) -> bool:
    """A DICOM file by its extension or, failing that, by its DICM magic (read once here)."""
    return path.suffix.lower() in DICOM_EXTS or is_dicom_file(path)


def _matches(path: Path, exts: Sequence[str]) -> bool:
    if _has_ext(path, exts):
        return True
    # extension-less DICOM (or a UID-like name such as MR.1.3.12.2.1107…): the magic decides
    wants_dicom = any(e in DICOM_EXTS for e in exts)
    return wants_dicom and not _has_ext(path, IMAGE_EXTS) and is_dicom_file(path)


def _is_series_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(is_dicom(p) for p in files)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _refusal(path: Path) -> str | None:
    """Why ``path`` is not read as a file (None: a regular file with a printable name).

    Only regular files are opened (a named pipe would block, a device never ends), and a
    name with a line break is refused because stdout carries one path per line.
    """
    text = str(path)
    if "\n" in text or "\r" in text:
        return "its name contains a line break, which the one-path-per-line stdout cannot carry; rename it"
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
    except OSError:
        return None  # reading it reports the problem
    return None if stat.S_ISREG(mode) else f"{_kind(mode)}, not a regular file"


def usable_file(path: Path) -> bool:
    """A regular file with a printable name; anything else is reported on stderr and skipped."""
    why = _refusal(path)
    if why is None:
        return True
    from medtools.core.report import warn

    warn(f"skipped {str(path)!r}: {why}" if "line break" in why else f"skipped {path}: {why}")
    return False


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or below it (both resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _walk(root: Path, exts: Sequence[str], series: bool, exclude: Path | None = None) -> Iterable[Item]:
    if series and _is_series_folder(root):
        yield Item(root, Path(root.name), root)
        return
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        if series and here != root and _is_series_folder(here):
            dirnames[:] = []
            yield Item(here, here.relative_to(root), root)
            continue
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if usable_file(path) and _matches(path, exts):
                yield Item(path, path.relative_to(root), root)


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
            items.extend(Item(found.path, rel if found.path == path else rel / found.rel, found.root) for found in _walk(path, exts, series))
        elif usable_file(path):
            items.append(Item(path, rel))
    return items


def expand_inputs(
    args: Sequence[str | Path],
    *,
    exts: Sequence[str] = IMAGE_EXTS,
    series: bool = False,
    stdin: Iterable[str] | None = None,
    output: Path | str | None = None,
) -> list[Item]:
    """Expand files, folders, globs and '-' into sorted, de-duplicated items.

    ``output`` (the -o folder) is left out of every input folder it lies inside, so a
    rerun never reads its own outputs. Raises InputError (exit 5) when nothing usable is
    found; a named file that does not exist is also an InputError so that typos are not
    silently ignored.
    """
    exclude = Path(output) if output is not None else None
    items: list[Item] = []
    for arg in args:
        arg = str(arg)
        if arg == "-":
            source = stdin if stdin is not None else sys.stdin
            items.extend(_mirrored([Path(line.strip()) for line in source if line.strip()], exts, series))
            continue
        path = Path(arg)
        if path.is_dir():
            inner = exclude if exclude is not None and _inside(exclude, path) and exclude.resolve() != path.resolve() else None
            items.extend(_walk(path, exts, series, inner))
        elif path.is_file() or (path.exists() and not glob.has_magic(arg)):
            if usable_file(path):
                items.append(Item(path, Path(path.name)))
        elif glob.has_magic(arg):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True)) if not Path(m).is_dir() and Path(m).exists() and usable_file(Path(m))]
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


def shard_items(items: Sequence[T], shard: tuple[int, int] | None, *, key: Callable[[T], str] | None = None) -> list[T]:
    """The K-th of N deterministic parts of the items sorted by ``key`` (default: path), round robin."""
    ordered = sorted(items, key=key or (lambda i: str(i.path)))  # type: ignore[attr-defined]
    if shard is None:
        return list(ordered)
    k, n = shard
    return ordered[k - 1 :: n]


def select_shard(items: Sequence[T], spec: str | None, *, key: Callable[[T], str] | None = None) -> list[T]:
    """``--shard K/N`` (or the Slurm array default) applied to any items: one helper for every command."""
    return shard_items(items, parse_shard(spec), key=key)


def skip_existing(targets: Path | Iterable[Path], overwrite: bool, *, log: Callable[[str], None] | None = None) -> bool:
    """True when the item is already done: every target exists and ``overwrite`` is off.

    The one skip-existing rule of every command, so that an interrupted batch resumes.
    """
    paths = [targets] if isinstance(targets, (str, Path)) else list(targets)
    if overwrite or not paths or not all(Path(p).exists() for p in paths):
        return False
    if log is None:
        from medtools.core.report import log
    log(f"{paths[0]} exists, skipped (--overwrite to replace)")
    return True


def input_roots(args: Sequence[str | Path]) -> list[Path]:
    """The folders among the positional arguments: the ones a command walks."""
    return [Path(a) for a in args if str(a) != "-" and Path(a).is_dir()]


def inside(path: Path | str, folder: Path | str) -> bool:
    """``path`` is ``folder`` or below it (both resolved)."""
    return _inside(Path(path), Path(folder))


def in_excluded_output(path: Path | str, output: Path | None, roots: Sequence[Path]) -> bool:
    """``path`` lies in an -o folder strictly inside an input folder: an earlier run's output, not an input."""
    if output is None or not inside(path, output):
        return False
    return any(inside(output, root) and Path(output).resolve() != Path(root).resolve() for root in roots)


def check_separate(target: Path, output: Path, *, inputs: Iterable[Path] = (), roots: Iterable[Path] = ()) -> Path:
    """Refuse (UsageError, exit 2) an output that is an input or lands inside a walked input folder.

    An output folder strictly inside an input folder is allowed (``expand_inputs(...,
    output=)`` leaves it out of the walk); anything else inside an input folder would be
    read as an input on the next run or overwrite one.
    """
    from medtools.core.paths import check_outputs

    check_outputs(inputs, [target])  # links followed, hard links by inode
    for root in roots:
        root = Path(root)
        if not _inside(target, root):
            continue
        if _inside(output, root) and output.resolve() != root.resolve() and _inside(target, output):
            continue
        raise UsageError(f"-o {output} puts outputs inside the input folder {root} (e.g. {target}); choose an -o outside it or a new subfolder of it")
    return target


def check_left_out(found: Iterable[Path], planned: Iterable[Path], output: Path) -> None:
    """An -o folder inside an input folder may hold only earlier outputs.

    ``found`` are the input files the walk met below ``output`` (and left out), ``planned``
    the paths this run writes. A found file that no run with this -o would write is an
    input (``segment CASES -o CASES/case1``): UsageError (exit 2) instead of silently
    skipping that input and nesting outputs among the inputs.
    """
    writes = {Path(os.path.abspath(p)) for p in planned}
    for path in found:
        if Path(os.path.abspath(path)) not in writes:
            raise UsageError(f"-o {output} holds inputs (e.g. {path}); choose an -o outside the input folders or a new subfolder of one")


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
    return check_separate(target, output, inputs=[item.path], roots=[item.root] if item.root is not None else [])


def check_output_arg(output: Path | None, n_items: int) -> Path:
    if output is None:
        raise UsageError("missing -o/--output (a folder for batches, a file for one result)")
    if n_items > 1 and output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file but there are {n_items} inputs; give a folder")
    return output
