"""A job's life as a sequence of events for clients that follow it (`GET /jobs/{id}/events`).

Events: `status` at each change of status (queued → running → succeeded, failed or canceled; a
job released by a stopping replica goes back to queued, then runs again), `progress` while it
runs (at most `PROGRESS_PER_S` a second), and a final `result` carrying the job's whole view.

Followers wait for the queue's change notices (`JobQueue.watch`: Redis pub/sub across replicas,
in-process calls for SQLite), re-reading the job then; they also re-read it every
`RECHECK_S` in case a notice was lost. Every event has an id that orders it in the job's life,
so a client reconnecting with `Last-Event-ID` gets only what it has not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..schemas import JobView
from .model import Job, JobQueue, JobStatus

PROGRESS_PER_S = 4
RECHECK_S = 5.0
KEEP_ALIVE_S = 15.0  # the longest a follower goes without hearing anything
# Where a finished job's events sit in its life: after any number of attempts.
_FINISHED_PHASE = 1_000_000


@dataclass(frozen=True)
class JobEvent:
    """One event: its id (ordered within the job's life), its name and its JSON data."""

    id: str
    name: str  # status, progress or result
    data: dict[str, Any]
    final: bool = False


def event_key(event_id: str | None) -> tuple[int, int]:
    """An event id as the position it stands for; (-1, -1), before everything, when absent or unreadable."""
    if not event_id:
        return (-1, -1)
    phase, _, step = event_id.partition("-")
    if not (phase.isdigit() and step.isdigit()) or len(event_id) > 24:
        return (-1, -1)
    return (int(phase), int(step))


def _phase(job: Job) -> int:
    """Where the job's status stands in its life: each attempt runs after a queued spell."""
    if job.status.finished:
        return _FINISHED_PHASE
    if job.status is JobStatus.RUNNING:
        return 2 * job.attempts - 1
    return 2 * job.attempts


class JobFollowers:
    """Wakes the clients following a job when the queue says it changed (one per process)."""

    def __init__(self, queue: JobQueue, view_of: Callable[[Job], JobView]) -> None:
        self.queue = queue
        self._view_of = view_of
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        queue.watch(self._changed)

    def _changed(self, job_id: str) -> None:
        with self._lock:
            followers = list(self._waiting.get(job_id, ()))
        for loop, woken in followers:
            loop.call_soon_threadsafe(woken.set)

    async def follow(self, job_id: str, last_event_id: str | None = None) -> AsyncIterator[JobEvent | None]:
        """The job's events after `last_event_id`, ending with the final one; None after
        `KEEP_ALIVE_S` without any (for keep-alives). Ends early if the job disappears (expired)."""
        woken = asyncio.Event()
        follower = (asyncio.get_running_loop(), woken)
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(follower)
        try:
            sent = _Sent(event_key(last_event_id))
            heard_at = time.monotonic()
            while True:
                woken.clear()
                job = await asyncio.to_thread(self.queue.get, job_id)
                if job is None:
                    return
                events, wait_s = sent.events_of(job, self._view_of(job).model_dump(mode="json"), time.monotonic())
                for event in events:
                    heard_at = time.monotonic()
                    yield event
                if job.status.finished:
                    return
                if time.monotonic() - heard_at >= KEEP_ALIVE_S:
                    heard_at = time.monotonic()
                    yield None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=wait_s)
        finally:
            with self._lock:
                waiting = self._waiting.get(job_id)
                if waiting is not None:
                    waiting.discard(follower)
                    if not waiting:
                        del self._waiting[job_id]


class _Sent:
    """How far a follower has been told about a job, and what to tell it next."""

    def __init__(self, seen: tuple[int, int]) -> None:
        self.seen = seen
        self._progress_sent_at = 0.0

    def events_of(self, job: Job, view: dict[str, Any], now: float) -> tuple[list[JobEvent], float]:
        """The events the job's state calls for, and how long to wait for a change before
        looking again (sooner when a progress figure is held back by the rate limit)."""
        events = []
        phase = _phase(job)
        if (phase, 0) > self.seen:
            self.seen = (phase, 0)
            events.append(JobEvent(f"{phase}-0", "status", view))
        wait_s = RECHECK_S
        step = round(job.progress * 1000)
        if job.status is JobStatus.RUNNING and step > 0 and (phase, step) > self.seen:
            due = self._progress_sent_at + 1 / PROGRESS_PER_S - now
            if due <= 0:
                self.seen, self._progress_sent_at = (phase, step), now
                events.append(
                    JobEvent(f"{phase}-{step}", "progress", {"job_id": job.job_id, "progress": view["progress"]})
                )
            else:
                wait_s = due
        if job.status.finished and (phase, 1) > self.seen:
            self.seen = (phase, 1)
            events.append(JobEvent(f"{phase}-1", "result", view, final=True))
        return events, wait_s
