"""The job worker on both queue backends, with a stand-in generator whose generations wait at a gate:
it runs as many jobs at once as the generator decodes together and no more, leaves the rest queued
for other replicas, gives each claimed job its arrival ticket, and on stop hands every running job
back to the queue."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from musicgen_bento.errors import GenerationCanceled
from musicgen_bento.generation.params import NO_HOOKS, GenerationHooks, GenerationRequest, GenerationResult
from musicgen_bento.jobs.model import Job, JobQueue, JobStatus
from musicgen_bento.jobs.worker import JobWorker
from musicgen_bento.settings import Settings


class GatedGenerator:
    """Generations wait until `gate` opens (or are canceled); it records how many ran at once."""

    name = "gated"
    licence = "none"
    sample_rate = 32000
    channels = 1
    is_melody = False
    frame_samples = 640
    device = "cpu"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.gate = threading.Event()
        self.running = 0
        self.peak = 0
        self.arrivals: list[int | None] = []
        self._lock = threading.Lock()
        self._tickets = itertools.count()

    def next_arrival(self) -> int:
        return next(self._tickets)

    def text_tokens(self, prompt: str) -> int:
        return len(prompt.split()) + 1

    def generate(self, request: GenerationRequest, hooks: GenerationHooks = NO_HOOKS) -> GenerationResult:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.arrivals.append(hooks.arrival)
        try:
            while not self.gate.wait(0.01):
                if hooks.should_cancel is not None and hooks.should_cancel():
                    raise GenerationCanceled("canceled")
            frames = round(request.params.duration_s * self.sample_rate)
            return GenerationResult(torch.zeros(1, frames), self.sample_rate, request.params.seed or 0)
        finally:
            with self._lock:
                self.running -= 1


class ReadyHost:
    """The part of `ModelHost` the worker uses, with the stand-in generator always ready."""

    def __init__(self, generator: GatedGenerator) -> None:
        self.generator = generator

    def wait_until_ready(self, timeout_s: float) -> GatedGenerator:
        return self.generator


def submit_jobs(queue: JobQueue, count: int) -> list[str]:
    ids = []
    for index in range(count):
        job = Job(uuid.uuid4().hex, JobStatus.QUEUED, {"prompt": f"job {index}", "duration_s": 0.1}, time.time())
        queue.submit(job, None, "f", max_queued=100)
        ids.append(job.job_id)
    return ids


def start_worker(queue: JobQueue, generator: GatedGenerator, tmp_path: Path) -> JobWorker:
    settings = Settings(output_dir=tmp_path / "output", data_dir=tmp_path / "data")
    worker = JobWorker(queue, ReadyHost(generator), settings)  # type: ignore[arg-type]
    worker.start()
    return worker


def wait_for(condition: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def statuses(queue: JobQueue, ids: list[str]) -> list[str]:
    return [job.status for job in (queue.get(job_id) for job_id in ids) if job is not None]


def test_runs_as_many_jobs_at_once_as_the_generator_decodes_together(queue: JobQueue, tmp_path: Path) -> None:
    generator = GatedGenerator(concurrency=3)
    ids = submit_jobs(queue, 5)
    worker = start_worker(queue, generator, tmp_path)
    try:
        wait_for(lambda: generator.running == 3)
        time.sleep(0.3)  # time enough to claim more, were it going to
        assert sorted(statuses(queue, ids)) == ["queued"] * 2 + ["running"] * 3
        assert worker.running == 3
        generator.gate.set()
        wait_for(lambda: statuses(queue, ids) == ["succeeded"] * 5)
    finally:
        generator.gate.set()
        worker.stop(grace_s=5)
    assert generator.peak == 3
    assert sorted(ticket for ticket in generator.arrivals if ticket is not None) == list(range(5))


def test_one_at_a_time_when_the_generator_decodes_one(queue: JobQueue, tmp_path: Path) -> None:
    generator = GatedGenerator(concurrency=1)
    ids = submit_jobs(queue, 3)
    worker = start_worker(queue, generator, tmp_path)
    try:
        wait_for(lambda: generator.running == 1)
        time.sleep(0.3)
        assert sorted(statuses(queue, ids)) == ["queued", "queued", "running"]
        generator.gate.set()
        wait_for(lambda: statuses(queue, ids) == ["succeeded"] * 3)
    finally:
        generator.gate.set()
        worker.stop(grace_s=5)
    assert generator.peak == 1


def test_stopping_hands_every_running_job_back(queue: JobQueue, tmp_path: Path) -> None:
    generator = GatedGenerator(concurrency=3)
    ids = submit_jobs(queue, 4)
    worker = start_worker(queue, generator, tmp_path)
    wait_for(lambda: generator.running == 3)
    worker.stop(grace_s=0.2)
    assert statuses(queue, ids) == ["queued"] * 4
    assert sorted(job.attempts for job in (queue.get(job_id) for job_id in ids) if job is not None) == [0, 1, 1, 1]
