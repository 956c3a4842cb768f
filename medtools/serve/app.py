"""The FastAPI app: /v1 endpoints over the families' functions, and the doctor's page at /.

Each endpoint saves the upload into its own private temporary folder (removed before the
response is sent), reads it with :func:`medtools.core.io.read_image`, calls the same
public function the CLI calls, writes the result with :func:`medtools.core.io.write_image`
and answers with the bytes. Errors are the CLI's one-line reasons: unreadable or
unsupported upload 422, bad request 400, not logged in or wrong password 401 (no hint
which part), not a recipient 403, body over the limit 413, too many failed log-ins 429.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
# some of which are local to create_app.
import base64
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medtools.core.errors import CheckpointError, InputError, IntegrityError, MedtoolsError, UsageError
from medtools.serve import backends
from medtools.serve.auth import Authenticator, LoginFailed, TooManyAttempts

API = "/v1"
COOKIE = "medtools_session"
STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024
MEDIA_TYPES = {"nifti": "application/gzip", "png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "dicom": "application/dicom", "npy": "application/octet-stream", "npz": "application/octet-stream"}
PREVIEW_MAX_VOXELS = 16 * 1024 * 1024


@dataclass
class ServeState:
    """Everything loaded once at start-up and shared by the requests."""

    models: dict[str, backends.LoadedModel]
    auth: Authenticator
    index: Optional[backends.IndexService] = None
    max_upload: int = DEFAULT_MAX_UPLOAD
    tmp_root: Path = field(default_factory=lambda: private_root())

    def close(self) -> None:
        shutil.rmtree(self.tmp_root, ignore_errors=True)


# ---------------------------------------------------------------- request size limit


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, declared (Content-Length) or
    streamed (chunked). Once a streamed body passes the limit, reading it fails and whatever
    the app answers to that (FastAPI: 400 "error parsing the body"; Starlette: 500) is
    replaced by the 413."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_413(send, self.limit)
        seen = 0
        over = False
        started = False

        async def counting_receive() -> dict:
            nonlocal seen, over
            if over:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a cut-off body: the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _send_413(send, self.limit)


async def _send_413(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes (--max-upload-mb)"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- uploads

ROOT_PREFIX = "medtools-serve-"


def private_root(parent: Path | None = None) -> Path:
    """The server's private (0700) temporary folder, ``medtools-serve-<pid>-XXXX``.

    Folders left by servers that died without cleaning up (SIGKILL, power loss: they may
    hold uploads) are removed first, when their process is gone.
    """
    parent = Path(parent or tempfile.gettempdir())
    for old in parent.glob(ROOT_PREFIX + "*-*"):
        pid = old.name[len(ROOT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not old.is_dir() or old.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's
    root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=parent))
    os.chmod(root, 0o700)
    return root



class Workspace:
    """One request's private (0700) folder; uploads are saved under neutral names."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: dict[str, str] = {}  # saved path → the upload's own (safe) name

    def save(self, upload: Any, index: int = 0) -> Path:
        """Write an UploadFile here keeping only its extension; returns the path."""
        from medtools.core.io import split_ext

        name = safe_name(upload.filename)
        ext = split_ext(name)[1].lower()
        target = self.folder / f"input{index}{ext if ext.replace('.', '').isalnum() or ext == '.nii.gz' else ''}"
        with open(target, "wb") as sink:
            shutil.copyfileobj(upload.file, sink, 1 << 20)
        self.names[str(target)] = name
        return target

    def scrub(self, message: str) -> str:
        """The error message with the upload's name in place of the server's temporary path."""
        for path, name in sorted(self.names.items(), key=lambda item: -len(item[0])):
            message = message.replace(path, name)
        return message.replace(str(self.folder) + os.sep, "")


@contextmanager
def request_folder(state: ServeState):
    """A Workspace for one request, removed afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=state.tmp_root))
    workspace = Workspace(folder)
    try:
        yield workspace
    except MedtoolsError as exc:
        exc.args = (workspace.scrub(str(exc)),)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def safe_name(name: str | None, default: str = "upload") -> str:
    """The upload's base name with no folders, odd characters or leading dots."""
    base = Path((name or "").replace("\\", "/")).name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".")
    return cleaned[:128] or default


# ---------------------------------------------------------------- segment


def label_stats(label: Any) -> dict[str, Any]:
    """Voxel counts per label and, where the spacing is known, volumes in mL."""
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


def preview(image: Any, label: Any) -> dict[str, Any] | None:
    """8-bit image and label slices (Z, rows, cols) for the page's viewer, base64."""
    from medtools.core.io import RASTER_FORMATS, as_volume
    from medtools.core.preprocess import normalise_intensity

    array = np.asarray(image.array)
    if image.format in RASTER_FORMATS and array.ndim == 3:
        array = array.mean(axis=-1)
    volume = as_volume(image.with_array(array))
    labels = as_volume(label)
    if volume.ndim != 3 or volume.shape != labels.shape or volume.size > PREVIEW_MAX_VOXELS:
        return None
    gray, _ = normalise_intensity(volume.astype(np.float32))
    gray8 = np.ascontiguousarray(np.moveaxis((gray * 255).round().astype(np.uint8), 2, 0))
    lab8 = np.ascontiguousarray(np.moveaxis(np.clip(labels, 0, 255).astype(np.uint8), 2, 0))
    return {"shape": list(gray8.shape), "image": base64.b64encode(gray8.tobytes()).decode(), "labels": base64.b64encode(lab8.tobytes()).decode()}


def run_segment(state: ServeState, uploads: list[Any], model_name: str | None) -> tuple[bytes, str, str, dict[str, Any], dict[str, Any] | None]:
    """(label bytes, file name, format, stats, preview) for one case's uploaded modalities."""
    from medtools.core.io import format_of, read_image, split_ext, write_image

    segment_images = backends.family_function("segment")
    if segment_images is None:
        raise UsageError("this medtools has no in-memory segmentation (medtools.brain.segment.segment_images)")
    model = backends.pick_model(state.models, "segment", model_name)
    with request_folder(state) as work:
        paths = [work.save(upload, i) for i, upload in enumerate(uploads)]
        images = [read_image(path) for path in paths]
        with model.lock:  # segment_images checks the modality count and shapes (422 with its reason)
            label = segment_images(images, model.predictor)
        fmt = format_of(paths[0])
        stem, ext = split_ext(safe_name(uploads[0].filename))
        if fmt in ("unknown", "dicom-series"):
            fmt, ext = "nifti", ".nii.gz"
        out_name = f"{stem}_seg{ext.lower()}"
        if fmt != "nifti":  # DICOM tags, PNG bit depth: the input's metadata, the labels' voxels
            label = images[0].with_array(np.asarray(label.array).astype(np.uint8))
        written = write_image(label, work.folder / out_name, format=fmt)
        data = written.read_bytes()
        stats = {"model": model.name, "model_sha256": model.sha256, **label_stats(label)}
        return data, out_name, fmt, stats, preview(images[0], label)


def run_protect(state: ServeState, uploads: list[Any], attackers: list[str] | None, utility: str | None, options: dict[str, Any], case_id: str, patient: str) -> dict[str, Any]:
    """Protected images (base64, the input's format) and the metrics ``medtools protect`` reports."""
    import contextlib
    import os

    from medtools.core.io import format_of, read_image, split_ext, write_image

    protect_images = backends.family_function("protect")
    load_protect_models = backends.family_function("protect-models")
    if protect_images is None or load_protect_models is None:
        raise UsageError("this medtools has no in-memory protection (medtools.brain.protect.protect_images)")
    chosen = [backends.pick_model(state.models, "protect", name) for name in (attackers or [None])]
    seg = backends.pick_model(state.models, "utility", utility) if utility else None
    models = load_protect_models([m.predictor for m in chosen], seg.predictor if seg else None)
    with request_folder(state) as work, contextlib.ExitStack() as locks:
        for model in sorted({id(m): m for m in [*chosen, *([seg] if seg else [])]}.values(), key=lambda m: m.name):
            locks.enter_context(model.lock)  # a fixed order: no deadlock between requests
        paths = [work.save(upload, i) for i, upload in enumerate(uploads)]
        images = [read_image(path) for path in paths]
        protected, metrics = protect_images(images, models, case_id=case_id, patient=patient, key=os.urandom(32), **options)
        files = []
        for upload, path, image in zip(uploads, paths, protected):
            stem, ext = split_ext(safe_name(upload.filename))
            fmt = format_of(path)
            written = write_image(image, work.folder / f"{stem}_protected{ext.lower()}", format=fmt)
            files.append({"filename": written.name, "format": fmt, "data": base64.b64encode(written.read_bytes()).decode()})
    return {"metrics": {**metrics, "attackers": [m.name for m in chosen], "utility": seg.name if seg else None}, "files": files}


# ---------------------------------------------------------------- the app


def create_app(state: ServeState):
    """The FastAPI app over ``state`` (models and key store loaded once)."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    import medtools

    try:  # /docs from files in the package (fastapi-offline), not from a CDN: hospitals are often offline
        from fastapi_offline import FastAPIOffline as make_app
    except ModuleNotFoundError:
        make_app = FastAPI
    app = make_app(
        title="medtools",
        version=medtools.__version__,
        description="The medtools command-line functions as a local REST service (PACS/HIS integration) and the doctor's page. Log in at /v1/login; send the token as `Authorization: Bearer TOKEN`.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.medtools = state

    @app.exception_handler(MedtoolsError)
    async def medtools_error(request: Request, exc: MedtoolsError):
        from medtools.secure.keystore import AccessDenied

        headers: dict[str, str] = {}
        if isinstance(exc, LoginFailed):
            status, headers = 401, {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyAttempts):
            status, headers = 429, {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, AccessDenied):
            status = 403
        elif isinstance(exc, (IntegrityError, InputError)):
            status = 422
        elif isinstance(exc, UsageError):
            status = 400
        elif isinstance(exc, CheckpointError):
            status = 500
        else:
            status = 422
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def token_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    def doctor(request: Request):
        session = state.auth.session(token_of(request))
        if session is None:
            from fastapi import HTTPException

            raise HTTPException(status_code=401, detail="not logged in", headers={"WWW-Authenticate": "Bearer"})
        return session

    Doctor = Annotated[Any, Depends(doctor)]

    # -- service
    @app.get(f"{API}/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness, and the loaded models with their checkpoint SHA-256."""
        return {"status": "ok", "models": [{"name": m.name, "kind": m.kind, "sha256": m.sha256} for m in state.models.values()]}

    @app.get(f"{API}/version", tags=["service"])
    def version() -> dict[str, Any]:
        """medtools/python/torch versions, the loaded models (with SHA-256) and the endpoints offered."""
        info: dict[str, Any] = {"medtools": medtools.__version__, "python": sys.version.split()[0], "models": [m.describe() for m in state.models.values()], "endpoints": endpoints}
        if "torch" in sys.modules:
            info["torch"] = sys.modules["torch"].__version__
        return info

    # -- log-in
    login_schema = {"requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["user", "password"], "properties": {"user": {"type": "string"}, "password": {"type": "string", "format": "password"}}}}, "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"user": {"type": "string"}, "password": {"type": "string"}}}}}, "required": True}}

    @app.post(f"{API}/login", tags=["auth"], openapi_extra=login_schema)
    async def login(request: Request) -> Any:
        """Key-store password → a short-lived token (JSON, for `Authorization: Bearer`) and an HttpOnly cookie (the page)."""
        from starlette.concurrency import run_in_threadpool

        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise UsageError("the body is not JSON") from None
        else:
            body = dict(await request.form())
        user, password = (body or {}).get("user"), (body or {}).get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
            raise UsageError('log in with {"user": ..., "password": ...}')
        token, session = await run_in_threadpool(state.auth.login, user, password, client_of(request))
        ttl = int(state.auth.ttl)
        response = JSONResponse({"token": token, "token_type": "bearer", "user": session.user, "expires_in": ttl})
        response.set_cookie(COOKIE, token, max_age=ttl, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @app.post(f"{API}/logout", tags=["auth"])
    def logout(request: Request) -> Any:
        """Forget the session (its unlocked key leaves the server's memory)."""
        token = token_of(request)
        if token:
            state.auth.logout(token)
        response = JSONResponse({"status": "logged out"})
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get(f"{API}/me", tags=["auth"])
    def me(session: Doctor) -> dict[str, Any]:
        """Who the token belongs to, and when it expires (epoch seconds)."""
        return {"user": session.user, "expires": int(session.expires)}

    endpoints = ["health", "version", "login", "logout", "me", "encrypt", "decrypt"]

    # -- segment
    # always offered: without the brain family or a seg model it answers 400 naming what is missing
    endpoints.append("segment")

    @app.post(f"{API}/segment", tags=["models"], responses={200: {"content": {"application/gzip": {}, "image/png": {}, "application/dicom": {}}}})
    def segment(
        session: Doctor,
        file: Annotated[list[UploadFile], File(description="The case's images (NIfTI, single-file DICOM, PNG/JPG/TIFF, NPY/NPZ), one per modality in the model's order (see /v1/version).")],
        model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first seg model.")] = None,
        response: Annotated[str, Query(pattern="^(file|json)$", description="file: the label map in the input's format, stats in the X-Medtools-Stats header; json: stats, the label map in base64 and a preview for the page.")] = "file",
    ) -> Any:
        """Label map in the input's format and geometry (the function `medtools segment` runs)."""
        data, name, fmt, stats, view = run_segment(state, file, model)
        if response == "json":
            return {"stats": stats, "filename": name, "format": fmt, "label_map": base64.b64encode(data).decode(), "preview": view}
        return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"), headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Medtools-Stats": json.dumps(stats, sort_keys=True)})

    @app.post(f"{API}/protect", tags=["models"])
    def protect(
        session: Doctor,
        file: Annotated[list[UploadFile], File(description="The case's images, one per modality in the attackers' order (see /v1/version).")],
        attacker: Annotated[Optional[list[str]], Query(description="reid/cls model names to blind (default: the first loaded).")] = None,
        utility: Annotated[Optional[str], Query(description="seg model whose output the noise must keep (default: none).")] = None,
        eps: Annotated[float, Query(gt=0, le=1)] = 0.05,
        steps: Annotated[int, Query(ge=1, le=200)] = 10,
        objective: Annotated[str, Query(pattern="^(untargeted|decoy|entropy|feature|signature)$")] = "untargeted",
        case: Annotated[str, Query(description="Case id (keys the signature pattern).")] = "case",
        patient: Annotated[str, Query(description="The patient's identity among the attacker's classes, if known.")] = "",
    ) -> Any:
        """Adversarially protected images and their metrics (the function `medtools protect` runs;
        a fresh random key per request, so the signature pattern is never reused)."""
        result = run_protect(state, file, attacker, utility, {"eps": eps, "steps": steps, "objective": objective}, safe_name(case), patient)
        state.auth.audit(action="protect", user=session.user, input=",".join(safe_name(f.filename) for f in file), result="ok")
        return result

    # -- encrypt / decrypt
    @app.post(f"{API}/encrypt", tags=["secure"], responses={200: {"content": {"application/octet-stream": {}}}})
    def encrypt(
        session: Doctor,
        file: Annotated[UploadFile, File(description="Any file.")],
        user: Annotated[Optional[list[str]], Form(description="Only these doctors of the store (default: all).")] = None,
    ) -> Any:
        """An .mte container for the doctors of the key store (the container `medtools encrypt --to STORE` writes)."""
        from medtools.secure import container
        from medtools.secure.crypt import recipients

        name = safe_name(file.filename)
        targets = recipients(state.auth.store_path, None, user or None)
        with request_folder(state) as work:
            source = work.save(file)
            target = work.folder / "out.mte"
            with open(source, "rb") as src, open(target, "wb") as sink:
                result = container.encrypt_stream(src, sink, targets, name=name, digest=True)
            data = target.read_bytes()
        state.auth.audit(action="encrypt", user=session.user, input=name, recipients=result.recipients, sha256=result.ciphertext_sha256, result="ok")
        return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{name}.mte"', "X-Medtools-Recipients": ",".join(result.recipients)})

    @app.post(f"{API}/decrypt", tags=["secure"], responses={200: {"content": {"application/octet-stream": {}}}})
    def decrypt(session: Doctor, request: Request, file: Annotated[UploadFile, File(description="An .mte container.")]) -> Any:
        """The plaintext of an .mte file wrapped for the logged-in doctor (as `medtools decrypt --store`); audited."""
        from medtools.core.report import sha256_file
        from medtools.secure import container
        from medtools.secure.crypt import Keyring

        with request_folder(state) as work:
            source = work.save(file)
            target = work.folder / "plain"
            keyring = Keyring(store=state.auth.store(), user=session.user, _unlocked={session.user: session.identity})
            try:
                with open(source, "rb") as src, open(target, "wb") as sink:
                    result = container.decrypt_stream(src, sink, keyring.identities, digest=True)
            except IntegrityError as exc:
                from medtools.secure.keystore import AccessDenied

                state.auth.audit(action="decrypt", user=session.user, client=client_of(request), input=safe_name(file.filename), sha256=sha256_file(source), result="denied" if isinstance(exc, AccessDenied) else "integrity-failure", reason=str(exc))
                raise
            data = target.read_bytes()
        state.auth.audit(action="decrypt", user=session.user, client=client_of(request), input=safe_name(file.filename), sha256=result.ciphertext_sha256, result="ok")
        return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{safe_name(result.name, "decrypted")}"'})

    # -- families that may be absent
    if backends.family_function("classify") is not None and any(m.runner is not None for m in state.models.values()):
        endpoints.append("classify")

        @app.post(f"{API}/classify", tags=["models"])
        def classify(
            session: Doctor,
            file: Annotated[list[UploadFile], File(description="Images (plain, or cipher images at the model's size for a model trained behind a key).")],
            model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first cls model.")] = None,
        ) -> Any:
            """Label and class probabilities per image (what `medtools classify` prints as JSON Lines)."""
            chosen = backends.pick_model(state.models, "classify", model)
            with request_folder(state) as work:
                paths = [str(work.save(upload, i)) for i, upload in enumerate(file)]
                with chosen.lock:
                    results = list(chosen.runner.run(paths))
                records = []
                for upload, (_, result) in zip(file, results):
                    if isinstance(result, Exception):
                        records.append({"file": safe_name(upload.filename), "error": work.scrub(str(result))})
                    else:
                        records.append({**{k: v for k, v in result.items() if k != "path"}, "file": safe_name(upload.filename)})
            if all("error" in r for r in records):
                raise InputError(records[0]["error"])
            return {"model": chosen.name, "model_sha256": chosen.sha256, "results": records}

    if state.index is not None:
        endpoints += ["index", "index/score"]

        @app.get(f"{API}/index", tags=["index"])
        def index_manifest(session: Doctor) -> Any:
            """The index manifest (entries, block SHA-256s, Merkle root, model): what the client verifies hits against."""
            return state.index.index().data

        @app.post(f"{API}/index/score", tags=["index"])
        def index_score(session: Doctor, query: Annotated[UploadFile, File(description="An encrypted query (medtools.index.he.encrypt_query, made with the client's secret context).")]) -> Any:
            """The server half of `medtools index query`: every block's encrypted scores; only the client can decrypt them."""
            return state.index.score(query.file.read())

    # -- the page
    @app.get("/", include_in_schema=False)
    def page() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def build(models_dir: Path, store: Path, *, allowed_hosts: list[str] | None = None, index: Path | None = None, public: Path | None = None, audit_log: Path | None = None, ttl: float | None = None, max_failures: int | None = None, max_upload: int | None = None, device: str | None = None, precision: str | None = None):
    """Load models and key store once → (ASGI app with the body limit, state)."""
    from medtools.serve.auth import DEFAULT_MAX_FAILURES, DEFAULT_TTL, RateLimiter

    auth = Authenticator(store, audit_log=audit_log, ttl=ttl or DEFAULT_TTL, limiter=RateLimiter(max_failures or DEFAULT_MAX_FAILURES))  # cheap: first
    if (index is None) != (public is None):
        raise UsageError("--index DIR and --public CTX go together (the index and its public CKKS context)")
    index_service = backends.IndexService.open(index, public) if index is not None else None
    models = backends.load_models(models_dir, device=device, precision=precision)
    state = ServeState(models=models, auth=auth, index=index_service, max_upload=max_upload or DEFAULT_MAX_UPLOAD, tmp_root=private_root())
    app = create_app(state)
    if allowed_hosts:  # Host header check: a web page that rebinds its DNS name to 127.0.0.1 gets 400
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return BodyLimit(app, state.max_upload), state
