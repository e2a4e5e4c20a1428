"""Responses that stream: `POST /continue/stream` (a WAV file as the codec decodes it) and
`GET /jobs/{job_id}/events` (a job's events, as Server-Sent Events).

A stream is a Starlette route beside BentoML's API methods, which can't set a response's media
type and headers before its body. Everything that can refuse a request (its JSON, the model's
readiness, its files) runs before the response starts, so a refusal is a normal JSON 4xx; once
the header is out, a failure can only cut the stream short, and the client sees fewer bytes than
its Content-Length announced.

The generation runs on a thread from the same gate as `/continue` (the same slots, in arrival
order); its chunks cross to the event loop through a queue. A client that disconnects stops the
generation at the engine's next step, and its file is never put in place.

Job events come from `jobs.events`; an unknown job is a 404 before the stream starts. They are
framed as Server-Sent Events by `sse-starlette`; a quiet stream carries a comment every few
seconds, so proxies and browsers keep it open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import ValidationError
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..access.keys import key_in
from ..access.usage import Quotas
from ..errors import GenerationCanceled, InputTooLarge, InvalidParameter, MusicGenError
from ..generation.host import ModelHost
from ..generation.params import CancelFn
from ..generation.protocol import Generator
from ..jobs.events import KEEP_ALIVE_S, JobEvent
from ..jobs.service import JobService
from ..render import RenderedTake, RenderPlan, StreamedRender, prepare_stream, result_of
from ..schemas import ContinueRequest, RenderResult
from ..settings import Settings
from .admission import Admission, GenerationGate
from .errors import describe_validation_errors, error_response, response_for

logger = logging.getLogger("musicgen_bento")

# A request body is a small JSON object; anything larger is refused before it is all read.
_MAX_BODY_BYTES = 1024 * 1024


class StreamingService(Protocol):
    """What the streaming routes need from the service."""

    settings: Settings
    host: ModelHost
    gate: GenerationGate
    jobs: JobService
    quotas: Quotas


# How long a browser's EventSource waits before reconnecting after a dropped stream.
_RECONNECT_MS = 2000


async def job_events(service: StreamingService, request: Request) -> Response:
    """GET /jobs/{job_id}/events: the job's events as Server-Sent Events, from `Last-Event-ID` on."""
    job_id = request.path_params["job_id"]
    try:
        await run_in_threadpool(service.jobs.view, job_id)  # a 404 for an unknown job, before the stream
    except Exception as error:
        return response_for("job_events", error)
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    events = service.jobs.followers.follow(job_id, last_event_id)
    # Lines end in a bare newline, as most SSE servers write them (the library's default is CRLF).
    return EventSourceResponse(_server_sent(events), headers={"Cache-Control": "no-cache"}, ping=KEEP_ALIVE_S, sep="\n")


async def _server_sent(events: AsyncIterator[JobEvent | None]) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(retry=_RECONNECT_MS, sep="\n")
    async for event in events:
        if event is None:  # the follower heard nothing for a while
            yield ServerSentEvent(comment="keep-alive", sep="\n")
        else:
            yield JSONServerSentEvent(event.data, id=event.id, event=event.name, sep="\n")


async def continue_stream(service: StreamingService, request: Request) -> Response:
    """POST /continue/stream: `/continue`'s body, answered with the WAV file as it is made."""
    try:
        plan = RenderPlan.of(await _continue_request(request), service.settings)
        generator = service.host.generator()
        stream: StreamedRender = await run_in_threadpool(prepare_stream, plan, generator, service.settings)
        admission = service.gate.admit(service.quotas.of(key_in(request.scope)), plan.audio_s)
    except _Refused as refused:
        return refused.response
    except Exception as error:  # MusicGenErrors become their 4xx/5xx; anything else a generic 500
        return response_for("continue_stream", error)
    headers = {**stream_headers(result_of(stream.rendered)), "Content-Length": str(stream.content_length)}
    return StreamingResponse(
        _audio(service.gate, stream, admission),
        media_type="audio/wav",
        headers={**headers, "Cache-Control": "no-store"},
        # Ends the admission if the body never ran (the client gone before it); once it has, a no-op.
        background=BackgroundTask(admission.end, False),
    )


# What a stream's answer says in its headers before its body, from the file it will be.
STREAM_HEADERS = {
    "X-Audio-Path": "Where the complete file is put in the output directory once the stream ends.",
    "X-Seed": "The seed used.",
    "X-Sample-Rate": "Samples per second.",
    "X-Channels": "Audio channels.",
    "X-Duration-S": "Seconds of audio in the file (the source's first with include_source).",
}


def stream_headers(result: RenderResult) -> dict[str, str]:
    """`STREAM_HEADERS` for the file a stream makes."""
    values = (result.audio_path, result.seed, result.sample_rate, result.channels, f"{result.duration_s:g}")
    return {name: str(value) for name, value in zip(STREAM_HEADERS, values, strict=True)}


async def _audio(gate: GenerationGate, stream: StreamedRender, admission: Admission) -> AsyncIterator[bytes]:
    """The file's bytes: the header at once, then each chunk as the generation's thread hands it over."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    client_left = threading.Event()

    def send(data: bytes) -> None:
        loop.call_soon_threadsafe(chunks.put_nowait, data)

    def run(generator: Generator, arrival: int, cancel: CancelFn) -> RenderedTake:
        try:
            return stream.run(send, cancel, arrival)
        finally:
            loop.call_soon_threadsafe(chunks.put_nowait, None)

    async def gone() -> bool:
        return client_left.is_set()

    generation = asyncio.ensure_future(gate.run("continue_stream", run, gone, admission))
    generation.add_done_callback(_log_outcome)
    try:
        yield stream.wav.header
        while (data := await chunks.get()) is not None:
            yield data
        await generation  # a failure ends the stream short of its announced length
    finally:
        # Reached when the client disconnects too (the response is canceled): the gate sees it at
        # its next poll and the engine drops the request at its next step.
        client_left.set()


def _log_outcome(generation: asyncio.Future[RenderedTake]) -> None:
    if generation.cancelled():
        return
    error = generation.exception()
    if error is None:
        logger.info("continue_stream: wrote %s", generation.result().path)
    elif isinstance(error, GenerationCanceled):
        logger.info("continue_stream: canceled; nothing was written")
    elif isinstance(error, MusicGenError):
        logger.warning("continue_stream: stopped after its header was sent: %s", error.message)
    else:
        logger.error("continue_stream: failed after its header was sent", exc_info=error)


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("refused")
        self.response = response


async def _continue_request(request: Request) -> ContinueRequest:
    """The validated body, or a 4xx in the shape BentoML's API methods answer (see `middleware`)."""
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > _MAX_BODY_BYTES:
            too_large = InputTooLarge(f"the request body must be at most {_MAX_BODY_BYTES} bytes", field="body")
            raise _Refused(error_response(too_large))
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        not_utf8 = InvalidParameter("the request body is not valid JSON: JSON is sent in UTF-8", field="body")
        raise _Refused(error_response(not_utf8)) from None
    try:
        return ContinueRequest.model_validate_json(text)
    except ValidationError as invalid:
        detail: list[dict[str, Any]] = json.loads(invalid.json(include_url=False, include_input=False))
        content: dict[str, Any] = {"error": describe_validation_errors(detail), "detail": detail}
        location = ".".join(str(part) for part in detail[0].get("loc", ())) if detail else ""
        if location:
            content["field"] = location
        raise _Refused(JSONResponse(content, status_code=400)) from None
