"""One contract, two queue backends: the embedded SQLite queue and the shared Redis queue.

Every test here runs against both, on a real SQLite file and a real Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from musicgen_bento.errors import Conflict, QueueFull
from musicgen_bento.jobs.model import Job, JobOutput, JobQueue, JobStatus
from musicgen_bento.jobs.redis_queue import RedisJobQueue
from musicgen_bento.jobs.sqlite_queue import SqliteJobQueue

OpenQueue = Callable[..., JobQueue]


@pytest.fixture(params=["sqlite", "redis"])
def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenQueue]:
    """Opens queues of the backend under test; all share one store (one file, or one Redis prefix)."""
    opened: list[JobQueue] = []
    if request.param == "sqlite":

        def open_one(ttl_s: float = 3600, visibility_s: float = 60) -> JobQueue:
            queue = SqliteJobQueue(tmp_path / "jobs.sqlite3", ttl_s)
            opened.append(queue)
            return queue

    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        def open_one(ttl_s: float = 3600, visibility_s: float = 60) -> JobQueue:
            queue = RedisJobQueue(url, prefix, ttl_s, visibility_s)
            opened.append(queue)
            return queue

    yield open_one
    for queue in opened:
        queue.close()


@pytest.fixture
def queue(open_queue: OpenQueue) -> JobQueue:
    return open_queue()


def new_job(**request: Any) -> Job:
    return Job(
        job_id=uuid.uuid4().hex, status=JobStatus.QUEUED, request={"prompt": "x", **request}, created_at=time.time()
    )


def output(audio_file: Path, seed: int, cached: bool = False) -> JobOutput:
    return JobOutput(str(audio_file), 1.0, 32000, 1, seed, "tiny", cached)


def submit(queue: JobQueue, job: Job | None = None, key: str | None = None, fingerprint: str = "f") -> Job:
    stored, _ = queue.submit(job or new_job(), key, fingerprint, max_queued=100)
    return stored


@pytest.fixture
def audio_file(tmp_path: Path) -> Path:
    path = tmp_path / "out.wav"
    path.write_bytes(b"RIFF-pretend-wav-bytes")
    return path


def test_submitted_jobs_are_queued_in_order_with_positions(queue: JobQueue) -> None:
    first, second = submit(queue), submit(queue)
    assert (first.status, first.queue_position) == ("queued", 0)
    assert (second.status, second.queue_position) == ("queued", 1)


def test_claim_takes_the_oldest_job_and_marks_it_running(queue: JobQueue) -> None:
    first, second = submit(queue), submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None and claim.job.job_id == first.job_id
    running = queue.get(first.job_id)
    assert running is not None
    assert (running.status, running.attempts, running.queue_position) == ("running", 1, None)
    assert running.started_at is not None
    assert queue.get(second.job_id).queue_position == 0  # type: ignore[union-attr]


def test_claim_on_an_empty_queue_waits_then_returns_none(queue: JobQueue) -> None:
    started = time.monotonic()
    assert queue.claim("worker-a", wait_s=0.5) is None
    assert time.monotonic() - started >= 0.4


def test_complete_stores_result_and_audio(queue: JobQueue, audio_file: Path) -> None:
    job = submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    queue.report_progress(claim, 0.5)
    assert queue.get(job.job_id).progress == pytest.approx(0.5)  # type: ignore[union-attr]
    assert queue.complete(claim, output(audio_file, seed=1), [audio_file])
    done = queue.get(job.job_id)
    assert done is not None
    assert (done.status, done.progress, done.completions) == ("succeeded", 1.0, 1)
    assert done.result == output(audio_file, seed=1)
    assert done.finished_at is not None
    assert queue.audio(job.job_id) == audio_file.read_bytes()


def test_fail_records_the_error(queue: JobQueue) -> None:
    job = submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    queue.fail(claim, "continue_from: no file")
    failed = queue.get(job.job_id)
    assert failed is not None and (failed.status, failed.error) == ("failed", "continue_from: no file")
    assert queue.audio(job.job_id) is None


def test_canceling_a_queued_job_takes_it_out_of_the_queue(queue: JobQueue) -> None:
    job = submit(queue)
    canceled = queue.cancel(job.job_id)
    assert canceled is not None and canceled.status == "canceled"
    assert queue.claim("worker-a", wait_s=0.3) is None


def test_canceling_a_running_job_asks_its_worker_to_stop(queue: JobQueue) -> None:
    job = submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    assert not queue.cancel_requested(job.job_id)
    assert queue.cancel(job.job_id).status == "running"  # type: ignore[union-attr]
    assert queue.cancel_requested(job.job_id)
    queue.mark_canceled(claim)
    assert queue.get(job.job_id).status == "canceled"  # type: ignore[union-attr]


def test_unknown_jobs_are_none(queue: JobQueue) -> None:
    assert queue.get("nope") is None
    assert queue.cancel("nope") is None
    assert queue.audio("nope") is None


def test_idempotency_key_returns_the_first_job(queue: JobQueue) -> None:
    first, created = queue.submit(new_job(), "key-1", "fingerprint-a", max_queued=10)
    again, created_again = queue.submit(new_job(), "key-1", "fingerprint-a", max_queued=10)
    assert created and not created_again
    assert again.job_id == first.job_id
    assert queue.claim("worker-a", wait_s=0.3) is not None
    assert queue.claim("worker-a", wait_s=0.3) is None  # only one job was queued


def test_idempotency_key_reused_for_another_request_is_a_conflict(queue: JobQueue) -> None:
    queue.submit(new_job(), "key-2", "fingerprint-a", max_queued=10)
    with pytest.raises(Conflict, match="different request"):
        queue.submit(new_job(), "key-2", "fingerprint-b", max_queued=10)


def test_a_full_queue_refuses_more(queue: JobQueue) -> None:
    for _ in range(2):
        queue.submit(new_job(), None, "f", max_queued=2)
    with pytest.raises(QueueFull, match="maximum of 2"):
        queue.submit(new_job(), None, "f", max_queued=2)


def test_finished_jobs_expire_after_the_retention_time(open_queue: OpenQueue, audio_file: Path) -> None:
    queue = open_queue(ttl_s=1)
    job = submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    queue.complete(claim, output(audio_file, seed=1), [audio_file])
    assert queue.get(job.job_id) is not None
    time.sleep(2.2)
    queue.sweep()
    assert queue.get(job.job_id) is None
    assert queue.audio(job.job_id) is None


def test_every_take_is_kept_and_a_cache_hit_serves_them_all(queue: JobQueue, tmp_path: Path) -> None:
    files = []
    for take in range(3):
        files.append(tmp_path / f"take-{take}.wav")
        files[-1].write_bytes(f"take {take}".encode())
    job = new_job()
    job.cache_key = "cache-key-takes"
    submit(queue, job)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    takes = [{"audio_path": str(path), "seed": 5 + index, "duration_s": 1.0} for index, path in enumerate(files)]
    assert queue.complete(claim, replace(output(files[0], seed=5), takes=takes), files)
    assert [queue.audio(job.job_id, take) for take in range(3)] == [path.read_bytes() for path in files]
    assert queue.audio(job.job_id, 3) is None
    hit = queue.cached("cache-key-takes")
    assert hit is not None and hit.result is not None
    copy = new_job()
    copy.status, copy.result, copy.finished_at = JobStatus.SUCCEEDED, replace(hit.result, cached=True), time.time()
    queue.add_finished(copy, audio_from=hit.job_id)
    assert [queue.audio(copy.job_id, take) for take in range(3)] == [path.read_bytes() for path in files]


def test_a_remembered_result_is_found_by_its_cache_key(queue: JobQueue, audio_file: Path) -> None:
    job = new_job()
    job.cache_key = "cache-key-1"
    submit(queue, job)
    assert queue.cached("cache-key-1") is None
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    queue.complete(claim, output(audio_file, seed=1), [audio_file])
    hit = queue.cached("cache-key-1")
    assert hit is not None and hit.job_id == job.job_id
    copy = new_job()
    assert hit.result is not None
    copy.status, copy.result, copy.finished_at = JobStatus.SUCCEEDED, replace(hit.result, cached=True), time.time()
    stored = queue.add_finished(copy, audio_from=hit.job_id)
    assert stored.status is JobStatus.SUCCEEDED and stored.result == output(audio_file, seed=1, cached=True)
    assert queue.audio(copy.job_id) == audio_file.read_bytes()


def test_a_stale_claim_cannot_complete_a_job_taken_over(open_queue: OpenQueue, audio_file: Path) -> None:
    """The embedded queue re-queues running jobs when it is reopened (a restart after a crash); Redis
    hands a job whose holder stopped heart-beating to another worker. Either way the old holder
    can no longer finish the job: it completes once."""
    first_queue = open_queue(visibility_s=0.5)
    job = submit(first_queue)
    stale = first_queue.claim("worker-a", wait_s=1)
    assert stale is not None
    second_queue = open_queue(visibility_s=0.5)  # a restarted process, or another replica
    time.sleep(0.8)  # past the visibility timeout, without heartbeats
    fresh = second_queue.claim("worker-b", wait_s=1)
    assert fresh is not None and fresh.job.job_id == job.job_id
    assert second_queue.get(job.job_id).attempts == 2  # type: ignore[union-attr]
    assert not first_queue.heartbeat(stale)
    assert not first_queue.complete(stale, output(audio_file, seed=1), [audio_file])
    assert second_queue.complete(fresh, output(audio_file, seed=2), [audio_file])
    done = second_queue.get(job.job_id)
    assert done is not None
    assert (done.status, done.completions, done.result) == ("succeeded", 1, output(audio_file, seed=2))


def test_a_released_job_is_first_in_line_again_for_any_worker(open_queue: OpenQueue, audio_file: Path) -> None:
    """A stopping worker hands its running job back: it is queued ahead of the jobs behind it and
    the next claim (another replica's, at once: no visibility timeout to wait out) runs it again."""
    stopping, other = open_queue(), open_queue()
    job, behind = submit(stopping), submit(stopping)
    claim = stopping.claim("worker-a", wait_s=1)
    assert claim is not None and claim.job.job_id == job.job_id
    stopping.report_progress(claim, 0.4)

    assert stopping.release(claim)
    released = other.get(job.job_id)
    assert released is not None
    assert (released.status, released.queue_position, released.progress) == ("queued", 0, 0.0)
    assert other.get(behind.job_id).queue_position == 1  # type: ignore[union-attr]

    again = other.claim("worker-b", wait_s=1)
    assert again is not None and again.job.job_id == job.job_id
    assert other.get(job.job_id).attempts == 2  # type: ignore[union-attr]
    assert not stopping.release(claim)  # the old claim is stale: it can neither release nor complete
    assert not stopping.complete(claim, output(audio_file, seed=1), [audio_file])
    assert other.complete(again, output(audio_file, seed=1), [audio_file])
    assert other.get(job.job_id).completions == 1  # type: ignore[union-attr]


def test_redis_heartbeats_keep_a_running_job_from_being_taken_over(redis_url: str, redis_prefix: str) -> None:
    # The embedded queue has one process, so only a restart re-queues its running jobs; with Redis,
    # a replica that heart-beats keeps its job however long it runs.
    queue = RedisJobQueue(redis_url, redis_prefix, 3600, visibility_timeout_s=0.6)
    other = RedisJobQueue(redis_url, redis_prefix, 3600, visibility_timeout_s=0.6)
    submit(queue)
    claim = queue.claim("worker-a", wait_s=1)
    assert claim is not None
    for _ in range(4):
        time.sleep(0.3)
        assert queue.heartbeat(claim)
    assert other.claim("worker-b", wait_s=0.2) is None
    queue.close()
    other.close()
