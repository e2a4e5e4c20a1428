"""The jobs API's logic: checking a submission before anything is queued, idempotency keys,
the artifact cache, and the views of a job that GET /jobs/{id} and its audio answer with."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..access.usage import Quota, Quotas
from ..audio.files import MEDIA_TYPES
from ..errors import Conflict, JobNotFound
from ..generation.host import ModelHost
from ..generation.protocol import Generator
from ..render import RenderPlan, check_inputs, check_model, check_plan
from ..schemas import GenerateRequest, JobAccepted, JobResult, JobView
from ..settings import Settings
from .events import JobFollowers
from .model import JOB_ID, Job, JobOutput, JobQueue, JobStatus
from .webhooks import check_webhook_url, webhook_of
from .webhooks import view_of as webhook_view


def _unknown(job_id: str) -> JobNotFound:
    shown = repr(job_id) if len(job_id) <= 64 else repr(job_id[:64]) + f"… ({len(job_id)} characters)"
    return JobNotFound(f"no job {shown}; it never existed or its results expired", field="job_id")


def _result_view(job_id: str, output: JobOutput) -> JobResult:
    """A job's output as GET /jobs/{id} shows it, with the URL of each take's audio."""
    takes = output.takes or [{"audio_path": output.audio_path, "seed": output.seed, "duration_s": output.duration_s}]
    fields = {
        **output.to_json(),
        "takes": [
            {**take, "audio_url": f"/jobs/{job_id}/audio" + (f"?take={index}" if index else "")}
            for index, take in enumerate(takes)
        ],
    }
    return JobResult(audio_url=f"/jobs/{job_id}/audio", **fields)


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
    body = request.model_dump(
        exclude={"idempotency_key", "melody_path", "continue_from", "webhook_url", "webhook_events"}
    )
    body["model"] = model
    body["inputs"] = {name: _file_digest(path) for name, path in sorted(inputs.items())}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class JobService:
    """The jobs API's logic: validation before queueing, idempotency, the cache, views."""

    def __init__(self, queue: JobQueue, host: ModelHost, settings: Settings, quotas: Quotas | None = None) -> None:
        self.queue = queue
        self.host = host
        self.settings = settings
        self.quotas = quotas
        self.followers = JobFollowers(queue, self.view_of)

    def submit(self, request: GenerateRequest, quota: Quota | None = None) -> JobAccepted:
        """Validates and queues a job (or answers from the cache or an earlier idempotent submission);
        a new job counts among `quota`'s key's queued jobs and its audio against the key's hour."""
        ready = self.host.ready_generator()
        plan = RenderPlan.of(request, self.settings)
        inputs = self._check(plan, ready)
        cache_key = cache_key_for(request, ready.name, inputs) if ready is not None else None
        now = time.time()
        job = Job(
            job_id=uuid.uuid4().hex,
            status=JobStatus.QUEUED,
            request=request.model_dump(exclude_none=True),
            created_at=now,
            cache_key=cache_key,
            owner=None if quota is None else quota.key,
            webhook=webhook_of(request),
        )
        if cache_key is not None and request.idempotency_key is None:
            hit = self.queue.cached(cache_key)
            if hit is not None and hit.result is not None:
                job.status, job.started_at, job.finished_at, job.progress = JobStatus.SUCCEEDED, now, now, 1.0
                job.result = dataclasses.replace(hit.result, cached=True)
                return self._accepted(self.queue.add_finished(job, audio_from=hit.job_id))
        undo = self._admit(quota, job, plan.audio_s)
        try:
            stored, created = self.queue.submit(
                job, request.idempotency_key, request_fingerprint(request), self.settings.max_queue
            )
        except BaseException:
            undo()
            raise
        if not created:  # an earlier submission with the same idempotency key: nothing new queued
            undo()
        return self._accepted(stored)

    def _admit(self, quota: Quota | None, job: Job, audio_s: float) -> Callable[[], None]:
        if self.quotas is None:
            return lambda: None

        def still_queued(job_id: str) -> bool:
            held = self.queue.get(job_id)
            return held is not None and held.status is JobStatus.QUEUED

        return self.quotas.queue_job(quota, job.job_id, audio_s, still_queued)

    def _check(self, plan: RenderPlan, ready: Generator | None) -> dict[str, Path]:
        """Refuses what can't run, before anything is queued; returns the input files by field."""
        check_plan(plan, self.settings)
        request = plan.options
        if isinstance(request, GenerateRequest) and request.webhook_url is not None:
            check_webhook_url(request.webhook_url, self.settings)
        inputs = check_inputs(plan, self.settings)
        check_model(plan, ready)
        return inputs

    def view(self, job_id: str) -> JobView:
        job = self.queue.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise _unknown(job_id)
        return self.view_of(job)

    def view_of(self, job: Job) -> JobView:
        """A stored job as the API shows it."""
        result = None
        if job.result is not None:
            result = _result_view(job.job_id, job.result)
        return JobView(
            job_id=job.job_id,
            status=job.status.value,
            progress=round(job.progress, 4),
            queue_position=job.queue_position,
            created_at=iso(job.created_at) or "",
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            request=job.request,
            result=result,
            error=job.error,
            webhook=None if job.webhook is None else webhook_view(job.webhook),
        )

    def webhook_body(self, job: Job) -> str:
        """What a webhook delivery of `job` carries: its view, as GET /jobs/{job_id} answers it."""
        return self.view_of(job).model_dump_json()

    def cancel(self, job_id: str) -> JobView:
        if not JOB_ID.fullmatch(job_id) or self.queue.cancel(job_id) is None:
            raise _unknown(job_id)
        view = self.view(job_id)
        job = self.queue.get(job_id)
        if self.quotas is not None and job is not None and job.status is JobStatus.CANCELED:
            self.quotas.job_left_queue(job.owner, job_id)
        return view

    def audio(self, job_id: str, take: int = 0) -> tuple[bytes, str]:
        """The job's audio (of its take number `take`) and its media type."""
        view = self.view(job_id)
        if view.status != JobStatus.SUCCEEDED.value:
            raise Conflict(f"job {job_id} is {view.status}; audio exists only for succeeded jobs", field="job_id")
        takes = len(view.result.takes) if view.result is not None else 1
        if not 0 <= take < takes:
            raise JobNotFound(f"job {job_id} has takes 0 to {takes - 1}; got {take}", field="take")
        data = self.queue.audio(job_id, take)
        if data is None:
            raise JobNotFound(f"the audio of job {job_id!r} is no longer kept", field="job_id")
        output_format = str(view.request.get("output_format", "wav"))
        return data, MEDIA_TYPES[output_format]

    def _accepted(self, job: Job) -> JobAccepted:
        return JobAccepted(
            job_id=job.job_id,
            status=job.status.value,
            queue_position=job.queue_position,
            status_url=f"/jobs/{job.job_id}",
        )
