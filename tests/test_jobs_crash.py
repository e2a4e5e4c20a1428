"""Crashes: a serving process killed with SIGKILL in the middle of three jobs decoding together,
and every job still finishes — after a restart on the embedded queue, on a second replica with
Redis. Nothing is lost and nothing runs twice to completion."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from musicgen_bento.api.client import MusicGenClient

from .conftest import TINY_TEXT, Server

# Three slots: three jobs decode together, a fourth waits in the queue.
SETTINGS = {"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_MAX_JOB_DURATION_S": "60", "MUSICGEN_BATCH_SLOTS": "3"}
RUNNING = 3


def start_running_jobs(server: Server) -> tuple[list[str], str]:
    """Submits three long jobs and a short one behind them; returns their ids once the three are
    all under way together (the short one still queued)."""
    with MusicGenClient(server.url) as client:
        long_jobs = [
            client.submit(prompt=f"interrupted {n}", duration_s=30.0, seed=8 + n).job_id for n in range(RUNNING)
        ]
        queued_job = client.submit(prompt="waiting", duration_s=1.0, seed=20).job_id
        deadline = time.monotonic() + 120
        while min((views := [client.status(job) for job in long_jobs]), key=lambda v: v.progress).progress < 0.15:
            assert time.monotonic() < deadline, views
            time.sleep(0.1)
        assert [view.status for view in views] == ["running"] * RUNNING
        assert client.status(queued_job).status == "queued"
    return long_jobs, queued_job


def finish(server: Server, *job_ids: str) -> list[Any]:
    with MusicGenClient(server.url) as client:
        return [client.wait(job_id, timeout_s=240) for job_id in job_ids]


def test_embedded_queue_finishes_killed_jobs_after_a_restart(
    start_server: Any, tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]
) -> None:
    workdir = tmp_path_factory.mktemp("crash-sqlite")
    first = start_server(settings=SETTINGS, workdir=workdir)
    first.wait_until("ready", timeout=180)
    long_jobs, queued_job = start_running_jobs(first)
    first.kill()

    second = start_server(settings=SETTINGS, workdir=workdir)
    second.wait_until("ready", timeout=180)
    done = finish(second, *long_jobs, queued_job)
    assert [view.status for view in done] == ["succeeded"] * (RUNNING + 1)
    assert [view.result.duration_s for view in done[:RUNNING]] == [30.0] * RUNNING

    rows = sqlite3.connect(workdir / "data" / "jobs.sqlite3").execute(
        "SELECT job_id, attempts, completions FROM jobs WHERE job_id IN (?, ?, ?, ?)", (*long_jobs, queued_job)
    )
    counts = {job_id: (attempts, completions) for job_id, attempts, completions in rows}
    assert [counts[job] for job in long_jobs] == [(2, 1)] * RUNNING  # each ran again after the crash, completed once
    assert counts[queued_job] == (1, 1)  # stayed queued through the crash
    output = workdir / "output"
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # the killed run left no partial file


def test_redis_jobs_of_a_killed_replica_finish_on_another(
    start_server: Any, redis_url: str, tiny_models: dict[str, str]
) -> None:
    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    settings = {
        **SETTINGS,
        "MUSICGEN_REDIS_URL": redis_url,
        "MUSICGEN_REDIS_PREFIX": prefix,
        "MUSICGEN_VISIBILITY_TIMEOUT_S": "3",
    }
    replica_a = start_server(settings=settings)
    replica_a.wait_until("ready", timeout=180)
    long_jobs, queued_job = start_running_jobs(replica_a)
    replica_a.kill()

    replica_b = start_server(settings=settings)
    replica_b.wait_until("ready", timeout=180)
    done = finish(replica_b, *long_jobs, queued_job)
    assert [view.status for view in done] == ["succeeded"] * (RUNNING + 1)

    store = redis.Redis.from_url(redis_url)
    try:
        for long_job in long_jobs:
            job = store.hgetall(f"{prefix}:job:{long_job}")
            assert (job[b"attempts"], job[b"completions"]) == (b"2", b"1")
            assert store.exists(f"{prefix}:audio:{long_job}")
        queued = store.hgetall(f"{prefix}:job:{queued_job}")
        assert (queued[b"attempts"], queued[b"completions"]) == (b"1", b"1")
        assert store.xlen(f"{prefix}:queue") == 0  # every entry acknowledged and removed
    finally:
        keys = list(store.scan_iter(match=f"{prefix}:*"))
        if keys:
            store.delete(*keys)


def test_replicas_share_results_through_redis(start_server: Any, redis_url: str, tiny_models: dict[str, str]) -> None:
    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    settings = {**SETTINGS, "MUSICGEN_REDIS_URL": redis_url, "MUSICGEN_REDIS_PREFIX": prefix}
    one, two = start_server(settings=settings), start_server(settings=settings)
    one.wait_until("ready", timeout=180)
    two.wait_until("ready", timeout=180)
    with MusicGenClient(one.url) as first, MusicGenClient(two.url) as second:
        job = first.submit(prompt="shared", duration_s=1.0)
        done = second.wait(job.job_id, timeout_s=120)
        assert done.status == "succeeded"
        assert second.download(job.job_id, Path(one.log_path.parent) / "copy.wav").stat().st_size > 0
    store = redis.Redis.from_url(redis_url)
    keys = list(store.scan_iter(match=f"{prefix}:*"))
    if keys:
        store.delete(*keys)


def test_a_stopped_server_hands_its_running_jobs_back_and_exits_cleanly(
    start_server: Any, tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]
) -> None:
    """SIGTERM with three jobs decoding: they get MUSICGEN_SHUTDOWN_GRACE_S to finish, are then
    stopped between two decoding steps and queued again at the front; the process exits cleanly."""
    workdir = tmp_path_factory.mktemp("stop-sqlite")
    settings = {**SETTINGS, "MUSICGEN_SHUTDOWN_GRACE_S": "0.5"}
    first = start_server(settings=settings, workdir=workdir)
    first.wait_until("ready", timeout=180)
    long_jobs, queued_job = start_running_jobs(first)
    stopping = time.monotonic()
    first.stop()
    stop_s = time.monotonic() - stopping
    log = first.log()
    assert first.process.returncode == 0, log
    assert "terminate called" not in log and "Traceback" not in log, log
    for long_job in long_jobs:
        assert f"job {long_job} interrupted by shutdown; queued again" in log, log
    assert stop_s < 15, f"stopping took {stop_s:.1f} s:\n{log}"
    jobs = sqlite3.connect(workdir / "data" / "jobs.sqlite3")
    query = "SELECT status, attempts, completions FROM jobs WHERE job_id = ?"
    assert [jobs.execute(query, (job,)).fetchone() for job in long_jobs] == [("queued", 1, 0)] * RUNNING

    second = start_server(settings=settings, workdir=workdir)
    second.wait_until("ready", timeout=180)
    done = finish(second, *long_jobs, queued_job)
    assert [view.status for view in done] == ["succeeded"] * (RUNNING + 1)
    assert [jobs.execute(query, (job,)).fetchone() for job in long_jobs] == [("succeeded", 2, 1)] * RUNNING


def test_a_stopped_redis_replica_hands_its_jobs_to_another_at_once(
    start_server: Any, redis_url: str, tiny_models: dict[str, str]
) -> None:
    # With a 10-minute visibility timeout, the next replica can only have the job within the test's
    # few minutes because the stopped one handed it back.
    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    settings = {
        **SETTINGS,
        "MUSICGEN_REDIS_URL": redis_url,
        "MUSICGEN_REDIS_PREFIX": prefix,
        "MUSICGEN_VISIBILITY_TIMEOUT_S": "600",
        "MUSICGEN_SHUTDOWN_GRACE_S": "0.5",
    }
    store = redis.Redis.from_url(redis_url)
    try:
        stopping = start_server(settings=settings)
        stopping.wait_until("ready", timeout=180)
        long_jobs, queued_job = start_running_jobs(stopping)
        stopping.stop()
        assert stopping.process.returncode == 0, stopping.log()
        for long_job in long_jobs:
            assert f"job {long_job} interrupted by shutdown; queued again" in stopping.log()
            assert store.hget(f"{prefix}:job:{long_job}", "status") == b"queued"

        staying = start_server(settings=settings)
        staying.wait_until("ready", timeout=180)
        done = finish(staying, *long_jobs, queued_job)
        assert [view.status for view in done] == ["succeeded"] * (RUNNING + 1)
        for long_job in long_jobs:
            job = store.hgetall(f"{prefix}:job:{long_job}")
            assert (job[b"attempts"], job[b"completions"]) == (b"2", b"1")
        assert store.xlen(f"{prefix}:queue") == 0
    finally:
        keys = list(store.scan_iter(match=f"{prefix}:*"))
        if keys:
            store.delete(*keys)
