"""medtools serve: one local REST service (FastAPI, versioned under /v1) and the doctor's page.

Every endpoint calls the same public function the command line calls (brain
``segment_images``, the secure family's container/key store, and cls/index when they are
installed): serve is the front end over all families, the one package allowed to call
other families' public functions. Heavy imports (FastAPI, uvicorn, torch) happen inside
functions so ``import medtools.cli`` stays light.
"""
