"""POST /v1/segment and /v1/protect: medtools.api.segment and medtools.api.protect on the loaded models."""

import base64
import contextlib
import json
import os
from typing import Annotated, Any, Optional

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from medtools import api
from medtools.serve.backends import pick_model
from medtools.serve.deps import Caller, Files, State
from medtools.serve.uploads import safe_name

router = APIRouter(tags=["models"])

MEDIA_TYPES = {"nifti": "application/gzip", "png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "dicom": "application/dicom", "npy": "application/octet-stream", "npz": "application/octet-stream"}
PREVIEW_MAX_VOXELS = 16 * 1024 * 1024


@router.post("/segment", responses={200: {"content": {"application/gzip": {}, "image/png": {}, "application/dicom": {}}}})
def segment(
    call: Caller,
    state: State,
    files: Files,
    file: Annotated[list[UploadFile], File(description="The case's images (NIfTI, single-file DICOM, PNG/JPG/TIFF, NPY/NPZ), one per modality in the model's order (see /v1/version).")],
    model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first seg model.")] = None,
    response: Annotated[str, Query(pattern="^(file|json|binary)$", description="file: the label map (PNG for pictures, else the input's format), stats in the X-Medtools-Stats header; json: stats, the label map in base64 and a preview for the page; binary: the same as one binary body (a JSON header, then the preview's arrays as raw bytes), what the page reads.")] = "file",
) -> Any:
    """Label map in the input's geometry (`medtools.api.segment`, what `medtools segment` runs)."""
    chosen = pick_model(state.models, "segment", model)
    images = [files.read(upload, i, nan_policy=call.ctx.nan_policy) for i, upload in enumerate(file)]
    return segment_answer(call, files, chosen, images, file[0].filename, response)


def segment_answer(call: Any, files: Any, chosen: Any, images: list[Any], upload_name: Optional[str], response: str) -> Any:
    """``api.segment`` of ``images`` on the chosen model → the label map file (stats in a header),
    or with ``response=json`` the stats, the label map in base64 and the page's preview."""
    with chosen.lock:  # api.segment checks the modality count and shapes (422 with its reason)
        label = api.segment(images, chosen.model, ctx=call.ctx)
    label, fmt, name = label_file(images[0], label, upload_name)
    data = files.encode(label, fmt, name)
    stats = {"model": chosen.name, "model_sha256": chosen.sha256, **label_stats(label)}
    if response == "json":
        return {"stats": stats, "filename": name, "format": fmt, "label_map": base64.b64encode(data).decode(), "preview": preview(images[0], label)}
    if response == "binary":
        return binary_answer({"stats": stats, "filename": name, "format": fmt, "label_map": base64.b64encode(data).decode()}, preview(images[0], label, encode=False))
    return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"), headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Medtools-Stats": json.dumps(stats, sort_keys=True)})


@router.post("/protect")
def protect(
    call: Caller,
    state: State,
    files: Files,
    file: Annotated[list[UploadFile], File(description="The case's images, one per modality in the attackers' order (see /v1/version).")],
    attacker: Annotated[Optional[list[str]], Query(description="reid/cls model names to blind (default: the first loaded).")] = None,
    utility: Annotated[Optional[str], Query(description="seg model whose output the noise must keep (default: none).")] = None,
    eps: Annotated[float, Query(gt=0, le=1)] = 0.05,
    steps: Annotated[int, Query(ge=1, le=200)] = 10,
    objective: Annotated[str, Query(pattern="^(untargeted|decoy|entropy|feature|signature)$")] = "untargeted",
    case: Annotated[str, Query(description="Case id (keys the signature pattern).")] = "case",
    patient: Annotated[str, Query(description="The patient's identity among the attacker's classes, if known.")] = "",
) -> Any:
    """Adversarially protected images and their metrics (`medtools.api.protect`, what `medtools
    protect` runs; a fresh random key per request, so the signature pattern is never reused)."""
    from medtools.core.io import format_of, split_ext

    chosen = [pick_model(state.models, "protect", name) for name in (attacker or [None])]
    seg = pick_model(state.models, "utility", utility) if utility else None
    images = [files.read(upload, i, nan_policy=call.ctx.nan_policy) for i, upload in enumerate(file)]
    with contextlib.ExitStack() as locks:
        for model in sorted({id(m): m for m in [*chosen, *([seg] if seg else [])]}.values(), key=lambda m: m.name):
            locks.enter_context(model.lock)  # a fixed order: no deadlock between requests
        protected, metrics = api.protect(images, [m.predictor for m in chosen], utility=seg.predictor if seg else None, case_id=safe_name(case), patient=patient, key=os.urandom(32), eps=eps, steps=steps, objective=objective, ctx=call.ctx)
        # what each attacker says of the case before and after: its top identities (api.reid_scores, as reid-eval scores them)
        said = [{"attacker": m.name, "raw": api.reid_scores(images, m.predictor, top=3, ctx=call.ctx)["top"], "protected": api.reid_scores(protected, m.predictor, top=3, ctx=call.ctx)["top"]} for m in chosen]
    out = []
    for upload, image in zip(file, protected):
        name = safe_name(upload.filename)
        stem, ext = split_ext(name)
        fmt, target = format_of(name), f"{stem}_protected{ext.lower()}"
        out.append({"filename": target, "format": fmt, "data": base64.b64encode(files.encode(image, fmt, target)).decode()})
    state.auth.audit(action="protect", user=call.user, input=",".join(safe_name(f.filename) for f in file), result="ok")
    return {"metrics": {**metrics, "attackers": [m.name for m in chosen], "utility": seg.name if seg else None}, "files": out, "attackers_say": said, "preview": protect_preview(images[0], protected[0])}


# ---------------------------------------------------------------- answers


def label_file(source: Any, label: Any, upload_name: Optional[str]) -> tuple[Any, str, str]:
    """(label image, format, file name) of the label map sent back. A picture (PNG, JPEG, TIFF)
    gets a PNG, as ``medtools segment`` writes: labels are never lossy, a JPEG's would be. A
    NIfTI volume gets NIfTI with its affine and header; a single-file DICOM, NPY or NPZ gets its
    own format (DICOM: the source's tags, derived UIDs); anything else (an extension-less DICOM)
    gets NIfTI."""
    import numpy as np

    from medtools.core.io import RASTER_FORMATS, format_of, split_ext

    name = safe_name(upload_name)
    stem, ext = split_ext(name)
    fmt = format_of(name)
    if fmt in RASTER_FORMATS:
        return label, "png", f"{stem}_seg.png"
    if fmt in ("unknown", "dicom-series"):
        return label, "nifti", f"{stem}_seg.nii.gz"
    if fmt == "nifti":
        return label, "nifti", f"{stem}_seg{ext.lower()}"
    return source.with_array(np.asarray(label.array).astype(np.uint8)), fmt, f"{stem}_seg{ext.lower()}"


def label_stats(label: Any) -> dict[str, Any]:
    """Voxel counts per label and, where the spacing is known, volumes in mL."""
    import numpy as np

    array = np.asarray(label.array)
    values, counts = np.unique(array, return_counts=True)
    spacing = label.spacing
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0 if spacing and array.ndim >= 3 else None
    stats: dict[str, Any] = {"shape": list(array.shape), "labels": {str(int(v)): int(c) for v, c in zip(values, counts)}}
    foreground = int(counts[values != 0].sum())
    stats["tumour_voxels"] = foreground
    if voxel_ml is not None:
        stats["voxel_ml"] = voxel_ml
        stats["tumour_ml"] = foreground * voxel_ml
    return stats


def protect_preview(raw: Any, protected: Any) -> Optional[dict[str, Any]]:
    """The first modality before and after protection as 8-bit (slices, rows, cols) in one window
    (the raw image's 0.5–99.5th percentile window, raw units), base64, for the page to show side by side."""
    import numpy as np

    from medtools.core.io import RASTER_FORMATS, as_volume
    from medtools.core.preprocess import normalise_intensity

    def volume(image: Any) -> Any:
        array = np.asarray(image.array)
        if image.format in RASTER_FORMATS and array.ndim == 3:
            array = array.mean(axis=-1)
        return np.nan_to_num(as_volume(image.with_array(array)).astype(np.float32))

    before, after = volume(raw), volume(protected)
    if before.ndim != 3 or before.shape != after.shape or before.size > PREVIEW_MAX_VOXELS:
        return None
    gray, window = normalise_intensity(before)
    low, high = window["low"], window["high"]
    eight = lambda x: base64.b64encode(np.ascontiguousarray(np.moveaxis((x * 255).round().astype(np.uint8), 2, 0)).tobytes()).decode()  # noqa: E731
    return {"shape": [before.shape[2], before.shape[0], before.shape[1]], "window": [low, high], "raw": eight(gray), "protected": eight(np.clip((after - low) / (high - low), 0.0, 1.0))}


def binary_answer(head: dict[str, Any], view: Optional[dict[str, Any]]) -> Any:
    """``?response=binary``: a 4-byte little-endian length, the JSON ``head`` (with ``preview``'s
    fields and, for its arrays ``image``, ``labels`` and ``values``, their [offset, length] in the
    body), then the arrays' raw bytes (``values`` at an even offset). The page reads it without
    parsing or base64-decoding tens of megabytes."""
    import struct

    arrays: dict[str, bytes] = {}
    if view is not None:
        head = {**head, "preview": {k: v for k, v in view.items() if not isinstance(v, bytes)}}
        arrays = {k: v for k, v in view.items() if isinstance(v, bytes)}
    layout, offset = {}, 0
    for key, data in arrays.items():
        offset += offset % 2
        layout[key] = [offset, len(data)]
        offset += len(data)
    if view is not None:
        head["preview"]["parts"] = layout
    text = json.dumps(head).encode()
    text += b" " * ((4 + len(text)) % 2)  # the arrays start at an even byte: 16-bit values stay aligned
    body = bytearray(struct.pack("<I", len(text)) + text)
    start = len(body)
    body.extend(b"\0" * offset)
    for key, data in arrays.items():
        at = start + layout[key][0]
        body[at : at + len(data)] = data
    return Response(bytes(body), media_type="application/octet-stream")


def preview(image: Any, label: Any, *, encode: bool = True) -> Optional[dict[str, Any]]:
    """8-bit image and label slices (Z, rows, cols) for the page's viewer, base64 (raw bytes with
    ``encode=False``)."""
    import numpy as np

    from medtools.core.io import RASTER_FORMATS, as_volume
    from medtools.core.preprocess import normalise_intensity

    array = np.asarray(image.array)
    if image.format in RASTER_FORMATS and array.ndim == 3:
        array = array.mean(axis=-1)
    volume = as_volume(image.with_array(array))
    labels = as_volume(label)
    if volume.ndim != 3 or volume.shape != labels.shape or volume.size > PREVIEW_MAX_VOXELS:
        return None
    raw = np.nan_to_num(volume.astype(np.float32))
    gray, window = normalise_intensity(raw)
    gray8 = np.ascontiguousarray(np.moveaxis((gray * 255).round().astype(np.uint8), 2, 0))
    lab8 = np.ascontiguousarray(np.moveaxis(np.clip(labels, 0, 255).astype(np.uint8), 2, 0))
    # the raw intensities for the page's window/level, as 16-bit steps over [min, max]
    # (little-endian; value = min + step · (max − min) / 65535)
    lo, hi = float(raw.min()), float(raw.max())
    steps = np.zeros(raw.shape, "<u2") if hi <= lo else ((raw - lo) / (hi - lo) * 65535).round().astype("<u2")
    steps = np.ascontiguousarray(np.moveaxis(steps, 2, 0))
    # mm between slices, rows and columns (the page sizes each plane by it); 1 where unknown
    known = [float(s) for s in (label.spacing or ())][:3] if array.ndim >= 3 else []
    known = [s if s > 0 and np.isfinite(s) else 1.0 for s in known] + [1.0] * (3 - len(known))
    spacing = [known[2], known[0], known[1]]
    out = (lambda b: base64.b64encode(b).decode()) if encode else (lambda b: b)  # noqa: E731
    return {"shape": list(gray8.shape), "spacing": spacing, "image": out(gray8.tobytes()), "labels": out(lab8.tobytes()),
            "values": out(steps.tobytes()), "value_range": [lo, hi], "window": [window["low"], window["high"]]}
