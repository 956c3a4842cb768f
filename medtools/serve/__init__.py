"""medtools serve: one local REST service (FastAPI, versioned under /v1) and the doctor's page.

One router per family (``routers/``), each endpoint a thin adapter over a :mod:`medtools.api`
function called with the request's own run context (``deps.py``); uploads are decoded in
memory where the reader can (``uploads.py``); the models are loaded once (``backends.py``);
log-in, sessions and limits are ``auth.py``, the process ``server.py``. serve is the front end
over all families, the one package allowed to call other families' public functions. Heavy
imports (FastAPI, uvicorn, torch) happen inside functions so ``import medtools.cli`` stays light.
"""
