"""`POST /uploads`: an audio file sent as multipart form data, stored for later requests
(`audio.uploads`), so that clients with no access to the server's disk can continue music.

The size limit is applied while the body arrives: a declared Content-Length past it is refused
before any of the body is read, and a body that grows past it is cut off there (413). Everything
else a source file is checked for (that it decodes, is not empty or truncated, is not too long)
is checked on the stored copy before it gets a name a request can use (422).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..audio.uploads import UploadStore
from ..errors import InputTooLarge, InvalidParameter, UnsupportedMediaType
from ..schemas import UploadResponse
from .errors import error_response, response_for

# Room for the multipart envelope (boundaries, part headers, a small field or two) beyond the file.
_ENVELOPE_BYTES = 64 * 1024


class UploadingService(Protocol):
    uploads: UploadStore


class _BodyTooLarge(Exception):
    """Raised from the body's stream once it passes the limit: the parser stops reading there."""


async def post_upload(service: UploadingService, request: Request) -> Response:
    """POST /uploads: stores the multipart field `file`; 201 with its path, length and expiry."""
    store = service.uploads
    too_large = InputTooLarge(
        f"the upload is larger than the limit of {store.limits.max_bytes / 1e6:.0f} MB (MUSICGEN_MAX_INPUT_MB)",
        field="file",
    )
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        shown = request.headers.get("content-type", "")[:100]
        return error_response(
            UnsupportedMediaType(
                f"send the audio file as multipart/form-data in the field 'file' (curl -F file=@song.wav); "
                f"got {shown!r}",
                field="file",
            )
        )
    limit = store.limits.max_bytes + _ENVELOPE_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _refuse_unread(too_large)
    counted = Request(request.scope, _counting(request.receive, limit))
    try:
        form = await counted.form(max_files=1, max_fields=8)
    except _BodyTooLarge:
        return _refuse_unread(too_large)
    except Exception as error:  # a malformed multipart body: the parser's own words name the fault
        detail = getattr(error, "detail", None) or str(error) or type(error).__name__
        return error_response(InvalidParameter(f"the multipart body could not be read: {detail}", field="file"))
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error_response(
                InvalidParameter("is required: send the audio file in the multipart field 'file'", field="file")
            )
        stored = await run_in_threadpool(store.store, upload.file, upload.filename)
    except Exception as error:
        return response_for("upload", error)
    finally:
        await form.close()
    answer = UploadResponse(
        audio_path=str(stored.path),
        duration_s=round(stored.duration_s, 6),
        sample_rate=stored.sample_rate,
        channels=stored.channels,
        expires_at=datetime.fromtimestamp(stored.expires_at, UTC).isoformat(timespec="seconds"),
    )
    return JSONResponse(answer.model_dump(mode="json"), status_code=201)


def _refuse_unread(error: InputTooLarge) -> Response:
    """The 413, closing the connection: the server would otherwise read the rest of the body only
    to discard it, to keep the connection usable."""
    response = error_response(error)
    response.headers["Connection"] = "close"
    return response


def _counting(receive: Any, limit: int) -> Any:
    """`receive`, raising `_BodyTooLarge` once more than `limit` bytes of body have come."""
    received = 0

    async def counted() -> Any:
        nonlocal received
        message = await receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(f"{received} bytes")
        return message

    return counted
