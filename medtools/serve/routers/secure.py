"""POST /v1/encrypt and /v1/decrypt: medtools.api.encrypt_stream / decrypt_stream, the .mte
container of ``medtools encrypt --to STORE`` / ``medtools decrypt --store``; audited."""

import hashlib
import io
from typing import Annotated, Any, Optional

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from medtools import api
from medtools.core.errors import IntegrityError
from medtools.serve.deps import Caller, State
from medtools.serve.errors import is_denied
from medtools.serve.uploads import safe_name

router = APIRouter(tags=["secure"])


@router.post("/encrypt", responses={200: {"content": {"application/octet-stream": {}}}})
def encrypt(
    call: Caller,
    state: State,
    file: Annotated[UploadFile, File(description="Any file.")],
    user: Annotated[Optional[list[str]], Form(description="Only these doctors of the store (default: all).")] = None,
) -> Any:
    """An .mte container for the doctors of the key store (the container `medtools encrypt --to STORE` writes)."""
    name = safe_name(file.filename)
    sink = io.BytesIO()
    result = api.encrypt_stream(file.file, sink, store=state.auth.store_path, users=user or None, name=name, ctx=call.ctx)
    state.auth.audit(action="encrypt", user=call.user, input=name, recipients=result["recipients"], sha256=result["sha256"], result="ok")
    return Response(sink.getvalue(), media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{name}.mte"', "X-Medtools-Recipients": ",".join(result["recipients"])})


@router.post("/decrypt", responses={200: {"content": {"application/octet-stream": {}}}})
def decrypt(call: Caller, state: State, file: Annotated[UploadFile, File(description="An .mte container.")]) -> Any:
    """The plaintext of an .mte file wrapped for the logged-in doctor (as `medtools decrypt --store`), with the key unlocked at log-in; audited."""
    name = safe_name(file.filename)
    data = file.file.read()
    sink = io.BytesIO()
    try:
        result = api.decrypt_stream(io.BytesIO(data), sink, store=state.auth.store_path, user=call.user, identity=call.session.identity, ctx=call.ctx)
    except IntegrityError as exc:
        state.auth.audit(action="decrypt", user=call.user, client=call.client, input=name, sha256=hashlib.sha256(data).hexdigest(), result="denied" if is_denied(exc) else "integrity-failure", reason=str(exc))
        raise
    state.auth.audit(action="decrypt", user=call.user, client=call.client, input=name, sha256=result["sha256"], result="ok")
    return Response(sink.getvalue(), media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{safe_name(result["name"], "decrypted")}"'})
