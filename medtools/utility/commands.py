"""Helpers every user needs: manifest, convert, info, ckpt strip."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import Inputs, ItemWorkers, Json, NanPolicy, Output, Overwrite, Quiet, Shard, command

ckpt_app = typer.Typer(help="Checkpoint housekeeping: strip identifying metadata before sharing a model.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("manifest")(manifest)
    app.command("convert")(convert)
    app.command("info")(info)
    app.add_typer(ckpt_app, name="ckpt")


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
    from medtools.utility.manifest import manifest_job

    manifest_job(folders, output_arg, relative=relative, alias=alias)
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
    from medtools.utility.info import info_job

    return info_job(inputs, kind=kind, kinds=kinds)


@ckpt_app.command("strip")
@command
def ckpt_strip(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to copy without identifying metadata.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The stripped copy (written atomically; not the input).")],
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Copy a checkpoint without paths, clear case/patient ids and keyed ids; tensors bit-identical; prints OUTPUT.

    What is left shows under `reveals` in `medtools info`. A patient re-identification model's
    class names are its output and stay.
    """
    from medtools.utility.ckpt import strip_job

    strip_job(checkpoint, output)
    return 0
