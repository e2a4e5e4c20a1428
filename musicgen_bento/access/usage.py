"""What each API key is using, against its limits: generations running at once, jobs queued, and
seconds of audio asked for in the last hour. Past a limit a request is refused with 429 and
`Retry-After` (`LimitReached`), before any work.

With `MUSICGEN_REDIS_URL` the ledger lives in Redis, so every replica enforces one budget per key;
without it, in this process. A running generation holds a lease that its replica renews while it
runs, so a replica that dies frees its keys' slots within a lease's time; a queued job is counted
until it leaves the queue, and one left behind by a crash is found and dropped when the count
matters.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import LimitReached
from ..settings import Settings
from .keys import ApiKey

HOUR_S = 3600.0
LEASE_S = 60.0  # a running generation's lease; renewed every quarter of it
_RUNNING_RETRY_S = 5
_QUEUED_RETRY_S = 30


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits, its own or the server's defaults; 0 is no limit."""

    max_running: int
    max_queued: int
    audio_s_per_hour: float

    @classmethod
    def of(cls, key: ApiKey, settings: Settings) -> KeyLimits:
        def own_or(value: float | None, default: float) -> float:
            return default if value is None else value

        return cls(
            int(own_or(key.max_running, settings.key_max_running)),
            int(own_or(key.max_queued, settings.key_max_queued)),
            float(own_or(key.audio_s_per_hour, settings.key_audio_s_per_hour)),
        )


class UsageLedger(Protocol):
    """Counts per key; every method that admits something refuses with `LimitReached` past a limit."""

    def start(self, key: str, limit: int) -> str:
        """Admits a generation; its lease, which `finish` returns."""

    def finish(self, key: str, lease: str) -> None: ...

    def enqueue(self, key: str, job_id: str, limit: int, still_queued: Callable[[str], bool]) -> None:
        """Admits a queued job; `still_queued` tells a job that left the queue unseen (a crash)."""

    def dequeue(self, key: str, job_id: str) -> None: ...

    def charge(self, key: str, seconds: float, per_hour: float) -> str:
        """Admits `seconds` of audio asked for now; the charge's receipt, for `refund`."""

    def refund(self, key: str, receipt: str) -> None:
        """Takes back a charge whose request failed."""


def _at_limit(key: str, count: int, what: str, limit: str, setting: str, retry_after_s: int) -> LimitReached:
    return LimitReached(
        f"API key {key!r} has {count} {what}, its limit ({limit}; {setting} by default): retry when one ends",
        retry_after_s=retry_after_s,
        field=limit.replace("-", "_"),
    )


def _too_many_running(key: str, limit: int) -> LimitReached:
    return _at_limit(key, limit, "generation(s) running", "max-running", "MUSICGEN_KEY_MAX_RUNNING", _RUNNING_RETRY_S)


def _too_many_queued(key: str, limit: int) -> LimitReached:
    return _at_limit(key, limit, "job(s) queued", "max-queued", "MUSICGEN_KEY_MAX_QUEUED", _QUEUED_RETRY_S)


def _too_much_audio(key: str, seconds: float, used: float, per_hour: float, wait_s: float) -> LimitReached:
    return LimitReached(
        f"API key {key!r} asked for {used:g} s of audio in the last hour and this request asks for {seconds:g} s "
        f"more; its limit is {per_hour:g} s an hour (audio-s-per-hour; MUSICGEN_KEY_AUDIO_S_PER_HOUR by default)",
        retry_after_s=max(1, math.ceil(wait_s)),
        field="audio_s_per_hour",
    )


@contextmanager
def running(ledger: UsageLedger, key: str | None, limit: int) -> Iterator[None]:
    """Holds one of `key`'s running generations for the block (nothing without a key)."""
    if key is None:
        yield
        return
    lease = ledger.start(key, limit)
    try:
        yield
    finally:
        ledger.finish(key, lease)


class LocalLedger:
    """The ledger of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, set[str]] = {}
        self._queued: dict[str, set[str]] = {}
        self._audio: dict[str, deque[tuple[float, float, str]]] = {}

    def start(self, key: str, limit: int) -> str:
        lease = uuid.uuid4().hex
        with self._lock:
            leases = self._running.setdefault(key, set())
            if limit and len(leases) >= limit:
                raise _too_many_running(key, limit)
            leases.add(lease)
        return lease

    def finish(self, key: str, lease: str) -> None:
        with self._lock:
            self._running.get(key, set()).discard(lease)

    def enqueue(self, key: str, job_id: str, limit: int, still_queued: Callable[[str], bool]) -> None:
        with self._lock:
            jobs = self._queued.setdefault(key, set())
            if limit and len(jobs) >= limit:
                jobs.intersection_update({job for job in jobs if still_queued(job)})
                if len(jobs) >= limit:
                    raise _too_many_queued(key, limit)
            jobs.add(job_id)

    def dequeue(self, key: str, job_id: str) -> None:
        with self._lock:
            self._queued.get(key, set()).discard(job_id)

    def charge(self, key: str, seconds: float, per_hour: float) -> str:
        now, receipt = time.time(), uuid.uuid4().hex
        with self._lock:
            charges = self._audio.setdefault(key, deque())
            while charges and charges[0][0] <= now - HOUR_S:
                charges.popleft()
            used = sum(amount for _, amount, _ in charges)
            if per_hour and used + seconds > per_hour:
                raise _too_much_audio(key, seconds, used, per_hour, _wait_for(charges, used + seconds - per_hour, now))
            charges.append((now, seconds, receipt))
        return receipt

    def refund(self, key: str, receipt: str) -> None:
        with self._lock:
            charges = self._audio.get(key, deque())
            kept = [charge for charge in charges if charge[2] != receipt]
            charges.clear()
            charges.extend(kept)


def _wait_for(charges: Any, excess: float, now: float) -> float:
    """Seconds until enough of the oldest charges (time, seconds, ...) leave the hour to free `excess`."""
    freed = 0.0
    for at, amount, *_ in charges:
        freed += amount
        if freed >= excess:
            return at + HOUR_S - now
    return HOUR_S


# Admits a lease when fewer than ARGV[3] unexpired ones are held. KEYS[1]: the key's running set.
_START = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
# Admits a charge when the hour's charges and it stay within ARGV[4]; answers the hour's total.
# KEYS[1]: the key's charges, scored by time, each member "<id>:<seconds>".
_CHARGE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local used = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + tonumber(string.match(member, ':(.*)$'))
end
if tonumber(ARGV[4]) > 0 and used + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return tostring(used) end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 'ok'
"""


class RedisLedger:
    """The ledger shared by every replica through Redis, under the service's key prefix."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self._start = client.register_script(_START)
        self._charge = client.register_script(_CHARGE)
        self._held: dict[tuple[str, str], float] = {}
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:usage:{kind}:{key}"

    def start(self, key: str, limit: int) -> str:
        lease, now = uuid.uuid4().hex, time.time()
        if not self._start(keys=[self._key("running", key)], args=[now, now + LEASE_S, limit, lease, int(HOUR_S)]):
            raise _too_many_running(key, limit)
        with self._held_lock:
            self._held[(key, lease)] = now
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="musicgen-usage-leases", daemon=True)
                self._renewer.start()
        return lease

    def finish(self, key: str, lease: str) -> None:
        with self._held_lock:
            self._held.pop((key, lease), None)
        self.redis.zrem(self._key("running", key), lease)

    def _renew(self) -> None:
        while True:
            time.sleep(LEASE_S / 4)
            with self._held_lock:
                held = list(self._held)
            for key, lease in held:
                try:
                    self.redis.zadd(self._key("running", key), {lease: time.time() + LEASE_S}, xx=True)
                except Exception:  # Redis briefly away: the next round renews
                    break

    def enqueue(self, key: str, job_id: str, limit: int, still_queued: Callable[[str], bool]) -> None:
        queued = self._key("queued", key)
        if limit and self.redis.zcard(queued) >= limit:
            for member in self.redis.zrange(queued, 0, -1):
                job = member.decode() if isinstance(member, bytes) else str(member)
                if not still_queued(job):
                    self.redis.zrem(queued, job)
            if self.redis.zcard(queued) >= limit:
                raise _too_many_queued(key, limit)
        self.redis.zadd(queued, {job_id: time.time()})

    def dequeue(self, key: str, job_id: str) -> None:
        self.redis.zrem(self._key("queued", key), job_id)

    def charge(self, key: str, seconds: float, per_hour: float) -> str:
        now = time.time()
        member = f"{uuid.uuid4().hex}:{seconds!r}"
        answer = self._charge(
            keys=[self._key("audio", key)], args=[now - HOUR_S, now, seconds, per_hour, member, int(HOUR_S)]
        )
        answer = answer.decode() if isinstance(answer, bytes) else str(answer)
        if answer != "ok":
            used = float(answer)
            charges = [
                (score, float(str(m.decode() if isinstance(m, bytes) else m).rsplit(":", 1)[1]))
                for m, score in self.redis.zrange(self._key("audio", key), 0, -1, withscores=True)
            ]
            raise _too_much_audio(key, seconds, used, per_hour, _wait_for(charges, used + seconds - per_hour, now))
        return member

    def refund(self, key: str, receipt: str) -> None:
        self.redis.zrem(self._key("audio", key), receipt)


def open_ledger(settings: Settings) -> UsageLedger:
    """Redis's shared ledger with `MUSICGEN_REDIS_URL`, this process's otherwise."""
    if not settings.redis_url:
        return LocalLedger()
    import redis

    return RedisLedger(redis.Redis.from_url(settings.redis_url), settings.redis_prefix)


@dataclass(frozen=True)
class Quota:
    """The key a request came with, and its limits."""

    key: str
    limits: KeyLimits


class Quotas:
    """The ledger as the routes and the job worker use it: a generation's slot and audio, a job's
    place in the queue, a claimed job's slot."""

    def __init__(self, ledger: UsageLedger, settings: Settings) -> None:
        self.ledger = ledger
        self.settings = settings

    def of(self, key: ApiKey | None) -> Quota | None:
        """The quota of a request's key; None without keys."""
        return None if key is None else Quota(key.name, KeyLimits.of(key, self.settings))

    def begin_generation(self, quota: Quota | None, audio_s: float) -> Callable[[bool], None]:
        """Admits a generation of `audio_s` seconds of audio (takes counted each) for the key, or
        refuses it (`LimitReached`); returns what ends it, called once it is over with whether it
        made its audio (a failed one is not charged). Calls after the first do nothing."""
        if quota is None:
            return lambda succeeded: None
        lease = self.ledger.start(quota.key, quota.limits.max_running)
        try:
            receipt = self.ledger.charge(quota.key, audio_s, quota.limits.audio_s_per_hour)
        except BaseException:
            self.ledger.finish(quota.key, lease)
            raise
        ended = threading.Event()

        def end(succeeded: bool) -> None:
            if not ended.is_set():
                ended.set()
                self.ledger.finish(quota.key, lease)
                if not succeeded:
                    self.ledger.refund(quota.key, receipt)

        return end

    def queue_job(
        self, quota: Quota | None, job_id: str, audio_s: float, still_queued: Callable[[str], bool]
    ) -> Callable[[], None]:
        """Admits a job into the queue for the key (its audio charged now), or refuses it; returns
        what takes the admission back when the job is not queued after all."""
        if quota is None:
            return lambda: None
        self.ledger.enqueue(quota.key, job_id, quota.limits.max_queued, still_queued)
        try:
            receipt = self.ledger.charge(quota.key, audio_s, quota.limits.audio_s_per_hour)
        except BaseException:
            self.ledger.dequeue(quota.key, job_id)
            raise

        def undo() -> None:
            self.ledger.dequeue(quota.key, job_id)
            self.ledger.refund(quota.key, receipt)

        return undo

    def job_left_queue(self, owner: str | None, job_id: str) -> None:
        if owner is not None:
            self.ledger.dequeue(owner, job_id)

    @contextmanager
    def running_job(self, owner: str | None, job_id: str) -> Iterator[None]:
        """A claimed job counts among its key's running generations while it runs (it was admitted
        when it was queued, so it is never refused here)."""
        self.job_left_queue(owner, job_id)
        with running(self.ledger, owner, 0):
            yield
