"""The job worker: claims queued jobs and runs them on this process's generator, several at once,
each with its own claim, heartbeat, progress and cancel."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..access.usage import Quotas
from ..errors import GenerationCanceled, MusicGenError
from ..generation.host import ModelHost
from ..generation.protocol import Generator
from ..metrics import ServiceMetrics
from ..render import RenderPlan, render, result_of
from ..schemas import GenerateRequest
from ..settings import Settings
from .model import Claim, JobOutput, JobQueue

logger = logging.getLogger("musicgen_bento")


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
        self,
        queue: JobQueue,
        host: ModelHost,
        settings: Settings,
        metrics: ServiceMetrics | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.queue = queue
        self.host = host
        self.settings = settings
        self.metrics = metrics
        self.quotas = quotas
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
        watch = _JobWatch(self.queue, claim, lost, self._interrupting)
        owner = claim.job.owner
        running = self.quotas.running_job(owner, job_id) if self.quotas is not None else contextlib.nullcontext()
        try:
            with running:
                self._render(claim, generator, watch, arrival)
        except GenerationCanceled:
            if self._interrupting.is_set() and not watch.cancel_seen:
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

    def _render(self, claim: Claim, generator: Generator, watch: _JobWatch, arrival: int | None) -> None:
        """Generates the job's file and records it (unless another worker took the job over)."""
        plan = RenderPlan.of(GenerateRequest.model_validate(claim.job.request), self.settings)
        started = time.perf_counter()
        rendered = render(plan, generator, self.settings, watch.progress, watch.should_cancel, arrival)
        if self.metrics is not None:
            self.metrics.generation_finished("job", time.perf_counter() - started, claim.job.owner)
        result = result_of(rendered).model_dump(mode="json", exclude={"prompt_start_s", "prompt_duration_s"})
        output = JobOutput.from_json(result)
        if self.queue.complete(claim, output, [take.path for take in rendered.takes]):
            logger.info("job %s succeeded (%s)", claim.job.job_id, output.audio_path)
        else:
            logger.warning("job %s was taken over by another worker; its result is discarded", claim.job.job_id)

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


class _JobWatch:
    """A running job's link to its queue: progress reports (throttled) and the cancel check,
    which asks the queue (throttled) and also stops for a lost claim or a stopping worker."""

    def __init__(self, queue: JobQueue, claim: Claim, lost: threading.Event, interrupting: threading.Event) -> None:
        self._queue, self._claim, self._lost, self._interrupting = queue, claim, lost, interrupting
        self._progress_reports, self._cancel_checks = _Throttle(0.25), _Throttle(0.1)
        self.cancel_seen = False

    def progress(self, done: int, total: int) -> None:
        if self._progress_reports.due() or done == total:
            self._queue.report_progress(self._claim, done / total)

    def should_cancel(self) -> bool:
        if not self.cancel_seen and self._cancel_checks.due():
            self.cancel_seen = self._queue.cancel_requested(self._claim.job.job_id)
        return self.cancel_seen or self._lost.is_set() or self._interrupting.is_set()
