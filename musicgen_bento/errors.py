"""The service's one exception hierarchy, and the one place errors become HTTP responses.

Every error a user can cause carries its HTTP status, the request field at fault and a
message that says what to change. Unexpected errors are logged with their traceback and
answered with a generic 500, so no traceback ever reaches a client.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.responses import JSONResponse

logger = logging.getLogger("musicgen_bento")


class MusicGenError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        text = f"{self.field}: {self.message}" if self.field else self.message
        body: dict[str, Any] = {"error": text}
        if self.field:
            body["field"] = self.field
        return body


class InvalidParameter(MusicGenError):
    """A request value out of the range the server's settings allow (the same status as a schema violation)."""

    status_code = 400


class InvalidInput(MusicGenError):
    """A source file that cannot be used: a directory, a device, empty, truncated or not audio."""

    status_code = 422


class InputNotFound(MusicGenError):
    """A path in the request names no file."""

    status_code = 404


class InputForbidden(MusicGenError):
    """A path in the request lies outside the allowed input directories."""

    status_code = 403


class InputTooLarge(MusicGenError):
    """A source file over the configured size or duration limit."""

    status_code = 413


class RetryLater(MusicGenError):
    """The server can't take the request now; `Retry-After` says when to try again."""

    status_code = 503
    default_retry_after_s = 5

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = self.default_retry_after_s if retry_after_s is None else retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(RetryLater):
    """The model is still loading (or failed to load)."""


class ShuttingDown(RetryLater):
    """The server is stopping; the request was not (or not completely) served."""


class JobNotFound(MusicGenError):
    """No job has this id (or it expired)."""

    status_code = 404


class Conflict(MusicGenError):
    """The request clashes with the state of a job: audio of an unfinished job, a reused idempotency key."""

    status_code = 409


class QueueFull(RetryLater):
    """The job queue holds its maximum."""

    default_retry_after_s = 30


class UnsupportedMediaType(MusicGenError):
    """A request body that is not JSON: the API's POST routes take JSON only."""

    status_code = 415


class OutputFull(MusicGenError):
    """The output directory's filesystem is full (or its quota or a file size limit reached)."""

    status_code = 507


class OutputUnwritable(RetryLater):
    """The output directory cannot be written: missing permission, a read-only filesystem."""

    default_retry_after_s = 30


class GenerationCanceled(MusicGenError):
    """The caller's cancel check asked generation to stop."""

    status_code = 499


class ModelStoreError(MusicGenError):
    """A model could not be found, imported or loaded; raised at start-up and by the CLI."""


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


class ReadableErrorsMiddleware:
    """Rewrites BentoML's own 4xx bodies (validation, malformed JSON) into this service's shape.

    BentoML validates arguments before our code runs and answers with a generic headline and a
    list of pydantic errors (or, for other client errors, a list wrapping the message). Clients
    get `{"error": "<field>: <what is accepted>", "field": ..., "detail": [...]}` instead.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _refuse_non_json_body(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if 400 <= status < 500 and (_is_json(message) or status in _ROUTING_ERRORS):
                    start.update(message)
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_rewritten(start, b"".join(chunks), send, scope)
            else:
                await send(message)

        await self.app(scope, receive, capture)


def _refuse_non_json_body(scope: dict[str, Any]) -> JSONResponse | None:
    """A 415 for a POST whose body is declared as anything but JSON, before BentoML parses it.

    Every POST route takes a JSON body. BentoML would otherwise parse form and multipart bodies
    itself, and a malformed one (no boundary, a 5,000-digit number, thousands of fields) fails in
    its parser with a 500. A POST with no content type is taken as JSON, as BentoML does.
    """
    if scope.get("method") != "POST":
        return None
    headers = dict(scope.get("headers", []))
    declared = headers.get(b"content-type", b"").decode("latin-1")
    media_type = declared.split(";", 1)[0].strip().lower()
    if not media_type or media_type == "application/json" or media_type.endswith("+json"):
        return None
    shown = declared[:100]
    error = UnsupportedMediaType(
        f"the body must be JSON, sent with 'Content-Type: application/json'; got {shown!r}", field="body"
    )
    return error_response(error)


def _is_json(start_message: dict[str, Any]) -> bool:
    headers = dict(start_message.get("headers", []))
    return headers.get(b"content-type", b"").startswith(b"application/json")


# Starlette's router answers these itself, in plain text, for a path or method no route takes.
_ROUTING_ERRORS = {404: "no route {path}", 405: "{method} is not allowed on {path}"}


async def _send_rewritten(start: dict[str, Any], raw: bytes, send: Any, scope: dict[str, Any]) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    rewritten = _rewrite_body(body)
    status = start["status"]
    if body is None and status in _ROUTING_ERRORS:
        path = str(scope.get("path", ""))
        shown = path if len(path) <= 100 else path[:100] + "…"
        message = _ROUTING_ERRORS[status].format(method=scope.get("method"), path=repr(shown))
        rewritten = {"error": f"{message}; the API page served at / lists the routes"}
    payload = raw if rewritten is None else json.dumps(rewritten).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    content_type = (
        b"application/json"
        if rewritten is not None
        else dict(start.get("headers", [])).get(b"content-type", b"application/json")
    )
    headers += [(b"content-length", str(len(payload)).encode()), (b"content-type", content_type)]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _rewrite_body(body: Any) -> dict[str, Any] | None:
    # BentoML wraps non-validation client errors as a one-element list: [{"error": "..."}].
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return body[0]
    if isinstance(body, dict) and isinstance(body.get("detail"), list) and "field" not in body:
        detail = body["detail"]
        fields = [".".join(str(p) for p in e.get("loc", ())) for e in detail if isinstance(e, dict)]
        rewritten = {"error": describe_validation_errors(detail), "detail": detail}
        if fields and fields[0]:
            rewritten["field"] = fields[0]
        return rewritten
    return None
