"""GET /v1/health and /v1/version: liveness, versions, the loaded models and the endpoints offered."""

import sys
from typing import Any

from fastapi import APIRouter, Request

from medtools.serve.deps import State

router = APIRouter(tags=["service"])


@router.get("/health")
def health(state: State) -> dict[str, Any]:
    """Liveness, and the loaded models with their checkpoint SHA-256."""
    return {"status": "ok", "models": [{"name": m.name, "kind": m.kind, "sha256": m.sha256} for m in state.models.values()]}


@router.get("/version")
def version(request: Request, state: State) -> dict[str, Any]:
    """medtools/python/torch versions, the loaded models (with SHA-256) and the endpoints offered."""
    import medtools
    from medtools.serve.routers import endpoints

    info: dict[str, Any] = {"medtools": medtools.__version__, "python": sys.version.split()[0], "models": [m.describe() for m in state.models.values()], "endpoints": endpoints(request.app)}
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info
