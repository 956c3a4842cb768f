"""GET /v1/index and POST /v1/index/score: the server half of ``medtools index query``
(medtools.api.index_manifest / index_score, what ``index score`` runs), with ``--index``; and
POST /v1/index/search, the whole query by image for the page (medtools.api.index_search), with
``--index-secret``."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from medtools import api
from medtools.serve.deps import Caller, Files, State
from medtools.serve.uploads import safe_name

router = APIRouter(tags=["index"])
search_router = APIRouter(tags=["index"])  # only with --index-secret


@router.get("/index")
def index_manifest(call: Caller, state: State) -> Any:
    """The index manifest (entries, block SHA-256s, Merkle root, model): what the client verifies hits against."""
    return api.index_manifest(state.index.folder, ctx=call.ctx)


@router.post("/index/score", responses={200: {"content": {"application/json": {}, "application/octet-stream": {}}}})
def index_score(
    call: Caller,
    state: State,
    query: Annotated[UploadFile, File(description="An encrypted query (`medtools index encrypt-query`, made with the client's secret context).")],
    response: Annotated[str, Query(pattern="^(json|file)$", description="json: the reply's blocks as base64 in JSON; file: the reply as `medtools index score` writes it (for `medtools index rank`).")] = "json",
) -> Any:
    """The server half of `medtools index query`: every block's encrypted scores; only the client can decrypt them."""
    with state.index.lock:
        reply = api.index_score(query.file.read(), index=state.index.folder, public=state.index.context, resident=state.index.resident, ctx=call.ctx)
    if response == "file":
        return Response(reply, media_type="application/octet-stream", headers={"Content-Disposition": 'attachment; filename="scores.bin"'})
    return state.index.reply_json(reply)


@search_router.post("/index/search")
def index_search(
    call: Caller,
    state: State,
    files: Files,
    file: Annotated[UploadFile, File(description="The query image (PNG/JPG/TIFF, single-file DICOM, NIfTI).")],
    k: Annotated[int, Query(ge=1, le=50, description="How many hits.")] = 5,
) -> Any:
    """Similar cases by image (`medtools index query`, with --index-secret): the index verified,
    the query's features encrypted, scored on the encrypted blocks, decrypted and ranked; each hit
    with its inclusion proof checked (``verified``, ``checked_against``). The service sees the query."""
    image = files.read(file, nan_policy=call.ctx.nan_policy)
    with state.index.lock:
        result = api.index_search(image, index=state.index.folder, secret=state.index.secret, k=k, ctx=call.ctx)
    hits = [{key: hit[key] for key in ("rank", "id", "score", "verified", "checked_against", "reason", "proof_hashes")} for hit in result["hits"]]
    state.auth.audit(action="index-search", user=call.user, input=safe_name(file.filename), result="ok")
    return {"query": safe_name(file.filename), "entries": result["entries"], "root": result["root"], "trusted_root": result["trusted_root"], "mode": result["mode"], "hits": hits, "timing": result["timing"]}
