"""ASGI middleware that gives every client error the service's JSON shape, including the ones
BentoML and Starlette answer themselves (validation, malformed bodies, unknown routes), and logs
each refused request in one line.

A refused request is the client's mistake, not the server's: it gets one INFO line (status, route,
field, the API key's name) and no traceback. BentoML logs a traceback at ERROR for every request its
own validation refuses; `quiet_refusals` drops those, and keeps its tracebacks of server errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

from ..access.keys import key_in
from ..errors import UnsupportedMediaType
from .endpoints import ENDPOINTS
from .errors import describe_validation_errors, error_response

logger = logging.getLogger("musicgen_bento")


def log_refusal(scope: dict[str, Any], status: int, body: Any) -> None:
    """One INFO line for a refused request: its status, route, the field at fault and the key's name."""
    field = body.get("field") if isinstance(body, dict) else None
    key = getattr(key_in(scope), "name", None)
    path = str(scope.get("path", ""))[:100]
    logger.info(
        "refused %s %s: %d%s%s",
        scope.get("method"),
        path,
        status,
        f" ({field})" if field else "",
        f", key {key}" if key else "",
    )


class _NoTracebackForRefusals(logging.Filter):
    """Drops BentoML's "Exception on <route>" records whose exception is a refusal (a 4xx)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            return False
        return not (isinstance(error, BentoMLException) and int(error.error_code) < 500)


def quiet_refusals() -> None:
    """Keeps BentoML from logging a traceback for the requests its validation refuses (call once,
    where the service is defined); ours log their one line."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoTracebackForRefusals())


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
            log_refusal(scope, refusal.status_code, refusal.body())
            await error_response(refusal)(scope, receive, send)
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


# POST routes whose bodies are not JSON; they check their own media type.
_NOT_JSON_ROUTES = {
    endpoint.path for endpoint in ENDPOINTS if endpoint.method == "POST" and endpoint.body == "multipart"
}


def _refuse_non_json_body(scope: dict[str, Any]) -> UnsupportedMediaType | None:
    """A 415 for a POST whose body is declared as anything but JSON, before BentoML parses it.

    Every POST route but the multipart ones (uploads) takes a JSON body. BentoML would otherwise
    parse form and multipart bodies itself, and a malformed one (no boundary, a 5,000-digit number,
    thousands of fields) fails in its parser with a 500. A POST with no content type is taken as JSON, as BentoML does.
    """
    if scope.get("method") != "POST" or scope.get("path") in _NOT_JSON_ROUTES:
        return None
    headers = dict(scope.get("headers", []))
    declared = headers.get(b"content-type", b"").decode("latin-1")
    media_type = declared.split(";", 1)[0].strip().lower()
    if not media_type or media_type == "application/json" or media_type.endswith("+json"):
        return None
    shown = declared[:100]
    return UnsupportedMediaType(
        f"the body must be JSON, sent with 'Content-Type: application/json'; got {shown!r}", field="body"
    )


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
    log_refusal(scope, status, rewritten if rewritten is not None else body)
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
        if fields:
            rewritten["field"] = fields[0] or "body"  # no location: the body as a whole (not JSON, say)
        return rewritten
    return None
