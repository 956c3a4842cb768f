"""GET /v1/index and POST /v1/index/score: the server half of ``medtools index query``
(medtools.api.index_manifest / index_score, what ``index score`` runs), with ``--index``."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from medtools import api
from medtools.serve.deps import Caller, State

router = APIRouter(tags=["index"])


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
