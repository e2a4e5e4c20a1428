"""Signed job webhooks: a job's events reach a receiver on this machine (loopback only), signed per
Standard Webhooks, retried with the same webhook-id when a delivery fails, given up after the retry
time, never following a redirect, delivered once when two replicas share the queue, and taken over
when the replica delivering them dies. Through the server, `webhook_url` is checked before a job is
queued and the job's view shows its deliveries."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from musicgen_bento.api.webhooks import WebhookDispatcher
from musicgen_bento.jobs.model import Job, JobOutput, JobQueue, JobStatus
from musicgen_bento.jobs.webhooks import webhook_of
from musicgen_bento.schemas import GenerateRequest
from musicgen_bento.settings import Settings

from .conftest import Server

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records what it receives and answers with `statuses` in turn
    (then 204)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[str]:
        return [json.loads(body)["status"] for path, _, body in self.received if path == "/hook"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    record = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            record.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status = record.statuses.pop(0) if record.statuses else 204
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", f"http://127.0.0.1:{record.port}/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield record
    server.shutdown()


def _settings(**more: str) -> Settings:
    return Settings.from_env({"MUSICGEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "MUSICGEN_WEBHOOK_SECRET": SECRET, **more})


def _dispatcher(queue: JobQueue, settings: Settings, lease_s: float = 60.0) -> WebhookDispatcher:
    return WebhookDispatcher(
        queue, settings, lambda job: json.dumps({"job_id": job.job_id, "status": job.status.value}), lease_s
    )


def _job_with_webhook(queue: JobQueue, url: str, events: list[str] | None = None) -> Job:
    request = GenerateRequest(prompt="hooked", duration_s=1.0, webhook_url=url, webhook_events=events)  # type: ignore[arg-type]
    job = Job(
        uuid.uuid4().hex,
        JobStatus.QUEUED,
        request.model_dump(exclude_none=True),
        time.time(),
        webhook=webhook_of(request),
    )
    stored, _ = queue.submit(job, None, uuid.uuid4().hex, 100)
    return stored


def _run_the_job(queue: JobQueue) -> None:
    claim = queue.claim("worker", wait_s=2.0)
    assert claim is not None
    output = JobOutput(audio_path="/x.wav", duration_s=1.0, sample_rate=32000, channels=1, seed=1, model="m")
    assert queue.complete(claim, output, [])


def _until(condition: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_jobs_events_arrive_signed_in_order(queue: JobQueue, receiver: Receiver) -> None:
    job = _job_with_webhook(queue, receiver.url)
    dispatcher = _dispatcher(queue, _settings())
    _run_the_job(queue)
    dispatcher.run_once()
    assert receiver.events() == ["succeeded", "succeeded"]  # started, then succeeded: each body is the view then
    verifier = Webhook(SECRET)
    ids = []
    for _, headers, body in receiver.received:
        verifier.verify(body, headers)  # raises unless signed with the secret, and recent
        ids.append(headers["webhook-id"])
    assert ids == [f"msg_{job.job_id}_started", f"msg_{job.job_id}_succeeded"]
    stored = queue.get(job.job_id)
    assert stored is not None and stored.webhook is not None
    assert all(d["delivered_at"] for d in stored.webhook["deliveries"].values())
    assert job.job_id not in queue.webhook_jobs(), "nothing is left to deliver"


def test_only_the_events_asked_for_are_sent(queue: JobQueue, receiver: Receiver) -> None:
    _job_with_webhook(queue, receiver.url, ["succeeded"])
    _run_the_job(queue)
    _dispatcher(queue, _settings()).run_once()
    assert [h["webhook-id"].rsplit("_", 1)[1] for _, h, _ in receiver.received] == ["succeeded"]


def test_a_failed_delivery_is_retried_under_the_same_id(queue: JobQueue, receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    job = _job_with_webhook(queue, receiver.url, ["succeeded"])
    _run_the_job(queue)
    dispatcher = _dispatcher(queue, _settings())
    dispatcher.run_once()
    stored = queue.get(job.job_id)
    assert stored is not None and stored.webhook is not None
    delivery = stored.webhook["deliveries"]["succeeded"]
    assert (delivery["attempts"], delivery["last_status"], delivery["delivered_at"]) == (1, 500, None)
    assert 4 <= delivery["next_at"] - time.time() <= 6  # the first retry, 5 s on
    assert job.job_id in queue.webhook_jobs()
    _until(lambda: (dispatcher.run_once(), len(receiver.received))[1] >= 3, timeout_s=40)
    assert {h["webhook-id"] for _, h, _ in receiver.received} == {f"msg_{job.job_id}_succeeded"}
    assert len({body for _, _, body in receiver.received}) == 1, "every attempt sends the same bytes"


def test_a_delivery_is_given_up_after_the_retry_time(queue: JobQueue, receiver: Receiver) -> None:
    receiver.statuses = [500]
    job = _job_with_webhook(queue, receiver.url, ["succeeded"])
    _run_the_job(queue)
    _dispatcher(queue, _settings(MUSICGEN_WEBHOOK_RETRY_S="2")).run_once()
    stored = queue.get(job.job_id)
    assert stored is not None and stored.webhook is not None
    assert stored.webhook["deliveries"]["succeeded"]["gave_up_at"] is not None
    assert job.job_id not in queue.webhook_jobs()


def test_a_redirect_is_not_followed(queue: JobQueue, receiver: Receiver) -> None:
    receiver.statuses = [302]
    job = _job_with_webhook(queue, receiver.url, ["succeeded"])
    _run_the_job(queue)
    _dispatcher(queue, _settings()).run_once()
    assert [path for path, _, _ in receiver.received] == ["/hook"]
    stored = queue.get(job.job_id)
    assert stored is not None and stored.webhook is not None
    assert stored.webhook["deliveries"]["succeeded"]["last_status"] == 302


def test_a_host_no_longer_allowed_is_not_called(queue: JobQueue, receiver: Receiver) -> None:
    job = _job_with_webhook(queue, receiver.url, ["succeeded"])
    _run_the_job(queue)
    _dispatcher(queue, _settings(MUSICGEN_WEBHOOK_ALLOWED_HOSTS="127.0.0.2")).run_once()
    assert receiver.received == []
    stored = queue.get(job.job_id)
    assert stored is not None and stored.webhook is not None
    assert "no longer" in stored.webhook["deliveries"]["succeeded"]["last_error"]


@pytest.fixture
def shared_queue(redis_url: str, redis_prefix: str) -> Iterator[tuple[JobQueue, JobQueue]]:
    from musicgen_bento.jobs.redis_queue import RedisJobQueue

    replicas = (RedisJobQueue(redis_url, redis_prefix, 3600, 60), RedisJobQueue(redis_url, redis_prefix, 3600, 60))
    yield replicas
    for replica in replicas:
        replica.close()


def test_replicas_sharing_a_queue_deliver_each_event_once(
    shared_queue: tuple[JobQueue, JobQueue], receiver: Receiver
) -> None:
    first, second = shared_queue
    for _ in range(4):
        _job_with_webhook(first, receiver.url)
    for _ in range(4):
        _run_the_job(first)
    dispatchers = [_dispatcher(first, _settings()), _dispatcher(second, _settings())]
    passes = [threading.Thread(target=d.run_once) for d in dispatchers for _ in range(3)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=60)
    ids = [headers["webhook-id"] for _, headers, _ in receiver.received]
    assert len(ids) == 8 and len(set(ids)) == 8


def test_a_replica_that_dies_mid_delivery_is_taken_over(
    shared_queue: tuple[JobQueue, JobQueue], receiver: Receiver
) -> None:
    first, second = shared_queue
    job = _job_with_webhook(first, receiver.url, ["succeeded"])
    _run_the_job(first)
    # The first replica leases the webhook and dies before it delivers or saves anything.
    assert first.lease_webhook(job.job_id, "a replica that died", lease_s=1.0) is not None
    survivor = _dispatcher(second, _settings(), lease_s=30.0)
    survivor.run_once()
    assert receiver.received == [], "the lease holds while it lasts"
    time.sleep(1.2)
    survivor.run_once()
    assert [h["webhook-id"] for _, h, _ in receiver.received] == [f"msg_{job.job_id}_succeeded"]


# -- through the server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(start_server: Any) -> Server:
    started: Server = start_server(
        settings={
            "CF_MUSICGEN_MOCK": "1",
            "MUSICGEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "MUSICGEN_WEBHOOK_SECRET": SECRET,
        }
    )
    started.wait_until("ready", timeout=120)
    return started


def test_a_job_calls_its_webhook_and_shows_the_deliveries(server: Server, receiver: Receiver) -> None:
    response = httpx.post(
        f"{server.url}/generate", json={"prompt": "hooked", "duration_s": 1.0, "webhook_url": receiver.url}, timeout=30
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    _until(lambda: len(receiver.received) >= 2, timeout_s=30)
    for _, headers, body in receiver.received:
        view = Webhook(SECRET).verify(body, headers)
        assert view["job_id"] == job_id
    assert receiver.events()[-1] == "succeeded"

    def delivered() -> bool:
        view = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30).json()
        deliveries = (view.get("webhook") or {}).get("deliveries", [])
        return len(deliveries) == 2 and all(d["delivered_at"] for d in deliveries)

    _until(delivered)
    webhook = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30).json()["webhook"]
    assert [d["event"] for d in webhook["deliveries"]] == ["started", "succeeded"]
    assert webhook["deliveries"][0]["webhook_id"] == f"msg_{job_id}_started"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"webhook_url": "http://localhost:9/hook"}, "is not one this server sends webhooks to"),
        ({"webhook_url": "ftp://127.0.0.1/hook"}, "webhook_url"),
        ({"webhook_url": "http://user:pw@127.0.0.1/hook"}, "no user name or password"),
        ({"webhook_url": "http://127.0.0.1/hook", "webhook_events": ["finished"]}, "webhook_events"),
        ({"webhook_url": "http://127.0.0.1/hook", "webhook_events": []}, "webhook_events"),
    ],
    ids=["host-not-allowed", "not-http", "credentials", "unknown-event", "no-events"],
)
def test_a_webhook_the_server_will_not_call_is_a_400_before_anything_is_queued(
    server: Server, body: dict[str, Any], says: str
) -> None:
    response = httpx.post(f"{server.url}/generate", json={"prompt": "x", "duration_s": 1.0, **body}, timeout=30)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert response.json()["field"].startswith("webhook_")


def test_a_server_without_allowed_hosts_refuses_webhooks(start_server: Any) -> None:
    plain: Server = start_server(settings={"CF_MUSICGEN_MOCK": "1"})
    plain.wait_until("ready", timeout=120)
    response = httpx.post(
        f"{plain.url}/generate", json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["field"] == "webhook_url" and "sends no webhooks" in response.json()["error"]


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"MUSICGEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}, "MUSICGEN_WEBHOOK_SECRET is not"),
        ({"MUSICGEN_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "24 to 64"),
    ],
    ids=["no-secret", "short-secret"],
)
def test_webhook_settings_are_checked_without_echoing_the_secret(settings: dict[str, str], says: str) -> None:
    from musicgen_bento.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env(settings)
    assert says in str(refused.value)
    assert "c2hvcnQ" not in str(refused.value)
