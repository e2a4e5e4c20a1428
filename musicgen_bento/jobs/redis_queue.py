"""The shared job queue: Redis, for several replicas (each with its own GPU) consuming one queue.

Built on Redis's own reliable-queue primitives:
- a stream with a consumer group carries job ids; `XREADGROUP ... BLOCK` waits for work without
  polling, and an entry stays pending until its worker acknowledges it;
- a worker keeps its entry fresh with `XCLAIM ... JUSTID` heartbeats; an entry idle longer than the
  visibility timeout belonged to a dead replica and is taken over with `XAUTOCLAIM`;
- each claim increments the job's `attempts`, and results are written by a Lua script only if the
  job is still running under that attempt (a fencing token), so a job never completes twice;
- job state, results and the audio bytes live in Redis with a TTL, so any replica answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from ..errors import Conflict, QueueFull
from .model import Claim, Job, JobOutput, JobStatus, lease_free

logger = logging.getLogger("musicgen_bento")

_GROUP = "workers"

# Finishes a job only if it is still running under the caller's attempt.
# KEYS: job hash, stream, then each take's audio key; ARGV: attempt, status, result, error,
# finished_at, ttl, entry id, then each take's audio
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[5])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
if ARGV[2] == 'succeeded' then
  redis.call('HSET', KEYS[1], 'progress', '1')
  redis.call('HINCRBY', KEYS[1], 'completions', 1)
  for take = 3, #KEYS do
    redis.call('SET', KEYS[take], ARGV[take + 5], 'EX', ARGV[6])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('XACK', KEYS[2], 'workers', ARGV[7])
redis.call('XDEL', KEYS[2], ARGV[7])
return 1
"""

# Cancels a queued job at once, or flags a running one. KEYS: job hash, queued set; ARGV: now, ttl
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1], 'error', 'canceled before it ran')
  redis.call('ZREM', KEYS[2], KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return status
"""

# Takes a delivered job: running under a new attempt, unless it already ended.
# KEYS: job hash, queued set; ARGV: now, worker
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'canceled' then return nil end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2], 'progress', '0')
redis.call('ZREM', KEYS[2], KEYS[1])
return attempt
"""


# Puts a running job back in the queue, first in line, if it still runs under the caller's attempt,
# and makes its stream entry look abandoned so the next claim (any replica's) takes it over.
# KEYS: job hash, queued set, stream; ARGV: attempt, entry id, worker, idle ms
_RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0')
redis.call('HDEL', KEYS[1], 'started_at', 'worker')
redis.call('ZADD', KEYS[2], 0, KEYS[1])
redis.call('XCLAIM', KEYS[3], 'workers', ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""


class RedisJobQueue:
    """`JobQueue` on Redis. Keys start with `prefix:`; several replicas may share them."""

    def __init__(self, url: str, prefix: str, ttl_s: float, visibility_timeout_s: float) -> None:
        # Any: redis-py's reply types depend on the protocol version and decoding, not on the call.
        self.redis: Any = redis.Redis.from_url(url, socket_timeout=30, health_check_interval=30)
        self.prefix = prefix
        self.ttl_s = max(1, round(ttl_s))
        self.visibility_ms = max(1, round(visibility_timeout_s * 1000))
        self.stream = f"{prefix}:queue"
        self.queued = f"{prefix}:queued"
        self.webhooks = f"{prefix}:webhooks"  # jobs whose webhook has deliveries to make
        self._finish = self.redis.register_script(_FINISH)
        self._cancel = self.redis.register_script(_CANCEL)
        self._start = self.redis.register_script(_START)
        self._release = self.redis.register_script(_RELEASE)
        # Every change to a job is published here (its id), for the replicas whose clients follow it.
        self.changes = f"{prefix}:changes"
        self._watchers: list[Callable[[str], None]] = []
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        try:
            self.redis.xgroup_create(self.stream, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _audio_key(self, job_id: str, take: int = 0) -> str:
        # Take 0 keeps the key a job's audio always had.
        return f"{self.prefix}:audio:{job_id}" if take == 0 else f"{self.prefix}:audio:{job_id}:{take}"

    def submit(self, job: Job, idempotency_key: str | None, fingerprint: str, max_queued: int) -> tuple[Job, bool]:
        if idempotency_key is not None:
            key = f"{self.prefix}:idem:{idempotency_key}"
            marker = f"{job.job_id}|{fingerprint}"
            if not self.redis.set(key, marker, nx=True, ex=self.ttl_s):
                existing_id, _, existing_fingerprint = (self.redis.get(key) or b"|").decode().partition("|")
                if existing_fingerprint != fingerprint:
                    raise Conflict(
                        "this key was already used for a different request; use a new key", field="idempotency_key"
                    )
                existing = self.get(existing_id)
                if existing is not None:
                    return existing, False
                self.redis.set(key, marker, ex=self.ttl_s)
        if self.redis.zcard(self.queued) >= max_queued:
            if idempotency_key is not None:
                self.redis.delete(f"{self.prefix}:idem:{idempotency_key}")
            raise QueueFull(f"the queue holds its maximum of {max_queued} jobs; retry later")
        job_key = self._job_key(job.job_id)
        seq = self.redis.incr(f"{self.prefix}:seq")
        with self.redis.pipeline() as pipe:
            pipe.hset(job_key, mapping=_fields_of(job))
            pipe.zadd(self.queued, {job_key: seq})
            pipe.xadd(self.stream, {"job_id": job.job_id})
            if job.webhook is not None:
                pipe.sadd(self.webhooks, job.job_id)
            pipe.execute()
        stored = self.get(job.job_id)
        assert stored is not None
        return stored, True

    def add_finished(self, job: Job, audio_from: str) -> Job:
        job_key = self._job_key(job.job_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(job_key, mapping=_fields_of(job))
            pipe.expire(job_key, self.ttl_s)
            for take in range(len(job.result.audio_paths) if job.result else 1):
                pipe.copy(self._audio_key(audio_from, take), self._audio_key(job.job_id, take))
                pipe.expire(self._audio_key(job.job_id, take), self.ttl_s)
            if job.webhook is not None:
                pipe.sadd(self.webhooks, job.job_id)
            pipe.execute()
        stored = self.get(job.job_id)
        assert stored is not None
        return stored

    def cached(self, cache_key: str) -> Job | None:
        job_id = self.redis.get(f"{self.prefix}:cache:{cache_key}")
        if job_id is None:
            return None
        job = self.get(job_id.decode())
        if job is None or job.status is not JobStatus.SUCCEEDED or not self.redis.exists(self._audio_key(job.job_id)):
            return None
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(self._job_key(job_id))
        if not raw:
            return None
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        position = None
        if fields["status"] == JobStatus.QUEUED.value:
            position = self.redis.zrank(self.queued, self._job_key(job_id))
        return _job_of(fields, position)

    def claim(self, worker_id: str, wait_s: float) -> Claim | None:
        # First an entry abandoned by a dead replica, then new work, waiting without polling.
        _, abandoned, *_ = self.redis.xautoclaim(
            self.stream, _GROUP, worker_id, min_idle_time=self.visibility_ms, start_id="0-0", count=1
        )
        entries = abandoned
        if not entries:
            delivered = self.redis.xreadgroup(
                _GROUP, worker_id, {self.stream: ">"}, count=1, block=max(1, round(wait_s * 1000))
            )
            entries = delivered[0][1] if delivered else []
        for entry_id, payload in entries:
            if not payload:  # the entry was deleted after it was delivered
                self.redis.xack(self.stream, _GROUP, entry_id)
                continue
            job_id = payload[b"job_id"].decode()
            attempt = self._start(keys=[self._job_key(job_id), self.queued], args=[time.time(), worker_id])
            if attempt is None:  # canceled, expired or finished by its previous holder
                self.redis.xack(self.stream, _GROUP, entry_id)
                self.redis.xdel(self.stream, entry_id)
                continue
            job = self.get(job_id)
            if job is not None:
                self._announce(job_id)
                return Claim(job, attempt=int(attempt), worker_id=worker_id, entry_id=entry_id.decode())
        return None

    def heartbeat(self, claim: Claim) -> bool:
        if self.redis.hget(self._job_key(claim.job.job_id), "attempts") != str(claim.attempt).encode():
            return False
        # Re-claiming our own pending entry resets its idle time: the visibility timeout restarts.
        self.redis.xclaim(
            self.stream, _GROUP, claim.worker_id, min_idle_time=0, message_ids=[claim.entry_id], justid=True
        )
        return True

    def report_progress(self, claim: Claim, progress: float) -> None:
        self.redis.hset(self._job_key(claim.job.job_id), "progress", f"{progress:.4f}")
        self._announce(claim.job.job_id)

    def _end(
        self, claim: Claim, status: JobStatus, output: JobOutput | None, error: str, audio: Sequence[bytes] = ()
    ) -> bool:
        job_id = claim.job.job_id
        audio_keys = [self._audio_key(job_id, take) for take in range(len(audio))]
        done = self._finish(
            keys=[self._job_key(job_id), self.stream, *audio_keys],
            args=[
                claim.attempt,
                status.value,
                json.dumps(output.to_json()) if output else "",
                error,
                time.time(),
                self.ttl_s,
                claim.entry_id,
                *audio,
            ],
        )
        if done and status is JobStatus.SUCCEEDED and claim.job.cache_key:
            self.redis.set(f"{self.prefix}:cache:{claim.job.cache_key}", job_id, ex=self.ttl_s)
        if done:
            self._announce(job_id)
        return bool(done)

    def complete(self, claim: Claim, output: JobOutput, audio_paths: Sequence[Path]) -> bool:
        return self._end(claim, JobStatus.SUCCEEDED, output, "", [path.read_bytes() for path in audio_paths])

    def fail(self, claim: Claim, error: str) -> None:
        self._end(claim, JobStatus.FAILED, None, error)

    def mark_canceled(self, claim: Claim) -> None:
        self._end(claim, JobStatus.CANCELED, None, "canceled while running")

    def release(self, claim: Claim) -> bool:
        released = self._release(
            keys=[self._job_key(claim.job.job_id), self.queued, self.stream],
            args=[claim.attempt, claim.entry_id, claim.worker_id, self.visibility_ms],
        )
        if released:
            self._announce(claim.job.job_id)
        return bool(released)

    def cancel(self, job_id: str) -> Job | None:
        status = self._cancel(keys=[self._job_key(job_id), self.queued], args=[time.time(), self.ttl_s])
        if status is None:
            return None
        self._announce(job_id)
        return self.get(job_id)

    def queued_count(self) -> int:
        return int(self.redis.zcard(self.queued))

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._job_key(job_id), "cancel") == b"1"

    def audio(self, job_id: str, take: int = 0) -> bytes | None:
        data = self.redis.get(self._audio_key(job_id, take))
        return bytes(data) if data is not None else None

    def sweep(self) -> None:
        """Nothing to do: Redis expires finished jobs, results and audio by itself."""

    def watch(self, changed: Callable[[str], None]) -> None:
        self._watchers.append(changed)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="musicgen-job-changes", daemon=True)
            self._listener.start()

    def _announce(self, job_id: str) -> None:
        try:
            self.redis.publish(self.changes, job_id)
        except redis.RedisError as error:  # followers re-read on their own every few seconds
            logger.warning("could not publish a change of job %s: %s", job_id, error)

    def _listen(self) -> None:
        """Hands each published change to the watchers, reconnecting after a lost connection."""
        while not self._closed.is_set():
            try:
                subscription = self.redis.pubsub(ignore_subscribe_messages=True)
                subscription.subscribe(self.changes)
                try:
                    while not self._closed.is_set():
                        message = subscription.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            job_id = message["data"].decode()
                            for changed in list(self._watchers):
                                changed(job_id)
                finally:
                    subscription.close()
            except Exception as error:  # redis-py raises more than RedisError when its socket goes away
                if self._closed.is_set():
                    return  # closing the client ended the read: nothing is lost
                logger.warning("job change subscription lost (%s); reconnecting", error)
                self._closed.wait(1.0)

    def webhook_jobs(self) -> list[str]:
        return [member.decode() for member in self.redis.smembers(self.webhooks)]

    def lease_webhook(self, job_id: str, holder: str, lease_s: float) -> Job | None:
        def lease(state: dict[str, Any]) -> dict[str, Any] | None:
            if not lease_free(state):
                return None
            return {**state, "lease": {"holder": holder, "until": time.time() + lease_s}}

        if self._change_webhook(job_id, lease) is None:
            return None
        return self.get(job_id)

    def save_webhook(self, job_id: str, holder: str, state: dict[str, Any], still_open: bool) -> bool:
        def save(current: dict[str, Any]) -> dict[str, Any] | None:
            if (current.get("lease") or {}).get("holder") != holder:
                return None
            return {key: value for key, value in state.items() if key != "lease"}

        if self._change_webhook(job_id, save) is None:
            return False
        if not still_open:
            self.redis.srem(self.webhooks, job_id)
        return True

    def _change_webhook(
        self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Applies `change` to the job's webhook state as one transaction (retried when another
        replica changed it meanwhile); the new state, or None when `change` declined or the job is gone."""
        job_key = self._job_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(job_key)
                    raw = pipe.hget(job_key, "webhook")
                    if raw is None:
                        pipe.unwatch()
                        self.redis.srem(self.webhooks, job_id)
                        return None
                    changed = change(json.loads(raw))
                    if changed is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(job_key, "webhook", json.dumps(changed))
                    pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)  # it sees the flag within a second
        self.redis.close()


def _fields_of(job: Job) -> dict[str, str]:
    fields = {
        "job_id": job.job_id,
        "status": job.status.value,
        "request": json.dumps(job.request),
        "created_at": repr(job.created_at),
        "progress": repr(job.progress),
        "attempts": str(job.attempts),
        "completions": str(job.completions),
    }
    optional = {
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "cache_key": job.cache_key,
        "result": json.dumps(job.result.to_json()) if job.result is not None else None,
        "error": job.error,
        "owner": job.owner,
        "webhook": json.dumps(job.webhook) if job.webhook is not None else None,
    }
    fields.update({key: str(value) for key, value in optional.items() if value is not None})
    return fields


def _job_of(fields: dict[str, str], position: int | None) -> Job:
    def number(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return Job(
        job_id=fields["job_id"],
        status=JobStatus(fields["status"]),
        request=json.loads(fields["request"]),
        created_at=float(fields["created_at"]),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        progress=float(fields.get("progress", 0)),
        result=JobOutput.from_json(json.loads(fields["result"])) if "result" in fields else None,
        error=fields.get("error"),
        queue_position=position,
        attempts=int(fields.get("attempts", 0)),
        cache_key=fields.get("cache_key"),
        completions=int(fields.get("completions", 0)),
        owner=fields.get("owner"),
        webhook=json.loads(fields["webhook"]) if "webhook" in fields else None,
    )
