"""GET /v1/pacs/series and POST /v1/pacs/segment: the PACS's series (medtools.api.pacs_query, what
`medtools pacs query` lists) and one series pulled (medtools.api.pacs_pull) and segmented
(medtools.api.segment), with ``--pacs``. The service's own PACS account is used; the doctor's
log-in decides who may."""

from typing import Annotated, Any, Optional

from fastapi import APIRouter, Query

from medtools import api
from medtools.core.errors import InputError
from medtools.serve.backends import pick_model
from medtools.serve.deps import Caller, Files, State
from medtools.serve.routers.brain import segment_answer

router = APIRouter(tags=["pacs"])


@router.get("/pacs/series")
def pacs_series(
    call: Caller,
    state: State,
    patient: Annotated[Optional[str], Query(description="Patient ID (QIDO matching: * and ? wildcards).")] = None,
    modality: Annotated[Optional[str], Query(description="Series modality, e.g. MR, CT.")] = None,
    date: Annotated[Optional[str], Query(description="Study date YYYYMMDD or range YYYYMMDD-YYYYMMDD.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """The PACS's series matching the filters (`medtools pacs query --json`): study_uid,
    series_uid, patient_id, modality, date, description, instances."""
    series = api.pacs_query(state.pacs.url, patient_id=patient or None, modality=modality or None, date=date or None, limit=limit, ctx=call.ctx, **state.pacs.options())
    return {"pacs": state.pacs.url, "series": series}


@router.post("/pacs/segment")
def pacs_segment(
    call: Caller,
    state: State,
    files: Files,
    study_uid: Annotated[str, Query(description="Study Instance UID.")],
    series_uid: Annotated[str, Query(description="Series Instance UID (one series: the volume).")],
    model: Annotated[Optional[str], Query(description="Model name (file stem in --models); default the first seg model.")] = None,
    response: Annotated[str, Query(pattern="^(file|json|binary)$", description="As /v1/segment.")] = "json",
) -> Any:
    """One series pulled from the PACS (`medtools pacs pull`) and segmented as an upload of it
    would be: the answer of /v1/segment (a NIfTI label map of the series)."""
    chosen = pick_model(state.models, "segment", model)
    datasets = api.pacs_pull(state.pacs.url, study_uid, series_uid=series_uid, ctx=call.ctx, **state.pacs.options())
    if not datasets:
        raise InputError(f"the PACS holds no instances of series {series_uid}")
    name = "series-" + series_uid.replace(".", "_")  # no dots: not read as a file extension
    image = files.series(datasets, name, nan_policy=call.ctx.nan_policy)
    state.auth.audit(action="pacs-pull", user=call.user, input=f"{study_uid}/{series_uid}", result="ok")
    return segment_answer(call, files, chosen, [image], name, response)
