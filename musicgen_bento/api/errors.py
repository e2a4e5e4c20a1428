"""The one place errors become HTTP responses.

`MusicGenError`s are answered with their status and a JSON body naming the field and the fix.
Anything else is logged with its traceback and answered with a generic 500, so no traceback
ever reaches a client.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.responses import JSONResponse

from ..errors import MusicGenError

logger = logging.getLogger("musicgen_bento")


def error_response(error: MusicGenError) -> JSONResponse:
    """The HTTP response for a client-facing error."""
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


F = TypeVar("F", bound=Callable[..., Any])


def answers_errors(func: F) -> F:
    """Wraps an API method (plain or async) so `MusicGenError`s become their responses and nothing else leaks."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await func(*args, **kwargs)
            except Exception as error:
                return _answer(func.__name__, error, kwargs.get("ctx"))

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as error:
            return _answer(func.__name__, error, kwargs.get("ctx"))

    return wrapper  # type: ignore[return-value]


def response_for(name: str, error: Exception) -> JSONResponse:
    """The response for `error`, raised while handling route `name` outside BentoML's API methods."""
    return _answer(name, error, None)


def _answer(name: str, error: Exception, context: Any) -> JSONResponse:
    """The response for an error raised by API method `name`."""
    if isinstance(error, MusicGenError):
        if error.status_code >= 500:
            logger.warning("%s failed: %s", name, error.message)
        response = error_response(error)
    else:
        logger.error("%s failed unexpectedly", name, exc_info=error)
        response = JSONResponse(
            {"error": "internal error while handling the request; the server log has the details"},
            status_code=500,
        )
    # A method that takes BentoML's context gets the context's status and headers applied to
    # whatever it returns, so the error's must be set there too.
    if context is not None:
        context.response.status_code = response.status_code
        context.response.headers.update({k: v for k, v in response.headers.items() if k.lower() == "retry-after"})
    return response


# pydantic's wording for the errors whose default message does not say what to do.
_FRIENDLIER = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request; check its spelling against the API page served at /",
    "json_invalid": "the request body is not valid JSON",
    # Only the server-path fields have a pattern.
    "string_pattern_mismatch": "must be the absolute path of a file on the server's disk (starting with /), "
    "with no NUL character",
}


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One readable sentence per invalid field of a pydantic validation error list."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
        message = _FRIENDLIER.get(str(error.get("type")), error.get("msg", "is invalid"))
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "the request body is invalid"
