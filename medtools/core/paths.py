"""Where outputs may go: never onto an input, never outside ``-o``.

Two rules, each implemented once here and applied to every command:

* ``check_outputs(inputs, outputs)``: an output (``-o`` and every side output such as
  ``--mapping``, ``--audit-log``, ``--roc``) that resolves to an input is a UsageError
  (exit 2), before anything is written. Symbolic links are followed and hard links are
  caught by comparing device and inode; an existing file inside an input folder that a
  folder walk would read is an input too. ``check_command_paths`` applies it to a
  command's options: the options named in ``OUTPUT_OPTIONS`` are outputs, every other
  path-valued option or argument is an input (the CLI wrapper calls it for every command).
* ``safe_relpath(name)`` / ``under(output, name)``: a name taken from a manifest, a DICOM
  tag, an upload or stdin becomes a relative path that stays below ``output``: no absolute
  paths, no ``..``, no control characters (a newline would split a stdout line), no
  empty or dot-only parts, each part within NAME_MAX bytes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from medtools.core.errors import UsageError

# Command options (Python parameter names) that name files or folders medtools writes.
# Every other option or argument holding a path is something the command reads.
OUTPUT_OPTIONS = frozenset(
    {
        "output",  # -o/--output
        "output_arg",  # manifest -o (a file or '-')
        "mapping",  # deid --mapping
        "audit_csv",  # deid --audit-csv
        "audit_log",  # decrypt/encrypt/serve --audit-log
        "plots",  # cipher-audit --plots
        "save_stats",  # fid --save-stats
        "roc",  # mia --roc
        "keep",  # tstr --keep
        "grid",  # nearest --grid
    }
)

# What folder walks read, besides images: ciphertexts, checkpoints and latents, proofs.
_READ_EXTS = (".mte", ".safetensors", ".ckks")
NAME_MAX = 255


def _as_paths(value: Any) -> list[Path]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return [p for v in value for p in _as_paths(v)]
    if isinstance(value, (str, PurePath)):
        text = str(value)
        return [] if text in ("", "-") else [Path(text)]
    return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)  # follows symbolic links
    except (OSError, ValueError):
        return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _below(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _read_by_walk(path: Path) -> bool:
    """A folder walk would read this existing file as an input (an image, DICOM, ciphertext, ...)."""
    from medtools.core.io.formats import IMAGE_EXTS

    name = path.name.lower()
    if name.startswith("."):
        return False
    if any(name.endswith(ext) for ext in (*IMAGE_EXTS, *_READ_EXTS)):
        return True
    from medtools.core.io.dicom import is_dicom_file

    return "." not in name and is_dicom_file(path)


def _same_file_in(folder: Path, st: os.stat_result) -> Path | None:
    """A regular file below ``folder`` with this device and inode (a hard link), if any."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            other = _stat(Path(dirpath) / name)
            if other is not None and (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return Path(dirpath) / name
    return None


def check_outputs(inputs: Iterable[Path | str], outputs: Iterable[Path | str | None]) -> None:
    """UsageError (exit 2) when an output resolves to an input.

    ``inputs`` are the files and folders a command reads, ``outputs`` every path it
    writes (``None`` and ``-`` are ignored). An output is refused when it is an input
    (after following symbolic links), is a hard link to one (same device and inode), is an
    input folder, or is an existing file below an input folder that the walk reads.
    """
    ins = [p for value in inputs for p in _as_paths(value)]
    in_stats = [(p, _stat(p), _resolved(p)) for p in ins]
    folders = [(p, r) for p, st, r in in_stats if st is not None and stat.S_ISDIR(st.st_mode)]
    for out in (p for value in outputs for p in _as_paths(value)):
        out_stat, out_real = _stat(out), _resolved(out)
        for path, st, real in in_stats:
            same = out_real == real
            if not same and out_stat is not None and st is not None:
                same = (out_stat.st_dev, out_stat.st_ino) == (st.st_dev, st.st_ino)
            if same:
                what = "input folder" if st is not None and stat.S_ISDIR(st.st_mode) else "input"
                raise UsageError(f"output {out} would overwrite the {what} {path}; choose another output path")
        if out_stat is None or not stat.S_ISREG(out_stat.st_mode):
            continue
        for folder, real in folders:
            if _below(out_real, real) and _read_by_walk(out_real):
                raise UsageError(f"output {out} would overwrite the input {out} (read from the input folder {folder}); choose another output path")
        if out_stat.st_nlink > 1:  # a hard link to a file inside an input folder
            for folder, _ in folders:
                twin = _same_file_in(folder, out_stat)
                if twin is not None:
                    raise UsageError(f"output {out} would overwrite the input {twin} (a hard link to it); choose another output path")


def check_command_paths(options: Mapping[str, Any]) -> None:
    """``check_outputs`` for one command call: ``options`` maps parameter names to values.

    Outputs are the options named in OUTPUT_OPTIONS; inputs are the other values that
    name an existing file or folder.
    """
    outputs = [value for name, value in options.items() if name in OUTPUT_OPTIONS]
    if not any(_as_paths(v) for v in outputs):
        return
    inputs = [p for name, value in options.items() if name not in OUTPUT_OPTIONS for p in _as_paths(value) if _stat(p) is not None]
    check_outputs(inputs, outputs)


# ---------------------------------------------------------------- names from data

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def _clip(part: str, limit: int = NAME_MAX) -> str:
    data = part.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return part
    return data[:limit].decode("utf-8", "ignore")


def safe_part(name: str, *, fallback: str = "unnamed") -> str:
    """One path component from untrusted text: separators and control characters become
    '_', '.'/'..'/empty become ``fallback``, at most NAME_MAX bytes."""
    part = _UNSAFE.sub("_", str(name)).strip()
    if part in ("", ".", ".."):
        part = fallback
    return _clip(part)


def safe_relpath(name: str | PurePath, *, fallback: str = "unnamed") -> Path:
    """A relative path from untrusted text that stays below whatever it is joined to.

    Absolute paths lose their root, ``..`` and ``.`` parts are dropped, each remaining part
    goes through ``safe_part``; nothing left gives ``fallback``.
    """
    text = str(name).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    parts = [safe_part(p, fallback=fallback) for p in parts]
    return Path(*parts) if parts else Path(fallback)


def under(output: Path | str, name: str | PurePath) -> Path:
    """``output / safe_relpath(name)``, checked to stay below ``output`` (UsageError otherwise)."""
    output = Path(output)
    target = output / safe_relpath(name)
    base = Path(os.path.abspath(output))
    if not _below(Path(os.path.abspath(target)), base):  # pragma: no cover - safe_relpath prevents it
        raise UsageError(f"{name!r} would be written outside {output}")
    return target
