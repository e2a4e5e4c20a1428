"""The routes BentoML's API methods can't be: GET and DELETE (health, job status and audio,
cancel), streamed responses, uploads, the playground page and the OpenAPI document, as a Starlette
app mounted beside them.

BentoML mounts the app when the service class is defined, before any instance exists, so the
routes reach the service through `bind`, which the service calls from its constructor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidParameter, NotReady
from ..schemas import HealthResponse
from .errors import answers_errors, error_response
from .playground_page import get_playground, get_playground_asset
from .streams import StreamingService, continue_stream, job_events
from .uploads import UploadingService, post_upload


class RoutedService(StreamingService, UploadingService, Protocol):
    """What the routes need from the service."""

    def health_report(self) -> HealthResponse: ...

    def openapi(self) -> dict[str, Any]: ...


class HttpRoutes:
    """The mounted Starlette app and the service instance its routes serve."""

    def __init__(self) -> None:
        self._service: RoutedService | None = None
        self.app = Starlette(
            routes=[
                Route("/health", self.get_health, methods=["GET"]),
                Route("/continue/stream", self.post_continue_stream, methods=["POST"]),
                Route("/uploads", self.post_upload, methods=["POST"]),
                Route("/playground", get_playground, methods=["GET"]),
                Route("/playground/{asset}", get_playground_asset, methods=["GET"]),
                # Listed before BentoML's own /docs.json, which this one replaces.
                Route("/docs.json", self.get_openapi, methods=["GET"]),
                Route("/jobs/{job_id}", self.get_job, methods=["GET"]),
                Route("/jobs/{job_id}", self.delete_job, methods=["DELETE"]),
                Route("/jobs/{job_id}/audio", self.get_job_audio, methods=["GET"]),
                Route("/jobs/{job_id}/events", self.get_job_events, methods=["GET"]),
            ]
        )

    @property
    def paths(self) -> set[str]:
        return {route.path for route in self.app.routes if isinstance(route, Route)}

    def bind(self, service: RoutedService) -> None:
        self._service = service

    def _bound(self) -> RoutedService:
        if self._service is None:  # only between the mount and the service's constructor
            raise NotReady("the service is starting; retry shortly")
        return self._service

    async def _with_service(
        self, handler: Callable[[RoutedService, Request], Awaitable[Response]], request: Request
    ) -> Response:
        """Runs an async route's `handler` with the service (a 503 before the service exists)."""
        try:
            service = self._bound()
        except NotReady as error:
            return error_response(error)
        return await handler(service, request)

    async def get_health(self, request: Request) -> Response:
        """GET /health: what an orchestrator polls until the model is ready."""
        return await _answer(lambda: self._bound().health_report())

    async def post_continue_stream(self, request: Request) -> Response:
        """POST /continue/stream: `/continue`, answered with the WAV file as it is made."""
        return await self._with_service(continue_stream, request)

    async def post_upload(self, request: Request) -> Response:
        """POST /uploads: stores an audio file sent as multipart form data (field `file`)."""
        return await self._with_service(post_upload, request)

    async def get_openapi(self, request: Request) -> Response:
        """GET /docs.json: the OpenAPI document of every route (BentoML's describes its API methods only)."""
        return await _answer(lambda: self._bound().openapi())

    async def get_job(self, request: Request) -> Response:
        """GET /jobs/{job_id}: a job's status, progress and result."""
        return await _answer(lambda: self._bound().jobs.view(request.path_params["job_id"]))

    async def get_job_audio(self, request: Request) -> Response:
        """GET /jobs/{job_id}/audio[?take=N]: a succeeded job's audio (of take N), from any replica."""
        raw = request.query_params.get("take", "0")
        if not raw.isdigit() or len(raw) > 2:
            return error_response(InvalidParameter(f"must be a take's number, 0 to 3; got {raw[:20]!r}", field="take"))
        return await _answer(lambda: self._bound().jobs.audio(request.path_params["job_id"], int(raw)))

    async def get_job_events(self, request: Request) -> Response:
        """GET /jobs/{job_id}/events: the job's status, progress and result as Server-Sent Events."""
        return await self._with_service(job_events, request)

    async def delete_job(self, request: Request) -> Response:
        """DELETE /jobs/{job_id}: cancels a queued job, or stops a running one at its next step."""
        return await _answer(lambda: self._bound().jobs.cancel(request.path_params["job_id"]))


async def _answer(call: Callable[[], Any]) -> Response:
    """Runs a blocking handler off the event loop; errors become their responses."""
    outcome = await run_in_threadpool(answers_errors(call))
    if isinstance(outcome, Response):
        return outcome
    if isinstance(outcome, tuple):  # (audio bytes, media type)
        return Response(outcome[0], media_type=outcome[1])
    if isinstance(outcome, dict):
        return JSONResponse(outcome)
    return JSONResponse(outcome.model_dump(mode="json", exclude_none=isinstance(outcome, HealthResponse)))
