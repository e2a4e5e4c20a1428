"""The routes that answer from the service's state, beside BentoML's API methods: health, a job's
view, its cancel and its audio, and the OpenAPI document. Each runs its blocking work on a thread;
errors become their responses (`errors`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidParameter
from ..jobs.service import JobService
from ..schemas import MAX_TAKES, HealthResponse
from .errors import answers_errors, error_response


class ViewedService(Protocol):
    """What these routes need from the service."""

    jobs: JobService

    def health_report(self) -> HealthResponse: ...

    def openapi(self) -> dict[str, Any]: ...


async def get_health(service: ViewedService, request: Request) -> Response:
    """GET /health: what an orchestrator polls until the model is ready."""
    return await answer(service.health_report)


async def get_openapi(service: ViewedService, request: Request) -> Response:
    """GET /docs.json: the OpenAPI document of every route (BentoML's describes its API methods only)."""
    return await answer(service.openapi)


async def get_job(service: ViewedService, request: Request) -> Response:
    """GET /jobs/{job_id}: a job's status, progress and result."""
    return await answer(lambda: service.jobs.view(request.path_params["job_id"]))


async def delete_job(service: ViewedService, request: Request) -> Response:
    """DELETE /jobs/{job_id}: cancels a queued job, or stops a running one at its next step."""
    return await answer(lambda: service.jobs.cancel(request.path_params["job_id"]))


async def get_job_audio(service: ViewedService, request: Request) -> Response:
    """GET /jobs/{job_id}/audio[?take=N]: a succeeded job's audio (of take N), from any replica."""
    raw = request.query_params.get("take", "0")
    if not raw.isdigit() or len(raw) > 2:
        refusal = InvalidParameter(f"must be a take's number, 0 to {MAX_TAKES - 1}; got {raw[:20]!r}", field="take")
        return error_response(refusal)
    return await answer(lambda: service.jobs.audio(request.path_params["job_id"], int(raw)))


async def answer(call: Callable[[], Any]) -> Response:
    """Runs a blocking handler off the event loop; its value (a model, a dict, or audio bytes with
    their media type) becomes the response, its errors their responses."""
    outcome = await run_in_threadpool(answers_errors(call))
    if isinstance(outcome, Response):
        return outcome
    if isinstance(outcome, tuple):  # (audio bytes, media type)
        return Response(outcome[0], media_type=outcome[1])
    if isinstance(outcome, BaseModel):
        return JSONResponse(outcome.model_dump(mode="json", exclude_none=isinstance(outcome, HealthResponse)))
    return JSONResponse(outcome)
