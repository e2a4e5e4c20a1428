"""`GET /jobs/{job_id}/events` on the real service, with each queue backend: a job's status,
progress and result as Server-Sent Events, in order; reconnects with Last-Event-ID; cancel; an
unknown job is a 404 before any event; and, with Redis, events from a replica that does not run
the job (they travel by pub/sub)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from musicgen_bento.api.client import JobEventMessage, MusicGenClient, MusicGenClientError
from musicgen_bento.jobs.events import KEEP_ALIVE_S, PROGRESS_PER_S

from .conftest import TINY_TEXT, Server

LONG_S = 30.0  # long enough to cancel while it runs


def settings(**extra: str) -> dict[str, str]:
    # One slot: a second job queues behind a running one, so its whole life can be followed.
    return {"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_BATCH_SLOTS": "1", "MUSICGEN_MAX_JOB_DURATION_S": "40", **extra}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def server(request: pytest.FixtureRequest, start_server: Any, tiny_models: dict[str, str]) -> Server:
    extra = {}
    if request.param == "redis":
        extra = {
            "MUSICGEN_REDIS_URL": request.getfixturevalue("redis_url"),
            "MUSICGEN_REDIS_PREFIX": f"musicgen-test-{uuid.uuid4().hex[:10]}",
        }
    started: Server = start_server(settings=settings(**extra))
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture
def client(server: Server) -> Iterator[MusicGenClient]:
    with MusicGenClient(server.url, timeout_s=120) as typed:
        yield typed


def submit(client: MusicGenClient, duration_s: float, seed: int) -> str:
    return client.submit(prompt="organ", duration_s=duration_s, seed=seed).job_id


def follow(
    client: MusicGenClient, job_id: str, last_event_id: str | None = None
) -> list[tuple[float, JobEventMessage]]:
    """Every event until the stream ends, with when it came."""
    return [(time.monotonic(), event) for event in client.events(job_id, last_event_id)]


def test_a_queued_job_is_followed_from_queued_to_its_result(client: MusicGenClient) -> None:
    ahead = submit(client, 3.0, seed=1)  # holds the only slot
    job_id = submit(client, 3.0, seed=2)
    events = [event for _, event in follow(client, job_id)]
    statuses = [event.data["status"] for event in events if event.event == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert events[-1].event == "result"
    assert events[-1].data["result"]["seed"] == 2
    assert events[-1].data == client.status(job_id).model_dump(mode="json")
    progress = [event.data["progress"] for event in events if event.event == "progress"]
    assert progress and progress == sorted(progress)
    assert events[-2].data["progress"] == 1.0  # the final status completes the bar
    ids = [event.id for event in events]
    assert len(set(ids)) == len(ids)
    assert client.wait(ahead).status == "succeeded"


def test_wait_follows_the_events_instead_of_polling(server: Server, client: MusicGenClient) -> None:
    ahead = submit(client, 2.0, seed=5)  # holds the only slot: the waited job is queued first
    job_id = submit(client, 2.0, seed=6)
    view = client.wait(job_id, timeout_s=120, poll_s=0.05)
    assert view.status == "succeeded" and view.result is not None and view.result.seed == 6
    assert view == client.status(job_id)
    # Exactly one status read (the one just above): waiting followed the stream, polled nothing.
    # The access log has each request once it has been answered: give the lines a moment to land.
    status_line, events_line = f"path=/jobs/{job_id},", f"path=/jobs/{job_id}/events,"
    deadline = time.monotonic() + 10
    log = server.log_path.read_text(errors="replace")
    while (status_line not in log or events_line not in log) and time.monotonic() < deadline:
        time.sleep(0.1)
        log = server.log_path.read_text(errors="replace")
    assert log.count(status_line) == 1, log[-2000:]
    assert log.count(events_line) == 1, log[-2000:]
    assert client.wait(ahead, timeout_s=120).status == "succeeded"


class EventStreamCutter:
    """A TCP proxy in front of the server that passes every request through but cuts each events
    stream right after its first event, as a proxy with a short idle timeout would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        head = downstream.recv(65536)  # a GET's request line and headers
        upstream.sendall(head)
        if b"/events" not in head.split(b"\r\n", 1)[0]:
            threading.Thread(target=_pipe, args=(upstream, downstream), daemon=True).start()
            _pipe(downstream, upstream)
            return
        answer = b""
        while (body := answer.find(b"\r\n\r\n")) < 0 or answer.find(b"\n\n", body + 4) < 0:
            data = upstream.recv(65536)
            if not data:
                break
            answer += data
        first_event_end = answer.find(b"\n\n", answer.find(b"\r\n\r\n") + 4) + 2
        downstream.sendall(answer[:first_event_end])
        self.cuts += 1
        for end in (downstream, upstream):
            end.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            end.close()


def test_wait_polls_once_the_events_stream_is_cut(server: Server, client: MusicGenClient) -> None:
    ahead = submit(client, 2.0, seed=8)  # holds the only slot: the waited job is still queued when cut
    job_id = submit(client, 1.0, seed=9)
    proxy = EventStreamCutter(server.port)
    try:
        with MusicGenClient(proxy.url, timeout_s=60) as behind_proxy:
            view = behind_proxy.wait(job_id, timeout_s=120, poll_s=0.1)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert view.status == "succeeded" and view.result is not None and view.result.seed == 9
    # It polled: status reads came after the cut stream (the access log has each once answered).
    status_line = f"path=/jobs/{job_id},"
    deadline = time.monotonic() + 10
    while server.log_path.read_text(errors="replace").count(status_line) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_path.read_text(errors="replace").count(status_line) >= 1
    assert client.wait(ahead, timeout_s=120).status == "succeeded"


def test_wait_gives_up_at_its_deadline(client: MusicGenClient) -> None:
    job_id = submit(client, LONG_S, seed=7)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job_id} is still (queued|running) after 1 s"):
        client.wait(job_id, timeout_s=1.0)
    # The deadline is checked as the stream speaks: progress several times a second while the job
    # runs, a keep-alive at least every KEEP_ALIVE_S while it is queued.
    assert time.monotonic() - started < KEEP_ALIVE_S + 5
    client.cancel(job_id)


def test_progress_events_come_at_most_a_few_a_second(client: MusicGenClient) -> None:
    timed = follow(client, submit(client, 8.0, seed=3))
    arrivals = [when for when, event in timed if event.event == "progress"]
    assert len(arrivals) >= 2
    span = arrivals[-1] - arrivals[0]
    # The limit spaces them at least 1/PROGRESS_PER_S apart, at the server; allow for delivery jitter.
    assert len(arrivals) - 1 <= span * PROGRESS_PER_S + 2


def test_a_reconnect_with_last_event_id_gets_only_later_events(client: MusicGenClient) -> None:
    job_id = submit(client, 1.0, seed=4)
    events = [event for _, event in follow(client, job_id)]
    running = next(event for event in events if event.event == "status" and event.data["status"] == "running")
    resumed = [event for _, event in follow(client, job_id, last_event_id=running.id)]
    assert [event.event for event in resumed] == ["status", "result"]  # the job is done: its last two
    assert resumed[0].data["status"] == "succeeded"
    assert [event for _, event in follow(client, job_id, last_event_id=events[-1].id)] == []
    # A browser's EventSource sends the header; the query parameter serves clients that can't.
    raw = httpx.get(f"{client._http.base_url}/jobs/{job_id}/events?last_event_id={events[-1].id}", timeout=30)
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert "event:" not in raw.text


def test_a_canceled_job_ends_its_events_with_canceled(client: MusicGenClient) -> None:
    job_id = submit(client, LONG_S, seed=5)
    received: list[JobEventMessage] = []

    def listen() -> None:
        for event in client.events(job_id):
            received.append(event)

    listener = threading.Thread(target=listen)
    listener.start()
    deadline = time.monotonic() + 60
    while not any(event.event == "progress" for event in received):
        assert time.monotonic() < deadline and listener.is_alive(), received
        time.sleep(0.05)
    client.cancel(job_id)
    listener.join(60)
    assert not listener.is_alive()
    assert received[-2].event == "status" and received[-2].data["status"] == "canceled"
    assert received[-1].event == "result" and received[-1].data["error"]


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job"], ids=["unknown", "malformed"])
def test_an_unknown_job_is_a_404_before_any_event(server: Server, client: MusicGenClient, job_id: str) -> None:
    response = httpx.get(f"{server.url}/jobs/{job_id}/events", timeout=30)
    assert response.status_code == 404
    assert response.json()["field"] == "job_id"
    with pytest.raises(MusicGenClientError) as refused:
        list(client.events(job_id))
    assert refused.value.status_code == 404


def test_events_reach_a_replica_that_does_not_run_the_job(
    start_server: Any, redis_url: str, tiny_models: dict[str, str]
) -> None:
    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    shared = {"MUSICGEN_REDIS_URL": redis_url, "MUSICGEN_REDIS_PREFIX": prefix}
    runner: Server = start_server(settings=settings(**shared))
    # The follower's model is not in its store, so its job worker never claims a job (it waits for
    # a ready model): every event it sends came through Redis from the runner.
    follower: Server = start_server(settings={**settings(**shared), "MUSICGEN_MODEL": "musicgen-not-in-this-store"})
    runner.wait_until("ready", timeout=180)
    follower.wait_until("error", timeout=180)
    with MusicGenClient(runner.url) as on_runner, MusicGenClient(follower.url) as on_follower:
        job_id = submit(on_runner, 4.0, seed=6)
        events = [event for _, event in follow(on_follower, job_id)]
    assert [event.data["status"] for event in events if event.event == "status"][-1] == "succeeded"
    assert sum(event.event == "progress" for event in events) >= 2  # it ran while followed
    assert events[-1].event == "result"
