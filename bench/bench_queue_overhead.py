"""Job queue overhead, embedded (SQLite) and Redis, in the same run.

For each backend a real queue and a real job worker run in this process with the mock generator
(so generation itself costs next to nothing); jobs are submitted one after another and two
latencies are measured per job:
- submit -> start: from the submit call until the worker has claimed the job (its `started_at`);
- finish -> visible: from the worker recording the result (`finished_at`) until another reader
  sees the job `succeeded` (polled every millisecond).
The baseline is the embedded queue; Redis's figures are printed with their ratio to it.

    .venv/bin/python bench/bench_queue_overhead.py [--jobs 30] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from _support import use_private_store


def measure(backend: str, redis_url: str, jobs: int) -> tuple[list[float], list[float]]:
    from musicgen_bento.generation.host import ModelHost
    from musicgen_bento.jobs import open_queue
    from musicgen_bento.jobs.service import JobService
    from musicgen_bento.jobs.worker import JobWorker
    from musicgen_bento.schemas import GenerateRequest
    from musicgen_bento.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix=f"musicgen-bench-{backend}-"))
    env = {"CF_MUSICGEN_MOCK": "1", "MUSICGEN_OUTPUT_DIR": str(workdir / "out"), "MUSICGEN_DATA_DIR": str(workdir)}
    if backend == "redis":
        env.update(MUSICGEN_REDIS_URL=redis_url, MUSICGEN_REDIS_PREFIX=f"musicgen-bench-{uuid.uuid4().hex[:8]}")
    settings = Settings.from_env(env)
    host = ModelHost(settings)
    host.start()
    queue = open_queue(settings)
    service, worker = JobService(queue, host, settings), JobWorker(queue, host, settings)
    worker.start()
    reader = open_queue(settings)  # another connection, as another replica or request would have
    to_start, to_visible = [], []
    try:
        for index in range(jobs):
            submitted = time.time()
            job_id = service.submit(GenerateRequest(prompt=f"bench {index}", duration_s=0.5)).job_id
            while (job := reader.get(job_id)) is None or job.status != "succeeded":
                time.sleep(0.001)
            seen = time.time()
            assert job.started_at is not None and job.finished_at is not None
            to_start.append(job.started_at - submitted)
            to_visible.append(seen - job.finished_at)
    finally:
        worker.stop(grace_s=settings.shutdown_grace_s)
        if backend == "redis":
            keys = list(queue.redis.scan_iter(match=f"{settings.redis_prefix}:*"))  # type: ignore[attr-defined]
            if keys:
                queue.redis.delete(*keys)  # type: ignore[attr-defined]
        queue.close()
        reader.close()
    return to_start, to_visible


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    use_private_store()

    results = {backend: measure(backend, args.redis_url, args.jobs) for backend in ("sqlite", "redis")}
    print(f"{args.jobs} jobs one after another per backend, mock generator, medians (p90) in ms")
    base_start = statistics.median(results["sqlite"][0])
    base_visible = statistics.median(results["sqlite"][1])
    for backend, (to_start, to_visible) in results.items():
        start_ms, visible_ms = statistics.median(to_start) * 1000, statistics.median(to_visible) * 1000
        p90_start = statistics.quantiles(to_start, n=10)[-1] * 1000
        p90_visible = statistics.quantiles(to_visible, n=10)[-1] * 1000
        print(
            f"{backend:7} submit->start {start_ms:7.2f} ({p90_start:7.2f})   "
            f"finish->visible {visible_ms:6.2f} ({p90_visible:6.2f})   "
            f"ratio to sqlite: start {start_ms / 1000 / base_start:5.2f}x, "
            f"visible {visible_ms / 1000 / base_visible:5.2f}x"
        )


if __name__ == "__main__":
    main()
