"""What a file holds: image geometry and intensity, DICOM key tags, or checkpoint metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import ckpt
from medtools.core.errors import CheckpointError
from medtools.core.io import read_image

DICOM_KEYS = ("Modality", "Manufacturer", "StudyDate", "SeriesDescription", "PatientID", "PatientName", "Rows", "Columns", "BitsStored", "PhotometricInterpretation", "TransferSyntaxUID")


def is_safetensors(path: Path) -> bool:
    """A safetensors file whatever its name (``klt-keygen`` writes ``client.key``): an 8-byte
    little-endian header length that fits the file, then a JSON object."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= size - 8


def describe(path: Path, *, kind: str | None = None) -> dict[str, Any]:
    """What ``path`` holds; with ``kind``, it must be a checkpoint of that kind (else exit 3)."""
    if path.name.endswith(".safetensors") or (not path.name.endswith((".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg")) and is_safetensors(path)):
        info = describe_checkpoint(path)
        if kind is not None and info.get("kind") != kind:
            raise CheckpointError(f"expected a {kind} checkpoint, found {info.get('kind', 'no medtools kind')!r}")
        return info
    if kind is not None:
        raise CheckpointError(f"expected a {kind} checkpoint, found a non-checkpoint file")
    from medtools.core.io import count_nonfinite

    image = read_image(path, nan_policy="keep")  # info reports non-finite voxels, never fails on them
    array = image.array
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    info: dict[str, Any] = {
        "path": str(path),
        "format": image.format,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "nonfinite": count_nonfinite(array),
    }
    if image.affine is not None:
        info["spacing"] = [round(s, 6) for s in image.spacing]
        info["affine"] = np.round(image.affine, 6).tolist()
    if image.format == "nifti" and "header" in image.meta:
        import nibabel as nib

        info["orientation"] = "".join(nib.aff2axcodes(image.affine))
        description = image.meta["header"]["descrip"].tobytes().rstrip(b"\0").decode("latin-1").strip()
        if description:
            info["description"] = description
    if "bits" in image.meta:
        info["bits"] = image.meta["bits"]
    if "dataset" in image.meta:
        ds = image.meta["dataset"]
        tags = {}
        for key in DICOM_KEYS:
            value = ds.file_meta.get(key) if key == "TransferSyntaxUID" else ds.get(key)
            if value is not None:
                tags[key] = str(value.value if hasattr(value, "value") else value)
        info["dicom"] = tags
    if "rescale" in image.meta:
        info["rescale"] = image.meta["rescale"]
    return info


def describe_checkpoint(path: Path) -> dict[str, Any]:
    metadata = ckpt.read_metadata(path)
    out: dict[str, Any] = {"path": str(path), "format": "safetensors", "sha256": None}
    for key, value in sorted(metadata.items()):
        short = key[len("medtools."):] if key.startswith("medtools.") else key
        try:
            out[short] = json.loads(value)
        except ValueError:
            out[short] = value
    if "kind" not in out:
        out["note"] = "not a medtools checkpoint (no medtools.kind)"
    else:
        from medtools.core import registry

        known = registry.discover().get(out["kind"])
        out["registered"] = {"family": known.family, "task": known.task, "description": known.description} if known else None
    from medtools.core.report import sha256_file

    out["sha256"] = sha256_file(path)
    if "kind" in out:
        from medtools.core.ids import reveals

        out["reveals"] = reveals(metadata)  # clear ids, paths, keyed ids: what sharing it discloses
    out.pop("history", None) if isinstance(out.get("history"), list) and len(out["history"]) > 50 else None
    return out


def render(info: dict[str, Any]) -> str:
    """Human-readable lines for one description."""
    lines = [info["path"]]
    for key, value in info.items():
        if key == "path":
            continue
        if key == "reveals" and isinstance(value, dict):
            from medtools.core.ids import summary

            value = summary(value)
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
            if len(value) > 160:
                value = value[:157] + "..."
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def info_job(inputs: list[str] | None, *, kind: str | None = None, kinds: bool = False) -> int:
    """``info``: what each file or checkpoint holds (text or JSON Lines), or the model kinds."""
    from medtools.core import batch, report
    from medtools.core.errors import UsageError

    if kinds:
        from medtools.core.registry import describe as describe_kinds

        report.emit_result(describe_kinds(), lambda table: [f"{row['kind']}\t{row['family']}\t{row['task']}\t{', '.join(row['archs']) or '-'}\t{row['description']}" for row in table])
        return 0
    if not inputs:
        raise UsageError("info needs files or folders (or --kinds)")
    from medtools.core.context import current
    from medtools.core.inputs import expand_inputs
    from medtools.core.io import IMAGE_EXTS

    items = expand_inputs(inputs, exts=IMAGE_EXTS + (".safetensors",), series=True)
    emit = report.emit_jsonl if current().json else (lambda data: print(render(data)))
    return batch.run_items(items, lambda item: describe(item.path, kind=kind), emit=emit).exit_code
