"""POST /v1/explain: medtools.api.explain on a loaded seg, cls or reid model (what `medtools explain` writes)."""

import base64
import json
from typing import Annotated, Any, Optional

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from medtools import api
from medtools.serve.backends import pick_model
from medtools.serve.deps import Caller, Files, State
from medtools.serve.routers.brain import MEDIA_TYPES, PREVIEW_MAX_VOXELS
from medtools.serve.uploads import safe_name

router = APIRouter(tags=["models"])


@router.post("/explain", responses={200: {"content": {"application/gzip": {}}}})
def explain(
    call: Caller,
    state: State,
    files: Files,
    file: Annotated[list[UploadFile], File(description="One image, or a case's images one per modality in a seg model's order (see /v1/version).")],
    model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first seg model, else the first cls/reid model.")] = None,
    method: Annotated[str, Query(pattern="^(gradcam|gradcam\\+\\+|occlusion|ig)$")] = "gradcam",
    target: Annotated[str, Query(description="pred (the predicted classes) or a class name/index.")] = "pred",
    check: Annotated[bool, Query(description="Also run the model-randomisation and faithfulness checks (slower).")] = False,
    response: Annotated[str, Query(pattern="^(file|json)$", description="file: the saliency map as `medtools explain` writes it for a volume (float NIfTI; one trailing axis per target when several), the numbers in the X-Medtools-Explain header; json: the numbers, that file in base64 and an 8-bit preview for the page.")] = "json",
) -> Any:
    """The saliency map and its numbers (`medtools.api.explain`, what `medtools explain` runs)."""
    import numpy as np

    from medtools.core.io import RASTER_FORMATS, split_ext

    chosen = pick_model(state.models, "explain", model) if model is not None else _default(state)
    images = [files.read(upload, i, nan_policy=call.ctx.nan_policy) for i, upload in enumerate(file)]
    with chosen.lock:
        saliency, numbers = api.explain(images, chosen.model, method=method, target=target, check=check, seed=call.ctx.seed or 0, ctx=call.ctx)
    stem, _ = split_ext(safe_name(file[0].filename))
    # a volume's map as `medtools explain` writes it (float NIfTI); a picture's as NPY (the CLI
    # writes it blended into a PNG, which a client cannot overlay again)
    fmt = "npy" if saliency.format in RASTER_FORMATS else "nifti"
    name = f"{stem}_{method.replace('+', 'p')}" + (".npy" if fmt == "npy" else ".nii.gz")
    data = files.encode(saliency, fmt, name)
    record = {"model": chosen.name, "model_sha256": chosen.sha256, "method": method, **numbers}
    if response == "file":
        return Response(data, media_type=MEDIA_TYPES[fmt], headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Medtools-Explain": json.dumps(record, sort_keys=True, default=str)})
    return {**record, "filename": name, "format": fmt, "map": base64.b64encode(data).decode(), "preview": _preview(np.asarray(saliency.array, np.float32), len(saliency.meta.get("targets") or []))}


def _default(state: Any) -> Any:
    fitting = [m for m in state.models.values() if m.kind == "seg"] or [m for m in state.models.values() if m.kind in ("cls", "reid")]
    return fitting[0] if fitting else pick_model(state.models, "explain", None)


def _preview(maps: Any, targets: int) -> Optional[dict[str, Any]]:
    """The map (the largest over targets) as 8-bit (slices, rows, cols), scaled to its maximum:
    the page's overlay, on the segment preview's grid."""
    import numpy as np

    if targets > 1:
        maps = maps.max(axis=-1)
    volume = maps[:, :, None] if maps.ndim == 2 else maps
    if volume.ndim != 3 or volume.size > PREVIEW_MAX_VOXELS:
        return None
    volume = np.nan_to_num(volume)
    top = float(volume.max()) if volume.size else 0.0
    scaled = np.clip(volume / top, 0, 1) if top > 0 else np.zeros_like(volume)
    out = np.ascontiguousarray(np.moveaxis((scaled * 255).round().astype(np.uint8), 2, 0))
    return {"shape": list(out.shape), "saliency": base64.b64encode(out.tobytes()).decode(), "max": top}
