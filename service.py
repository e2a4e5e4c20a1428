"""The BentoML service: MusicGen's HTTP API surface, and nothing else.

Routes validate (in their types), hand off to the `musicgen_bento` package and shape the
response. Configuration comes from environment variables (see the README's settings table).
"""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from musicgen_bento.errors import ReadableErrorsMiddleware, answers_errors
from musicgen_bento.schemas import ContinueRequest, ContinueResponse, HealthResponse
from musicgen_bento.settings import Settings

with bentoml.importing():
    from musicgen_bento.continuation import continue_music
    from musicgen_bento.lifecycle import ModelHost

SETTINGS = Settings.from_env()


async def get_health(request: Request) -> JSONResponse:
    """GET /health: what an orchestrator polls until the model is ready."""
    service: MusicGen = http_routes.state.service
    return JSONResponse(service.health_report().model_dump(exclude_none=True))


# BentoML's API methods answer POST only; the orchestrator polls health with GET.
http_routes = Starlette(routes=[Route("/health", get_health, methods=["GET"])])


@bentoml.service(
    name="musicgen",
    workers=1,
    # A long continuation on a CPU takes minutes; the orchestrator, not the server, decides when to give up.
    traffic={"timeout": 3600},
)
@bentoml.asgi_app(http_routes, path="/")
class MusicGen:
    """MusicGen continuation and health over HTTP."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.host = ModelHost(self.settings)
        self.host.start()
        http_routes.state.service = self

    def __is_ready__(self) -> bool:
        return self.host.health().status == "ready"

    @bentoml.api(route="/continue", input_spec=ContinueRequest, output_spec=ContinueResponse)
    @answers_errors
    def continue_(self, **fields: Any) -> ContinueResponse:
        """Continue the music in a file on the server's disk; returns the path of a new file."""
        request = ContinueRequest.model_construct(**fields)
        return continue_music(request, self.host.generator(), self.settings)

    @bentoml.api(route="/health")
    def health(self) -> HealthResponse:
        """The same answer as GET /health, for `bentoml.SyncHTTPClient(...).health()`."""
        return self.health_report()

    def health_report(self) -> HealthResponse:
        snapshot = self.host.health()
        return HealthResponse(
            status=snapshot.status,
            model=snapshot.model,
            gpu_id=self.settings.gpu_id,
            device=snapshot.device,
            detail=snapshot.detail,
            licence=snapshot.licence,
        )


# `@bentoml.service` makes MusicGen a bentoml.Service; the stacked decorators hide that from mypy.
MusicGen.add_asgi_middleware(ReadableErrorsMiddleware)  # type: ignore[attr-defined]
