"""explain command (thin Typer layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import BatchSize, Device, Inputs, Json, Model, Output, Overwrite, Quiet, Seed, Shard, command


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)


@command
def explain(
    inputs: Inputs,
    model: Model,
    output: Output = None,
    method: Annotated[str, typer.Option("--method", help="gradcam | gradcam++ | occlusion | ig (integrated gradients).")] = "gradcam",
    target: Annotated[str, typer.Option("--target", help="pred (the predicted class; a segmenter's every predicted class; an attacker's top-1 patient) or a class name/index.")] = "pred",
    layer: Annotated[Optional[str], typer.Option("--layer", help="Grad-CAM layer (a module name; default: the last conv block). A wrong name lists the valid ones.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Also run the sanity checks: model randomisation (cascading) and deletion/insertion faithfulness; a map that fails one is flagged.")] = False,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Ground-truth label image (one file for every input, or a folder mirroring the inputs): saliency mass inside it and the pointing game.")] = None,
    regions: Annotated[Optional[Path], typer.Option("--regions", help="Label image on the input's grid (one file for every input, or a folder mirroring the inputs), e.g. 0 background, 1 head, 2 tumour: each label's share of the saliency mass.")] = None,
    key: Annotated[Optional[Path], typer.Option("--key", "--key-file", help="cls model trained behind an image cipher: its 256-bit key (plain inputs are encrypted, the map returns to the plain frame).")] = None,
    volume: Annotated[Optional[int], typer.Option("--volume", help="4-D series: explain the N-th 3-D volume (from 0).")] = None,
    batch_size: BatchSize = None,
    shard: Shard = None,
    device: Device = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Saliency maps of seg, cls and reid models, in the input's geometry, with their sanity checks."""
    from medtools.explain.explain import explain_files, read_key

    return explain_files(inputs, model, output, method=method, target=target, layer=layer, mask=mask, regions=regions, check=check, key=read_key(key), batch_size=batch_size, device=device, overwrite=overwrite, shard=shard, volume=volume, seed=seed)
