"""What a job is: its record, its status, a worker's claim on it, its output, and the protocol
both queue backends (embedded SQLite, shared Redis) implement."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(str, Enum):
    """A job's state. The values are stored as they are (SQL rows, Redis hashes, Lua scripts)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


@dataclass(frozen=True)
class JobOutput:
    """What a succeeded job produced, as the queue stores it."""

    audio_path: str
    duration_s: float
    sample_rate: int
    channels: int
    seed: int
    model: str
    cached: bool = False
    provenance: dict[str, Any] | None = None  # schemas.Provenance, as JSON
    takes: list[dict[str, Any]] = field(default_factory=list)  # schemas.Take each, the first one above

    @property
    def audio_paths(self) -> list[str]:
        """Every take's file, in order (one when the job had one take)."""
        return [str(take["audio_path"]) for take in self.takes] or [self.audio_path]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOutput:
        return cls(**data)


@dataclass
class Job:
    """A job as a queue stores it."""

    job_id: str
    status: JobStatus
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    result: JobOutput | None = None
    error: str | None = None
    queue_position: int | None = None
    attempts: int = 0
    cache_key: str | None = None
    completions: int = 0
    owner: str | None = None  # the name of the API key that submitted it (with keys on)
    webhook: dict[str, Any] | None = None  # where its events go and how their deliveries stand (`webhooks`)


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a running job.

    `attempt` fences it: each claim of a job increments its attempts, and a queue accepts an
    outcome only under the attempt the job is running under, so a stale holder can't finish it.
    """

    job: Job
    attempt: int
    worker_id: str
    entry_id: str = ""  # Redis: the stream entry carrying the job (SQLite needs none)


def lease_free(webhook: dict[str, Any]) -> bool:
    """Whether a job's webhook state may be leased: no one holds it, or its lease ran out (even a
    holder's own second pass waits: one pass at a time delivers a job's events)."""
    lease = webhook.get("lease") or {}
    return not lease or float(lease.get("until", 0)) <= time.time()


# Job ids are made by `uuid.uuid4().hex`; anything else names no job and is never looked up.
JOB_ID = re.compile(r"[0-9a-f]{32}")


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

    def complete(self, claim: Claim, output: JobOutput, audio_paths: Sequence[Path]) -> bool:
        """Records the output (and, where the backend keeps it, each take's audio, in order); False if
        the claim was lost."""

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

    def audio(self, job_id: str, take: int = 0) -> bytes | None:
        """A succeeded job's audio (of its take number `take`), if it is still kept."""

    def sweep(self) -> None:
        """Deletes finished jobs (and their audio) older than the retention time."""

    def webhook_jobs(self) -> list[str]:
        """Jobs whose webhook has deliveries still to make (the jobs may have ended meanwhile)."""

    def lease_webhook(self, job_id: str, holder: str, lease_s: float) -> Job | None:
        """The job, its webhook state leased to `holder` for `lease_s` so that one replica delivers
        each event; None while another holds it, or when the job is gone (it then leaves
        `webhook_jobs`)."""

    def save_webhook(self, job_id: str, holder: str, state: dict[str, Any], still_open: bool) -> bool:
        """Stores the job's webhook state and ends `holder`'s lease; False when the lease was lost.
        A state no longer `still_open` leaves `webhook_jobs`."""

    def watch(self, changed: Callable[[str], None]) -> None:
        """Calls `changed(job_id)`, on any thread, after each change to a job's status or progress:
        changes made by any replica sharing the queue (Redis), or by this process (SQLite, whose
        file one replica owns). It must be quick and must not raise."""

    def close(self) -> None: ...
