"""Helpers every user needs: manifest, convert, info."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.core import report
from medtools.cliutil import Inputs, ItemWorkers, Json, NanPolicy, Output, Overwrite, Quiet, Shard, command


def register(app: typer.Typer) -> None:
    app.command("manifest")(manifest)
    app.command("convert")(convert)
    app.command("info")(info)


@command
def manifest(
    folders: Annotated[list[Path], typer.Argument(help="Folders to search for cases.", show_default=False)],
    output_arg: Annotated[Optional[str], typer.Option("-o", "--output", help="CSV file to write (default: stdout); replaced if it exists. A folder (or a path ending in /) is refused (exit 2).")] = None,
    relative: Annotated[bool, typer.Option("--relative", help="Write paths relative to the -o file's folder.")] = False,
    alias: Annotated[Optional[list[str]], typer.Option("--alias", help="Rename a modality column, FROM=TO (repeatable), e.g. t1=t1ce for Brain-Tumor-Progression, whose T1 is post-contrast, to pool with BraTS.")] = None,
    quiet: Quiet = False,
) -> int:
    """Find cases (BraTS, per-patient visit folders, 2-D class folders) and write a CSV.

    Columns: patient, case, visit, flair, t1, t1ce, t2, image, label, class. The CSV goes
    to stdout unless -o is given (then the path is printed).
    """
    import os

    from medtools.core.io import atomic_path
    from medtools.core.manifest import COLUMNS, MODALITIES, apply_aliases, discover, to_csv

    if output_arg is not None and (Path(output_arg).is_dir() or output_arg.endswith(("/", os.sep))):
        from medtools.core.errors import UsageError

        # an existing folder, or a path written as one (`-o dir/`): never a file named like the folder
        raise UsageError(f"-o {output_arg} is a folder; manifest writes one CSV file (e.g. -o {Path(output_arg) / 'cases.csv'})")
    output = Path(output_arg) if output_arg is not None else None
    rows = discover(folders)
    if alias:
        rows = apply_aliases(rows, alias)
    if relative:
        if output is None:
            from medtools.core.errors import UsageError

            raise UsageError("--relative needs -o FILE")
        base = output.resolve().parent
        for row in rows:
            for key in (*MODALITIES, "image", "label"):
                if row.get(key):
                    row[key] = os.path.relpath(Path(row[key]).resolve(), base)
    else:
        for row in rows:
            for key in (*MODALITIES, "image", "label"):
                if row.get(key):
                    row[key] = str(Path(row[key]).resolve())
    text = to_csv(rows)
    patients = len({r["patient"] for r in rows})
    report.log(f"{len(rows)} cases, {patients} patients ({', '.join(c for c in COLUMNS if any(r.get(c) for r in rows))})")
    if output is None:
        print(text, end="")
    else:
        with atomic_path(output) as tmp:
            tmp.write_text(text)
        report.emit_path(output)
    return 0


@command
def convert(
    inputs: Inputs,
    output: Output = None,
    to: Annotated[str, typer.Option("--to", help="nifti | png | npy | npz")] = "nifti",
    axis: Annotated[int, typer.Option("--axis", help="Slice axis for --to png (0, 1, 2).")] = 2,
    shard: Shard = None,
    workers: ItemWorkers = None,
    nan_policy: NanPolicy = "error",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """DICOM series → NIfTI, volumes → PNG slices (+ volume.json) or NPY, keeping geometry."""
    from medtools.core import batch
    from medtools.core.inputs import check_output_arg, expand_inputs, parse_shard, shard_items
    from medtools.utility.convert import check_options, single_file_output
    from medtools.utility.convert import convert as convert_one

    check_options(to, axis)
    part = parse_shard(shard)
    items = shard_items(expand_inputs(inputs, series=True, output=output), part)
    output = check_output_arg(output, len(items))
    single = single_file_output(output, to, len(items)) and part is None

    def work(item):
        return convert_one(item, output, to=to, axis=axis, overwrite=overwrite, single=single) or batch.SKIPPED

    return batch.run_items(items, work, emit=batch.emitter(paths=list), total=len(items), description="convert", workers=batch.resolve_workers(workers)).exit_code


@command
def info(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Files, folders, globs, or '-' for paths on stdin.", show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Require checkpoints of this kind (seg, reid, ddpm, ...): exit 3 otherwise.")] = None,
    kinds: Annotated[bool, typer.Option("--kinds", help="List the registered model kinds (family, archs, config keys) and exit; no torch import.")] = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Shape, dtype, spacing/affine, intensity range, DICOM key tags, or checkpoint metadata."""
    if kinds:
        from medtools.core.registry import describe as describe_kinds

        table = describe_kinds()
        if json_output:
            report.emit_json(table)
        else:
            for row in table:
                print(f"{row['kind']}\t{row['family']}\t{row['task']}\t{', '.join(row['archs']) or '-'}\t{row['description']}")
        return 0
    if not inputs:
        from medtools.core.errors import UsageError

        raise UsageError("info needs files or folders (or --kinds)")
    from medtools.core.inputs import expand_inputs
    from medtools.core.io import IMAGE_EXTS
    from medtools.utility.info import describe, render

    items = expand_inputs(inputs, exts=IMAGE_EXTS + (".safetensors",), series=True)

    def work(item):
        data = describe(item.path, kind=kind)
        if json_output:
            report.emit_jsonl(data)
        else:
            print(render(data))

    from medtools.core import batch

    return batch.run_items(items, work).exit_code
