"""`medtools phantom brain|cxr`: synthetic data in real layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medtools.core import report
from medtools.cliutil import Overwrite, Quiet, Seed, command
from medtools.core.errors import UsageError

app = typer.Typer(help="Synthetic data with real layouts (brain MRI in BraTS layout, chest X-rays).", no_args_is_help=True)


@app.command("brain")
@command
def brain(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (BraTS layout).")],
    patients: Annotated[int, typer.Option("-n", "--patients", min=1, help="Number of patients.")] = 4,
    visits: Annotated[int, typer.Option("--visits", min=1, help="Visits (exams) per patient.")] = 2,
    size: Annotated[int, typer.Option("--size", min=16, help="In-plane size (voxels).")] = 128,
    slices: Annotated[int, typer.Option("--slices", min=1, help="Slices per volume.")] = 32,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """Multi-modal brain MRI (flair, t1, t1ce, t2 + BraTS labels) with stable patient identities."""
    from medtools.phantom.generate import write_brain_phantoms

    _check_folder(output)
    written = write_brain_phantoms(output, patients=patients, visits=visits, size=size, slices=slices, seed=seed, overwrite=overwrite, on_write=report.emit_path)
    report.log(f"wrote {len(written)} files for {patients} patients × {visits} visits to {output}")
    return 0


@app.command("cxr")
@command
def cxr(
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (NORMAL/, PNEUMONIA/).")],
    n: Annotated[int, typer.Option("-n", "--images", min=1, help="Number of images.")] = 32,
    patients: Annotated[int | None, typer.Option("--patients", min=1, help="Number of patients (default n/2).")] = None,
    size: Annotated[int, typer.Option("--size", min=16, help="Image size (pixels).")] = 128,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """Chest X-ray PNGs with per-patient anatomy; pneumonia-like opacities for half the patients."""
    from medtools.phantom.generate import write_cxr_phantoms

    _check_folder(output)
    written = write_cxr_phantoms(output, n=n, patients=patients, size=size, seed=seed, overwrite=overwrite, on_write=report.emit_path)
    report.log(f"wrote {len(written)} images to {output}")
    return 0


def _check_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file; phantoms go into a folder")
