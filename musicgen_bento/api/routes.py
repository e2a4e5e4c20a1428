"""The Starlette app mounted beside BentoML's API methods, with a route for every declared endpoint
BentoML does not serve (`endpoints`): GET and DELETE routes, streamed answers, uploads, the
playground and the OpenAPI document.

BentoML mounts the app when the service class is defined, before any instance exists, so the
routes reach the service through `bind`, which the service calls from its constructor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import NotReady
from .endpoints import ENDPOINTS, Handler
from .errors import error_response


class HttpRoutes:
    """The mounted Starlette app and the service instance its routes serve."""

    def __init__(self) -> None:
        self._service: object | None = None
        self.app = Starlette(
            routes=[
                Route(endpoint.path, self._route(endpoint.handler), methods=[endpoint.method], name=endpoint.name)
                for endpoint in ENDPOINTS
                if endpoint.handler is not None
            ]
        )

    @property
    def paths(self) -> set[str]:
        return {route.path for route in self.app.routes if isinstance(route, Route)}

    def bind(self, service: object) -> None:
        self._service = service

    def _route(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """`handler` with the bound service (a 503 before the service exists)."""

        async def route(request: Request) -> Response:
            if self._service is None:  # only between the mount and the service's constructor
                return error_response(NotReady("the service is starting; retry shortly"))
            return await handler(self._service, request)

        return route
