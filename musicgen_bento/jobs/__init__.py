"""Asynchronous generation jobs: the job model and queue protocol (`model`), two backends
(`sqlite_queue`, `redis_queue`), the API's logic (`service`) and the worker that runs them
(`worker`). The factory that picks a backend lives here, above the backends, which import only
the model."""

from __future__ import annotations

from ..settings import Settings
from .model import JobQueue


def open_queue(settings: Settings) -> JobQueue:
    """The queue the settings choose: Redis when a URL is set, else the embedded SQLite one."""
    if settings.redis_url:
        from .redis_queue import RedisJobQueue

        return RedisJobQueue(
            settings.redis_url, settings.redis_prefix, settings.job_ttl_s, settings.visibility_timeout_s
        )
    from .sqlite_queue import SqliteJobQueue

    return SqliteJobQueue(settings.data_dir / "jobs.sqlite3", settings.job_ttl_s)
