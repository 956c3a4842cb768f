"""``manifest``: find the cases under folders and write their CSV (stdout or an atomic -o file)."""

from __future__ import annotations

import os
from pathlib import Path

from medtools.core import report
from medtools.core.errors import UsageError


def manifest_job(folders: list[Path], output_arg: str | None, *, relative: bool = False, alias: list[str] | None = None) -> Path | None:
    """The CSV of every case under ``folders``: to stdout, or to ``output_arg`` (its path on stdout).
    Paths are absolute, or relative to the -o file's folder with ``relative``."""
    from medtools.core.io import atomic_path
    from medtools.core.manifest import COLUMNS, MODALITIES, apply_aliases, discover, to_csv

    if output_arg is not None and (Path(output_arg).is_dir() or output_arg.endswith(("/", os.sep))):
        # an existing folder, or a path written as one (`-o dir/`): never a file named like the folder
        raise UsageError(f"-o {output_arg} is a folder; manifest writes one CSV file (e.g. -o {Path(output_arg) / 'cases.csv'})")
    if relative and output_arg is None:
        raise UsageError("--relative needs -o FILE")
    output = Path(output_arg) if output_arg is not None else None
    rows = discover(folders)
    if alias:
        rows = apply_aliases(rows, alias)
    base = output.resolve().parent if relative and output is not None else None
    for row in rows:
        for key in (*MODALITIES, "image", "label"):
            if row.get(key):
                path = Path(row[key]).resolve()
                row[key] = os.path.relpath(path, base) if base is not None else str(path)
    text = to_csv(rows)
    patients = len({r["patient"] for r in rows})
    report.log(f"{len(rows)} cases, {patients} patients ({', '.join(c for c in COLUMNS if any(r.get(c) for r in rows))})")
    if output is None:
        print(text, end="")
        return None
    with atomic_path(output) as tmp:
        tmp.write_text(text)
    report.emit_path(output)
    return output
