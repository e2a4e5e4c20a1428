"""The embedded job queue: one SQLite database in the service's data directory.

For one replica: jobs survive a restart (queued jobs stay queued, a job that was running when
the process died is queued again at its old place), results and audio files are kept for the
retention time. Workers wait on a condition that submissions notify, so an idle queue costs
nothing.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import Conflict, QueueFull
from .model import Claim, Job, JobOutput, JobStatus, lease_free

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cache_key TEXT,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT,
    owner TEXT,
    webhook TEXT,
    webhook_open INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS cache (cache_key TEXT PRIMARY KEY, job_id TEXT NOT NULL);
"""


class SqliteJobQueue:
    """`JobQueue` on a SQLite file. One connection, guarded by a lock; fine for one replica."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.ttl_s = ttl_s
        self._lock = threading.RLock()
        self._submitted = threading.Condition(self._lock)
        self._watchers: list[Callable[[str], None]] = []
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # Columns added since a database's creation.
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for column, declared in (
                ("owner", "TEXT"),
                ("webhook", "TEXT"),
                ("webhook_open", "INTEGER NOT NULL DEFAULT 0"),
            ):
                if column not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declared}")
            # This process is the only user of the file: a job still `running` was running when
            # the previous process died. It goes back to the queue at its old place.
            self._db.execute("UPDATE jobs SET status='queued', started_at=NULL, progress=0 WHERE status='running'")

    def submit(self, job: Job, idempotency_key: str | None, fingerprint: str, max_queued: int) -> tuple[Job, bool]:
        with self._lock:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT job_id, fingerprint FROM jobs WHERE idempotency_key=?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["fingerprint"] != fingerprint:
                        raise Conflict(
                            "this key was already used for a different request; use a new key",
                            field="idempotency_key",
                        )
                    existing = self.get(row["job_id"])
                    assert existing is not None
                    return existing, False
            queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(f"the queue holds its maximum of {max_queued} jobs; retry later")
            self._insert(job, idempotency_key, fingerprint)
            self._submitted.notify_all()
        stored = self.get(job.job_id)
        assert stored is not None
        return stored, True

    def _insert(self, job: Job, idempotency_key: str | None, fingerprint: str | None) -> None:
        self._db.execute(
            "INSERT INTO jobs (job_id, status, request, created_at, started_at, finished_at, progress, result,"
            " cache_key, idempotency_key, fingerprint, owner, webhook, webhook_open)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job.job_id,
                job.status.value,
                json.dumps(job.request),
                job.created_at,
                job.started_at,
                job.finished_at,
                job.progress,
                json.dumps(job.result.to_json()) if job.result is not None else None,
                job.cache_key,
                idempotency_key,
                fingerprint,
                job.owner,
                json.dumps(job.webhook) if job.webhook is not None else None,
                int(job.webhook is not None),
            ),
        )

    def add_finished(self, job: Job, audio_from: str) -> Job:
        # The result already names the audio file of `audio_from`; sweeping keeps a file while
        # any job still refers to it.
        with self._lock:
            self._insert(job, None, None)
        stored = self.get(job.job_id)
        assert stored is not None
        return stored

    def cached(self, cache_key: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM cache WHERE cache_key=?", (cache_key,)).fetchone()
            job = self.get(row["job_id"]) if row is not None else None
        if job is None or job.status is not JobStatus.SUCCEEDED or job.result is None:
            return None
        if not Path(job.result.audio_path).is_file():
            return None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                return None
            position = None
            if row["status"] == JobStatus.QUEUED.value:
                position = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq < ?", (row["seq"],)
                ).fetchone()[0]
        return _job_of(row, position)

    def claim(self, worker_id: str, wait_s: float) -> Claim | None:
        deadline = time.monotonic() + wait_s
        with self._lock:
            while True:
                row = self._db.execute(
                    "UPDATE jobs SET status='running', started_at=?, attempts=attempts+1, progress=0"
                    " WHERE seq = (SELECT seq FROM jobs WHERE status='queued' ORDER BY seq LIMIT 1)"
                    " RETURNING *",
                    (time.time(),),
                ).fetchone()
                if row is not None:
                    job = _job_of(row, None)
                    self._announce(job.job_id)
                    return Claim(job, attempt=job.attempts, worker_id=worker_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._submitted.wait(remaining)

    def heartbeat(self, claim: Claim) -> bool:
        return self._holds(claim)

    def _holds(self, claim: Claim) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE job_id=? AND status='running' AND attempts=?",
                (claim.job.job_id, claim.attempt),
            ).fetchone()
        return row is not None

    def report_progress(self, claim: Claim, progress: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET progress=? WHERE job_id=? AND status='running' AND attempts=?",
                (progress, claim.job.job_id, claim.attempt),
            )
        self._announce(claim.job.job_id)

    def _finish(self, claim: Claim, status: JobStatus, output: JobOutput | None, error: str | None) -> bool:
        with self._lock:
            updated = self._db.execute(
                "UPDATE jobs SET status=?, result=?, error=?, finished_at=?,"
                " progress=CASE WHEN ?='succeeded' THEN 1 ELSE progress END,"
                " completions=completions + (CASE WHEN ?='succeeded' THEN 1 ELSE 0 END)"
                " WHERE job_id=? AND status='running' AND attempts=?",
                (
                    status.value,
                    json.dumps(output.to_json()) if output is not None else None,
                    error,
                    time.time(),
                    status.value,
                    status.value,
                    claim.job.job_id,
                    claim.attempt,
                ),
            ).rowcount
            if updated and status is JobStatus.SUCCEEDED and claim.job.cache_key:
                self._db.execute(
                    "INSERT OR REPLACE INTO cache (cache_key, job_id) VALUES (?, ?)",
                    (claim.job.cache_key, claim.job.job_id),
                )
        if updated:
            self._announce(claim.job.job_id)
        return bool(updated)

    def complete(self, claim: Claim, output: JobOutput, audio_paths: Sequence[Path]) -> bool:
        # The files stay where the worker wrote them; the output names them.
        return self._finish(claim, JobStatus.SUCCEEDED, output, None)

    def fail(self, claim: Claim, error: str) -> None:
        self._finish(claim, JobStatus.FAILED, None, error)

    def mark_canceled(self, claim: Claim) -> None:
        self._finish(claim, JobStatus.CANCELED, None, "canceled while running")

    def release(self, claim: Claim) -> bool:
        # The job keeps its sequence number, so it is back at its old place: ahead of the jobs
        # submitted after it.
        with self._lock:
            released = self._db.execute(
                "UPDATE jobs SET status='queued', started_at=NULL, progress=0"
                " WHERE job_id=? AND status='running' AND attempts=?",
                (claim.job.job_id, claim.attempt),
            ).rowcount
            if released:
                self._submitted.notify_all()
        if released:
            self._announce(claim.job.job_id)
        return bool(released)

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return None
            if job.status is JobStatus.QUEUED:
                self._db.execute(
                    "UPDATE jobs SET status='canceled', finished_at=?, error='canceled before it ran'"
                    " WHERE job_id=? AND status='queued'",
                    (time.time(), job_id),
                )
            elif job.status is JobStatus.RUNNING:
                self._db.execute("UPDATE jobs SET cancel_requested=1 WHERE job_id=?", (job_id,))
        self._announce(job_id)
        return self.get(job_id)

    def queued_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()[0])

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return bool(row is not None and row["cancel_requested"])

    def audio(self, job_id: str, take: int = 0) -> bytes | None:
        job = self.get(job_id)
        if job is None or job.result is None or not 0 <= take < len(job.result.audio_paths):
            return None
        path = Path(job.result.audio_paths[take])
        return path.read_bytes() if path.is_file() else None

    def sweep(self) -> None:
        cutoff = time.time() - self.ttl_s
        with self._lock:
            expired = self._db.execute(
                "SELECT job_id, result FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
            ).fetchall()
            if not expired:
                return
            ids = [row["job_id"] for row in expired]
            marks = ",".join("?" * len(ids))
            self._db.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", ids)
            self._db.execute(f"DELETE FROM cache WHERE job_id IN ({marks})", ids)
            for row in expired:
                if row["result"]:
                    self._delete_unused(JobOutput.from_json(json.loads(row["result"])).audio_paths)

    def _delete_unused(self, paths: list[str]) -> None:
        """Deletes the files no remaining job names (a cache hit names its original's files)."""
        for path in paths:
            still_used = self._db.execute(
                "SELECT 1 FROM jobs WHERE instr(result, ?) > 0 LIMIT 1", (json.dumps(path),)
            ).fetchone()
            if still_used is None:
                Path(path).unlink(missing_ok=True)

    def watch(self, changed: Callable[[str], None]) -> None:
        with self._lock:
            self._watchers.append(changed)

    def _announce(self, job_id: str) -> None:
        for changed in list(self._watchers):
            changed(job_id)

    def webhook_jobs(self) -> list[str]:
        with self._lock:
            return [row["job_id"] for row in self._db.execute("SELECT job_id FROM jobs WHERE webhook_open=1")]

    def lease_webhook(self, job_id: str, holder: str, lease_s: float) -> Job | None:
        with self._lock:
            job = self.get(job_id)
            if job is None or job.webhook is None:
                self._db.execute("UPDATE jobs SET webhook_open=0 WHERE job_id=?", (job_id,))
                return None
            if not lease_free(job.webhook):
                return None
            state = {**job.webhook, "lease": {"holder": holder, "until": time.time() + lease_s}}
            self._db.execute("UPDATE jobs SET webhook=? WHERE job_id=?", (json.dumps(state), job_id))
            return dataclasses.replace(job, webhook=state)

    def save_webhook(self, job_id: str, holder: str, state: dict[str, Any], still_open: bool) -> bool:
        with self._lock:
            job = self.get(job_id)
            if job is None or job.webhook is None or (job.webhook.get("lease") or {}).get("holder") != holder:
                return False
            saved = {key: value for key, value in state.items() if key != "lease"}
            self._db.execute(
                "UPDATE jobs SET webhook=?, webhook_open=? WHERE job_id=?",
                (json.dumps(saved), int(still_open), job_id),
            )
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job_of(row: sqlite3.Row, position: int | None) -> Job:
    return Job(
        job_id=row["job_id"],
        status=JobStatus(row["status"]),
        request=json.loads(row["request"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=row["progress"],
        result=JobOutput.from_json(json.loads(row["result"])) if row["result"] else None,
        error=row["error"],
        queue_position=position,
        attempts=row["attempts"],
        cache_key=row["cache_key"],
        completions=row["completions"],
        owner=row["owner"],
        webhook=json.loads(row["webhook"]) if row["webhook"] else None,
    )
