"""The /v1 endpoints, one router per family; each endpoint is a thin adapter over one
:mod:`medtools.api` function (HTTP in, the function's keyword call with the request's run
context, HTTP out).

| router | endpoints | medtools.api |
|---|---|---|
| service | health, version | (the loaded models, the app's own routes) |
| auth | login, logout, me | (medtools.serve.auth: the key store's log-in) |
| brain | segment, protect | segment, protect |
| secure | encrypt, decrypt | encrypt_stream, decrypt_stream |
| cls | classify (a cls model loaded) | classify |
| explain | explain (the explain family installed) | explain |
| index | index, index/score (``--index``); index/search (``--index-secret``) | index_manifest, index_score; index_search |
| pacs | pacs/series, pacs/segment (``--pacs``) | pacs_query, pacs_pull + segment |
"""

from __future__ import annotations

from typing import Any

API = "/v1"


def include(app: Any, state: Any) -> None:
    """Add the routers whose family and models are there (an absent one leaves its endpoints out)."""
    from medtools.serve.routers import auth, brain, secure, service

    for module in (service, auth, brain, secure):
        app.include_router(module.router, prefix=API)
    from medtools.serve.backends import has_family

    if has_family("medtools.explain.explain"):
        from medtools.serve.routers import explain

        app.include_router(explain.router, prefix=API)
    if any(m.runner is not None and m.kind == "cls" for m in state.models.values()):
        from medtools.serve.routers import cls

        app.include_router(cls.router, prefix=API)
    if state.index is not None:
        from medtools.serve.routers import index

        app.include_router(index.router, prefix=API)
        if state.index.secret is not None:
            app.include_router(index.search_router, prefix=API)
    if state.pacs is not None:
        from medtools.serve.routers import pacs

        app.include_router(pacs.router, prefix=API)


def endpoints(app: Any) -> list[str]:
    """The /v1 endpoints this app offers (``segment``, ``index/score``...), read from its routes
    through the OpenAPI schema FastAPI builds from them (the public view of the routes, the same
    on every FastAPI version, and built once per app)."""
    names: list[str] = []
    for path in app.openapi().get("paths", {}):
        if path.startswith(API + "/"):
            name = path[len(API) + 1 :]
            if name not in names:
                names.append(name)
    return names
