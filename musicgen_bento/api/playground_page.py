"""`GET /playground`: the page people try the service with, served by the service itself.

Its HTML, CSS and JavaScript live beside this module (`playground/`), are read once, and load
nothing from any other host; the Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from ..errors import NoSuchFile
from .errors import error_response

_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}
# Only this server: its API, and the audio the page itself makes (blob: URLs) or draws.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "media-src 'self' blob:; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'"
)


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("playground", name).read_bytes()


def _asset(name: str) -> Response:
    return Response(
        _read(name),
        media_type=_ASSETS[name],
        headers={"Content-Security-Policy": _POLICY, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# The files the page loads beside itself.
ASSET_NAMES = tuple(name for name in _ASSETS if name != "index.html")


async def get_playground(service: object, request: Request) -> Response:
    """GET /playground: the page."""
    return _asset("index.html")


async def get_playground_asset(service: object, request: Request) -> Response:
    """GET /playground/{asset}: its stylesheet and script."""
    name = request.path_params["asset"]
    if name not in ASSET_NAMES:
        return error_response(NoSuchFile(f"the playground has no file {name[:100]!r}", field="asset"))
    return _asset(name)
