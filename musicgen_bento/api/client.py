"""A small typed HTTP client for the service: continue, submit jobs, follow them, download audio.

from musicgen_bento.client import MusicGenClient

with MusicGenClient("http://localhost:3000") as client:
    job = client.submit(prompt="slow ambient pads", duration_s=45, seed=3)
    done = client.wait(job.job_id, timeout_s=900)
    client.download(job.job_id, "pads.wav")
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ..jobs.model import JobStatus
from ..schemas import ContinueResponse, HealthResponse, JobAccepted, JobView


class MusicGenClientError(Exception):
    """The service refused a request: its HTTP status, message and the field at fault."""

    def __init__(self, status_code: int, message: str, field: str | None = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.field = field


class MusicGenClient:
    """Talks to one musicgen-bento server."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def __enter__(self) -> MusicGenClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            try:
                body = response.json()
                message, field = str(body.get("error", response.text)), body.get("field")
            except ValueError:
                message, field = response.text, None
            raise MusicGenClientError(response.status_code, message, field)
        return response

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate(self._call("GET", "/health").json())

    def continue_(self, audio_path: str | Path, **options: Any) -> ContinueResponse:
        """POST /continue: blocks until the new file is written; see the README for the options."""
        body = {"audio_path": str(audio_path), **options}
        return ContinueResponse.model_validate(self._call("POST", "/continue", json=body).json())

    def submit(self, **options: Any) -> JobAccepted:
        """POST /generate: queues a job and returns at once."""
        return JobAccepted.model_validate(self._call("POST", "/generate", json=options).json())

    def status(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> JobView:
        """Polls until the job has finished (succeeded, failed or canceled); raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.status(job_id)
            if JobStatus(view.status).finished:
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {view.status} after {timeout_s:g} s")
            time.sleep(poll_s)

    def download(self, job_id: str, path: str | Path, take: int = 0) -> Path:
        """Saves a succeeded job's audio (of take number `take`) to `path` and returns it."""
        target = Path(path)
        suffix = f"?take={take}" if take else ""
        target.write_bytes(self._call("GET", f"/jobs/{job_id}/audio{suffix}").content)
        return target

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("DELETE", f"/jobs/{job_id}").json())
