"""POST /v1/classify: medtools.api.classify on a loaded cls model (what `medtools classify` prints)."""

from typing import Annotated, Any, Optional

from fastapi import APIRouter, File, Query, UploadFile

from medtools import api
from medtools.core.errors import InputError
from medtools.serve.backends import pick_model
from medtools.serve.deps import Caller, Files, State
from medtools.serve.uploads import safe_name

router = APIRouter(tags=["models"])


@router.post("/classify")
def classify(
    call: Caller,
    state: State,
    files: Files,
    file: Annotated[list[UploadFile], File(description="Images (plain, or cipher images at the model's size for a model trained behind a key).")],
    model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first cls model.")] = None,
) -> Any:
    """Label and class probabilities per image (what `medtools classify` prints as JSON Lines);
    an image that cannot be used gets its reason, the others their labels; none usable: 422."""
    chosen = pick_model(state.models, "classify", model)
    names = [safe_name(upload.filename) for upload in file]
    records: list[Optional[dict[str, Any]]] = [None] * len(file)
    images, positions = [], []
    for i, upload in enumerate(file):
        try:
            images.append(files.read(upload, i, nan_policy=call.ctx.nan_policy))
            positions.append(i)
        except InputError as exc:
            records[i] = {"file": names[i], "error": str(exc)}
    if images:
        with chosen.lock:  # positions as names: two uploads may share a file name
            results = api.classify(images, chosen.model, names=[str(i) for i in positions], ctx=call.ctx)
        for i, result in zip(positions, results):
            if "error" in result:
                records[i] = {"file": names[i], "error": result["error"]}
            else:
                records[i] = {**{k: v for k, v in result.items() if k != "path"}, "file": names[i]}
    if all("error" in r for r in records):
        raise InputError(records[0]["error"])
    return {"model": chosen.name, "model_sha256": chosen.sha256, "results": records}
