"""Asynchronous generation jobs: submitting, following, canceling, caching, and the worker that
runs them. The queue itself lives behind `JobQueue`, embedded (SQLite) or shared (Redis)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from .audio import MEDIA_TYPES, audio_file_duration_s, write_audio
from .continuation import check_source, load_source, params_of, prompt_from_end
from .errors import Conflict, GenerationCanceled, InvalidParameter, JobNotFound, MusicGenError
from .generator import CancelFn, GenerationRequest, ProgressFn
from .lifecycle import Generator, ModelHost
from .metrics import ServiceMetrics
from .schemas import GenerateRequest, JobAccepted, JobResult, JobView
from .settings import Settings

logger = logging.getLogger("musicgen_bento")

FINISHED = frozenset({"succeeded", "failed", "canceled"})


@dataclass
class Job:
    """A job as a queue stores it."""

    job_id: str
    status: str
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    queue_position: int | None = None
    attempts: int = 0
    cache_key: str | None = None
    completions: int = 0


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a running job. `token` fences it: a stale holder can't finish the job."""

    job: Job
    token: str


class JobQueue(Protocol):
    """What both queue backends provide. Every method is safe to call from any thread."""

    def submit(self, job: Job, idempotency_key: str | None, fingerprint: str, max_queued: int) -> tuple[Job, bool]:
        """Queues `job`, or returns the job an earlier submission with the same key made (and False)."""

    def add_finished(self, job: Job, audio_from: str) -> Job:
        """Stores an already-succeeded job whose audio is that of the job `audio_from` (a cache hit)."""

    def cached(self, cache_key: str) -> Job | None:
        """The succeeded job remembered under `cache_key`, if it is still kept."""

    def get(self, job_id: str) -> Job | None: ...

    def claim(self, worker_id: str, wait_s: float) -> Claim | None:
        """Takes the next queued job (or one abandoned by a dead worker), waiting up to `wait_s`."""

    def heartbeat(self, claim: Claim) -> bool:
        """Keeps the claim alive; False when another worker took the job over meanwhile."""

    def report_progress(self, claim: Claim, progress: float) -> None: ...

    def complete(self, claim: Claim, result: dict[str, Any], audio_path: Path) -> bool:
        """Records the result (and, where the backend keeps it, the audio); False if the claim was lost."""

    def fail(self, claim: Claim, error: str) -> None: ...

    def mark_canceled(self, claim: Claim) -> None: ...

    def release(self, claim: Claim) -> bool:
        """Puts a running job back at the front of the queue, to run again from the start (a worker
        stopping); False if the claim was lost meanwhile."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancels a queued job at once; asks a running one to stop. None if unknown."""

    def cancel_requested(self, job_id: str) -> bool: ...

    def queued_count(self) -> int:
        """Jobs waiting to be claimed."""

    def audio(self, job_id: str) -> bytes | None: ...

    def sweep(self) -> None:
        """Deletes finished jobs (and their audio) older than the retention time."""

    def close(self) -> None: ...


def open_queue(settings: Settings) -> JobQueue:
    """The queue the settings choose: Redis when a URL is set, else the embedded SQLite one."""
    if settings.redis_url:
        from .queue_redis import RedisJobQueue

        return RedisJobQueue(
            settings.redis_url, settings.redis_prefix, settings.job_ttl_s, settings.visibility_timeout_s
        )
    from .queue_sqlite import SqliteJobQueue

    return SqliteJobQueue(settings.data_dir / "jobs.sqlite3", settings.job_ttl_s)


# Job ids are made by `uuid.uuid4().hex`; anything else names no job and is never looked up.
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def _unknown(job_id: str) -> JobNotFound:
    shown = repr(job_id) if len(job_id) <= 64 else repr(job_id[:64]) + f"… ({len(job_id)} characters)"
    return JobNotFound(f"no job {shown}; it never existed or its results expired", field="job_id")


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def request_fingerprint(request: GenerateRequest) -> str:
    """What makes two submissions the same request (for idempotency keys)."""
    body = request.model_dump(exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cache_key_for(request: GenerateRequest, model: str, inputs: dict[str, Path]) -> str | None:
    """The artifact cache's key: model, parameters and the inputs' content. None without a seed."""
    if request.seed is None:
        return None
    body = request.model_dump(exclude={"idempotency_key", "melody_path", "continue_from"})
    body["model"] = model
    body["inputs"] = {name: _file_digest(path) for name, path in sorted(inputs.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def execute(
    request: GenerateRequest,
    generator: Generator,
    settings: Settings,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    arrival: int | None = None,
) -> tuple[dict[str, Any], Path]:
    """Runs one job's generation and writes its file; returns the result fields and the path."""
    audio_prompt = melody = None
    if request.continue_from:
        source = load_source(
            request.continue_from, settings, generator.sample_rate, generator.channels, "continue_from"
        )
        audio_prompt = prompt_from_end(source, request.prompt_duration_s, generator.frame_samples, "continue_from")
        melody = audio_prompt if generator.is_melody else None
    if request.melody_path:
        melody = load_source(request.melody_path, settings, generator.sample_rate, generator.channels, "melody_path")
    generation = GenerationRequest(params_of(request), audio_prompt=audio_prompt, melody=melody)
    outcome = generator.generate(generation, progress=progress, should_cancel=should_cancel, arrival=arrival)
    audio: torch.Tensor = outcome.audio
    path = write_audio(audio, outcome.sample_rate, settings.output_dir, request.output_format)
    result = {
        "audio_path": str(path),
        "duration_s": round(audio_file_duration_s(path), 6),
        "sample_rate": outcome.sample_rate,
        "channels": int(audio.shape[0]),
        "seed": outcome.seed,
        "model": generator.name,
        "cached": False,
    }
    return result, path


class JobService:
    """The jobs API's logic: validation before queueing, idempotency, the cache, views."""

    def __init__(self, queue: JobQueue, host: ModelHost, settings: Settings) -> None:
        self.queue = queue
        self.host = host
        self.settings = settings

    def submit(self, request: GenerateRequest) -> JobAccepted:
        """Validates and queues a job (or answers from the cache or an earlier idempotent submission)."""
        ready = self.host.ready_generator()
        inputs = self._check(request, ready)
        cache_key = cache_key_for(request, ready.name, inputs) if ready is not None else None
        now = time.time()
        job = Job(
            job_id=uuid.uuid4().hex,
            status="queued",
            request=request.model_dump(exclude_none=True),
            created_at=now,
            cache_key=cache_key,
        )
        if cache_key is not None and request.idempotency_key is None:
            hit = self.queue.cached(cache_key)
            if hit is not None and hit.result is not None:
                job.status, job.started_at, job.finished_at, job.progress = "succeeded", now, now, 1.0
                job.result = {**hit.result, "cached": True}
                return self._accepted(self.queue.add_finished(job, audio_from=hit.job_id))
        stored, _ = self.queue.submit(
            job, request.idempotency_key, request_fingerprint(request), self.settings.max_queue
        )
        return self._accepted(stored)

    def _check(self, request: GenerateRequest, ready: Generator | None) -> dict[str, Path]:
        """Refuses what can't run, before anything is queued; returns the input files by field."""
        settings = self.settings
        if not request.prompt.strip() and not request.melody_path and not request.continue_from:
            raise InvalidParameter("give a text prompt, a melody_path or a continue_from file", field="prompt")
        if request.duration_s > settings.max_job_duration_s:
            raise InvalidParameter(
                f"must be at most {settings.max_job_duration_s:g} seconds (MUSICGEN_MAX_JOB_DURATION_S); "
                f"got {request.duration_s:g}",
                field="duration_s",
            )
        inputs: dict[str, Path] = {}
        for name in ("continue_from", "melody_path"):
            raw = getattr(request, name)
            if raw:
                inputs[name] = check_source(raw, settings, name, to_continue=name == "continue_from")
        if request.continue_from and request.prompt_duration_s > settings.max_prompt_s:
            raise InvalidParameter(
                f"must be at most {settings.max_prompt_s:g} seconds; got {request.prompt_duration_s:g}",
                field="prompt_duration_s",
            )
        if request.melody_path and ready is not None and not ready.is_melody:
            raise InvalidParameter(
                f"the served model {ready.name} is not a melody model; melody_path needs one "
                "(e.g. facebook/musicgen-melody)",
                field="melody_path",
            )
        return inputs

    def view(self, job_id: str) -> JobView:
        job = self.queue.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise _unknown(job_id)
        result = None
        if job.result is not None:
            result = JobResult(audio_url=f"/jobs/{job.job_id}/audio", **job.result)
        return JobView(
            job_id=job.job_id,
            status=job.status,  # type: ignore[arg-type]
            progress=round(job.progress, 4),
            queue_position=job.queue_position,
            created_at=iso(job.created_at) or "",
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            request=job.request,
            result=result,
            error=job.error,
        )

    def cancel(self, job_id: str) -> JobView:
        if not _JOB_ID.fullmatch(job_id) or self.queue.cancel(job_id) is None:
            raise _unknown(job_id)
        return self.view(job_id)

    def audio(self, job_id: str) -> tuple[bytes, str]:
        """The job's audio and its media type."""
        view = self.view(job_id)
        if view.status != "succeeded":
            raise Conflict(f"job {job_id} is {view.status}; audio exists only for succeeded jobs", field="job_id")
        data = self.queue.audio(job_id)
        if data is None:
            raise JobNotFound(f"the audio of job {job_id!r} is no longer kept", field="job_id")
        output_format = str(view.request.get("output_format", "wav"))
        return data, MEDIA_TYPES[output_format]

    def _accepted(self, job: Job) -> JobAccepted:
        return JobAccepted(
            job_id=job.job_id,
            status=job.status,  # type: ignore[arg-type]
            queue_position=job.queue_position,
            status_url=f"/jobs/{job.job_id}",
        )


@dataclass
class _Throttle:
    """Lets a call through at most once per `interval_s`."""

    interval_s: float
    last: float = field(default=0.0)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            return True
        return False


# How long one claim waits for a job to appear: also how soon the worker notices it must stop.
_CLAIM_WAIT_S = 2.0


class JobWorker:
    """Runs queued jobs on this process's generator: up to as many at once as it decodes together
    (`MUSICGEN_BATCH_SLOTS` with the static engine, one with transformers'), each on a thread of
    its own with its own claim, heartbeat, progress and cancel. A claimed job takes its place
    among the generator's requests (`/continue` calls included) in the order it was claimed."""

    def __init__(
        self, queue: JobQueue, host: ModelHost, settings: Settings, metrics: ServiceMetrics | None = None
    ) -> None:
        self.queue = queue
        self.host = host
        self.settings = settings
        self.metrics = metrics
        self.worker_id = f"{uuid.uuid4().hex[:12]}"
        self._stopping = threading.Event()
        self._interrupting = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="musicgen-job-worker", daemon=True)
        self._sweeps = _Throttle(30.0)
        self._queue_reports = _Throttle(1.0)
        self._running: set[threading.Thread] = set()
        self._changed = threading.Condition()

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> int:
        """Jobs this worker is running now."""
        with self._changed:
            return len(self._running)

    def stop(self, grace_s: float) -> None:
        """Stops claiming jobs. Running jobs get `grace_s` seconds to finish; then each is stopped at
        its next decoding step and put back at the front of the queue, to run again from the start
        (after a restart, or at once on another replica)."""
        deadline = time.monotonic() + grace_s
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        # The claiming loop notices within one claim's wait; after it has ended no job can start.
        self._thread.join(timeout=_CLAIM_WAIT_S + 5)
        with self._changed:
            self._changed.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.monotonic()))
            if not self._running:
                return
            self._interrupting.set()
            self._changed.wait_for(lambda: not self._running, timeout=30)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            generator = self.host.wait_until_ready(timeout_s=1.0)
            if generator is None:
                continue
            try:
                self._housekeeping()
                # Claim only what can start decoding now; the rest stays queued for other replicas.
                if not self._wait_for_room(generator.concurrency) or self._stopping.is_set():
                    continue
                claim = self.queue.claim(self.worker_id, wait_s=_CLAIM_WAIT_S)
            except Exception:  # the queue's store may be briefly unreachable; keep serving
                logger.exception("job queue unavailable; retrying")
                self._stopping.wait(2.0)
                continue
            if claim is not None and self._stopping.is_set():
                # Claimed while the worker began to stop: back to the front of the queue, untouched.
                self.queue.release(claim)
            elif claim is not None:
                self._start_job(claim, generator)

    def _housekeeping(self) -> None:
        """Deletes expired jobs now and then, and reports the queue's length."""
        if self._sweeps.due():
            self.queue.sweep()
        if self.metrics is not None and self._queue_reports.due():
            self.metrics.jobs(queued=self.queue.queued_count())

    def _wait_for_room(self, capacity: int) -> bool:
        """Waits up to a second until fewer than `capacity` jobs run (or the worker stops)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._running) < capacity or self._stopping.is_set(), timeout=1.0)

    def _start_job(self, claim: Claim, generator: Generator) -> None:
        arrival = generator.next_arrival()  # its place among the generator's requests: claimed now

        def run_and_leave() -> None:
            try:
                self.run(claim, generator, arrival)
            finally:
                with self._changed:
                    self._running.discard(thread)
                    self._changed.notify_all()
                    running = len(self._running)
                if self.metrics is not None:
                    self.metrics.jobs(running=running)

        thread = threading.Thread(target=run_and_leave, name=f"musicgen-job-{claim.job.job_id[:8]}", daemon=True)
        with self._changed:
            self._running.add(thread)
            running = len(self._running)
        if self.metrics is not None:
            self.metrics.jobs(running=running)
        thread.start()

    def run(self, claim: Claim, generator: Generator, arrival: int | None = None) -> None:
        """Runs one claimed job to its end: succeeded, failed or canceled."""
        job_id = claim.job.job_id
        ended, lost = threading.Event(), threading.Event()
        heartbeat = threading.Thread(target=self._keep_alive, args=(claim, ended, lost), daemon=True)
        heartbeat.start()
        progress_throttle, cancel_throttle = _Throttle(0.25), _Throttle(0.1)
        cancel_seen = False

        def progress(done: int, total: int) -> None:
            if progress_throttle.due() or done == total:
                self.queue.report_progress(claim, done / total)

        def should_cancel() -> bool:
            nonlocal cancel_seen
            if not cancel_seen and cancel_throttle.due():
                cancel_seen = self.queue.cancel_requested(job_id)
            return cancel_seen or lost.is_set() or self._interrupting.is_set()

        try:
            request = GenerateRequest.model_validate(claim.job.request)
            started = time.perf_counter()
            result, path = execute(request, generator, self.settings, progress, should_cancel, arrival)
            if self.metrics is not None:
                self.metrics.generation_finished("job", time.perf_counter() - started)
            if self.queue.complete(claim, result, path):
                logger.info("job %s succeeded (%s)", job_id, result["audio_path"])
            else:
                logger.warning("job %s was taken over by another worker; its result is discarded", job_id)
        except GenerationCanceled:
            if self._interrupting.is_set() and not cancel_seen:
                released = not lost.is_set() and self.queue.release(claim)
                logger.warning("job %s interrupted by shutdown%s", job_id, "; queued again" if released else "")
            elif not lost.is_set():
                self.queue.mark_canceled(claim)
        except MusicGenError as error:
            self.queue.fail(claim, str(error.body()["error"]))
        except Exception:
            logger.exception("job %s failed", job_id)
            self.queue.fail(claim, "internal error while generating; the server log has the details")
        finally:
            ended.set()
            heartbeat.join(timeout=5)

    def _keep_alive(self, claim: Claim, ended: threading.Event, lost: threading.Event) -> None:
        """Heart-beats until the job ends; sets `lost` if another worker took the job over."""
        interval = max(0.2, self.settings.visibility_timeout_s / 4)
        while not ended.wait(interval):
            try:
                if not self.queue.heartbeat(claim):
                    lost.set()
                    return
            except Exception:
                logger.exception("heartbeat for job %s failed", claim.job.job_id)
