"""A small typed HTTP client for the service: continue (whole or streamed), submit jobs, follow
them, download audio.

from musicgen_bento.api.client import MusicGenClient

with MusicGenClient("http://localhost:3000") as client:
    job = client.submit(prompt="slow ambient pads", duration_s=45, seed=3)
    done = client.wait(job.job_id, timeout_s=900)
    client.download(job.job_id, "pads.wav")
    with client.continue_stream("/srv/in/song.wav", duration_s=20) as stream:
        for chunk in stream:  # the WAV file's bytes as the server makes them
            player.feed(chunk)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import EventSource

from ..jobs.model import JobStatus
from ..schemas import ContinueResponse, HealthResponse, JobAccepted, JobView, UploadResponse


class MusicGenClientError(Exception):
    """The service refused a request: its HTTP status, message and the field at fault."""

    def __init__(self, status_code: int, message: str, field: str | None = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.field = field


class StreamCutShort(MusicGenClientError):
    """A stream ended before all the bytes its header announced: the server stopped or failed."""


class AudioStream:
    """An open `/continue/stream` answer: what its headers say at once, its bytes as they come.

    Iterate it for the WAV file's bytes (the header first), or `save` it to a file. Close it (or
    leave its `with` block) to hang up: the server then cancels the generation.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        headers = response.headers
        self.audio_path = headers["x-audio-path"]  # where the server puts the file once it is complete
        self.seed = int(headers["x-seed"])
        self.sample_rate = int(headers["x-sample-rate"])
        self.channels = int(headers["x-channels"])
        self.duration_s = float(headers["x-duration-s"])
        self.content_length = int(headers["content-length"])
        self.received = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._response.iter_bytes():
                self.received += len(chunk)
                yield chunk
        except httpx.HTTPError as error:
            raise self._cut_short(f" ({error})") from None
        if self.received < self.content_length:
            raise self._cut_short("")

    def save(self, path: str | Path) -> Path:
        """Writes the stream to `path` as it comes (so a player can follow the file); returns it."""
        target = Path(path)
        with target.open("wb") as handle:
            for chunk in self:
                handle.write(chunk)
                handle.flush()
        return target

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _cut_short(self, why: str) -> StreamCutShort:
        return StreamCutShort(
            502,
            f"the stream ended after {self.received} of its {self.content_length} bytes{why}; the server stopped "
            "or failed while generating, and wrote no file",
        )


@dataclass(frozen=True)
class JobEventMessage:
    """One event of `GET /jobs/{job_id}/events`: its id, its name (status, progress, result) and data."""

    id: str
    event: str
    data: dict[str, Any]


class MusicGenClient:
    """Talks to one musicgen-bento server; `api_key` is sent with every request where the server
    asks for one (`musicgen-bento keys add NAME` makes it)."""

    def __init__(self, url: str, timeout_s: float = 600.0, api_key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)

    def __enter__(self) -> MusicGenClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        try:
            body = response.json()
            message, field = str(body.get("error", response.text)), body.get("field")
        except ValueError:
            message, field = response.text, None
        raise MusicGenClientError(response.status_code, message, field)

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate(self._call("GET", "/health").json())

    def continue_(self, audio_path: str | Path, **options: Any) -> ContinueResponse:
        """POST /continue: blocks until the new file is written; the options are its body's fields (docs/api.md)."""
        body = {"audio_path": str(audio_path), **options}
        return ContinueResponse.model_validate(self._call("POST", "/continue", json=body).json())

    def continue_stream(self, audio_path: str | Path, **options: Any) -> AudioStream:
        """POST /continue/stream: returns as soon as the server starts answering; the audio follows
        as the stream is read. Refusals raise `MusicGenClientError` here, before any audio."""
        body = {"audio_path": str(audio_path), **options}
        response = self._http.send(self._http.build_request("POST", "/continue/stream", json=body), stream=True)
        if response.is_error:
            response.read()
            response.close()
            self._raise_for(response)
        return AudioStream(response)

    def upload(self, path: str | Path) -> UploadResponse:
        """POST /uploads: stores a local audio file on the server for later requests; its
        `audio_path` is what `continue_`, `continue_stream` and `submit` then take."""
        source = Path(path)
        with source.open("rb") as handle:
            response = self._call("POST", "/uploads", files={"file": (source.name, handle)})
        return UploadResponse.model_validate(response.json())

    def submit(self, **options: Any) -> JobAccepted:
        """POST /generate: queues a job and returns at once."""
        return JobAccepted.model_validate(self._call("POST", "/generate", json=options).json())

    def status(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> JobView:
        """The job's view once it has finished (succeeded, failed or canceled); raises TimeoutError.

        Follows the job's events, whose last one carries the finished view: the server says when
        the job ends, at once, and answers nothing meanwhile, where clients polling a batch of jobs
        slow the node that decodes them (the benchmarks page has the measurement). Where the stream
        breaks off early (a proxy cutting it), it polls every `poll_s` until the deadline.
        """
        deadline = time.monotonic() + timeout_s
        try:
            for message in self._events(job_id, None, deadline):
                if message.event == "result":
                    return JobView.model_validate(message.data)
        except (httpx.TransportError, httpx.StreamError):
            pass  # the stream broke off, or the deadline closed it: poll instead
        while True:
            view = self.status(job_id)
            if JobStatus(view.status).finished:
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {view.status} after {timeout_s:g} s")
            time.sleep(poll_s)

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[JobEventMessage]:
        """GET /jobs/{job_id}/events: the job's events as they happen, ending with its `result`
        event (whose data is the finished job's view). Give `last_event_id` to resume after it."""
        yield from self._events(job_id, last_event_id)

    def _events(
        self, job_id: str, last_event_id: str | None, deadline: float | None = None
    ) -> Iterator[JobEventMessage]:
        """The job's events, parsed by `httpx-sse`; the stream is closed at `deadline` (monotonic),
        which ends the iteration with `httpx.StreamError` or a transport error."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        request = self._http.build_request("GET", f"/jobs/{job_id}/events", headers=headers)
        response = self._http.send(request, stream=True)
        closer = None if deadline is None else threading.Timer(max(0.0, deadline - time.monotonic()), response.close)
        try:
            if response.is_error:
                response.read()
                self._raise_for(response)
            if closer is not None:
                closer.start()
            for event in EventSource(response).iter_sse():
                if event.data:  # the stream's first message sets the reconnection delay only
                    yield JobEventMessage(event.id, event.event, event.json())
        finally:
            if closer is not None:
                closer.cancel()
            response.close()

    def download(self, job_id: str, path: str | Path, take: int = 0) -> Path:
        """Saves a succeeded job's audio (of take number `take`) to `path` and returns it."""
        target = Path(path)
        suffix = f"?take={take}" if take else ""
        target.write_bytes(self._call("GET", f"/jobs/{job_id}/audio{suffix}").content)
        return target

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("DELETE", f"/jobs/{job_id}").json())
