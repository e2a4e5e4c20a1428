"""The jobs API over HTTP on the real service, with each queue backend: submit, follow, download,
cancel, idempotency, the cache, a full queue, bad input, and the typed and BentoML clients."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import soundfile as sf

from musicgen_bento.api.client import MusicGenClient, MusicGenClientError

from .conftest import TINY_TEXT, Server, write_tone

SAMPLE_RATE = 32000
LONG_S = 30.0  # long enough to cancel or crowd the queue while it runs


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def server(request: pytest.FixtureRequest, start_server: Any, tiny_models: dict[str, str]) -> Server:
    settings = {
        "MUSICGEN_MODEL": TINY_TEXT,
        "MUSICGEN_MAX_QUEUE": "3",
        "MUSICGEN_MAX_JOB_DURATION_S": "40",
        # One slot: a second job queues behind a running one (cancel, full queue). Jobs decoding
        # together are tested in test_batching_http.py.
        "MUSICGEN_BATCH_SLOTS": "1",
    }
    if request.param == "redis":
        settings["MUSICGEN_REDIS_URL"] = request.getfixturevalue("redis_url")
        settings["MUSICGEN_REDIS_PREFIX"] = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    started: Server = start_server(settings=settings)
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture
def client(server: Server) -> Any:
    with MusicGenClient(server.url, timeout_s=120) as typed:
        yield typed


def wait_for(client: MusicGenClient, job_id: str, status: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = client.status(job_id)
        if view.status == status:
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not {status} after {timeout_s} s: {client.status(job_id)}")


def test_submit_answers_202_at_once_and_the_job_succeeds(server: Server, client: MusicGenClient) -> None:
    response = httpx.post(f"{server.url}/generate", json={"prompt": "sea shanty", "duration_s": 2.0, "seed": 3})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] in {"queued", "running"}
    assert accepted["status_url"] == f"/jobs/{accepted['job_id']}"
    assert response.headers["location"] == accepted["status_url"]
    done = client.wait(accepted["job_id"], timeout_s=120)
    assert done.status == "succeeded", done
    assert done.progress == 1.0
    assert done.started_at is not None and done.finished_at is not None
    assert done.request["prompt"] == "sea shanty"
    result = done.result
    assert result is not None
    assert (result.duration_s, result.sample_rate, result.channels, result.seed, result.cached) == (
        2.0,
        SAMPLE_RATE,
        1,
        3,
        False,
    )
    assert result.audio_url == f"/jobs/{done.job_id}/audio"
    audio = httpx.get(f"{server.url}{result.audio_url}")
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/wav"
    assert sf.info(io.BytesIO(audio.content)).frames == 2 * SAMPLE_RATE


def test_a_job_continues_a_file_in_the_asked_format(client: MusicGenClient, tmp_path: Path) -> None:
    source = write_tone(tmp_path / "verse.wav", seconds=4.0)
    job = client.submit(continue_from=str(source), duration_s=1.5, output_format="flac", prompt_duration_s=3.0)
    done = client.wait(job.job_id, timeout_s=120)
    assert done.status == "succeeded", done
    saved = client.download(job.job_id, tmp_path / "out.flac")
    info = sf.info(str(saved))
    assert (info.format, info.frames) == ("FLAC", int(1.5 * SAMPLE_RATE))


def test_a_job_without_a_prompt_has_no_text_conditioning(client: MusicGenClient, tmp_path: Path) -> None:
    # Only continue_from: no text, so guidance changes nothing (see test_service); a space is text.
    source = write_tone(tmp_path / "verse.wav", seconds=2.0)

    def audio(cfg_coef: float, **prompt: str) -> np.ndarray:
        job = client.submit(continue_from=str(source), duration_s=1.0, seed=4, cfg_coef=cfg_coef, **prompt)
        assert client.wait(job.job_id, timeout_s=120).status == "succeeded"
        samples, _ = sf.read(str(client.download(job.job_id, tmp_path / f"{job.job_id}.wav")), dtype="float32")
        return samples  # type: ignore[no-any-return]

    without = audio(3.0)
    assert np.array_equal(without, audio(1.0))
    assert not np.array_equal(without, audio(3.0, prompt=" "))


BAD_SUBMISSIONS = [
    ({"duration_s": 2.0}, 400, "prompt", "give a text prompt"),
    ({"prompt": "x", "duration_s": 41}, 400, "duration_s", "at most 40 seconds"),
    ({"prompt": "x", "duration_s": -2}, 400, "duration_s", "greater than or equal to 0.02"),
    ({"prompt": "x", "melody_path": "{tone}"}, 400, "melody_path", "not a melody model"),
    ({"prompt": "la " * 300}, 400, "prompt", "at most 256 fit the cache this server planned"),
    ({"continue_from": "/nowhere/song.wav"}, 404, "continue_from", "no file at"),
    ({"continue_from": "/dev/null"}, 422, "continue_from", "not a regular file"),
    ({"prompt": "x", "output_format": "aiff"}, 400, "output_format", "'wav', 'flac', 'ogg' or 'mp3'"),
    ({"prompt": "x", "idempotency_key": ""}, 400, "idempotency_key", "at least 1 character"),
    ({"prompt": "x", "priority": 1}, 400, "priority", "not a field of this request"),
]


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    BAD_SUBMISSIONS,
    ids=[
        "no-prompt-or-audio",
        "duration-over-max",
        "duration-negative",
        "melody-on-text-model",
        "prompt-over-the-planned-tokens",
        "continue-from-missing",
        "continue-from-device",
        "unknown-format",
        "empty-idempotency-key",
        "unknown-field",
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(
    server: Server, tmp_path: Path, body: dict[str, Any], status: int, field: str, message: str
) -> None:
    tone = write_tone(tmp_path / "tone.wav", seconds=1.0)
    body = {k: v.format(tone=tone) if isinstance(v, str) else v for k, v in body.items()}
    response = httpx.post(f"{server.url}/generate", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", ""), ("DELETE", ""), ("GET", "/audio")], ids=["get", "delete", "audio"]
)
def test_unknown_jobs_are_404(server: Server, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}/jobs/{uuid.uuid4().hex}{path}")
    assert response.status_code == 404
    assert "no job" in response.json()["error"]


def test_cancel_stops_a_running_job_and_drops_a_queued_one(client: MusicGenClient, server: Server) -> None:
    running = client.submit(prompt="long", duration_s=LONG_S)
    queued = client.submit(prompt="next", duration_s=LONG_S)
    wait_for(client, running.job_id, "running")
    assert client.cancel(queued.job_id).status == "canceled"
    audio = httpx.get(f"{server.url}/jobs/{running.job_id}/audio")
    assert audio.status_code == 409
    client.cancel(running.job_id)
    stopped = wait_for(client, running.job_id, "canceled", timeout_s=30)
    assert stopped.progress < 1.0
    assert stopped.result is None
    assert client.status(queued.job_id).started_at is None  # it never ran


def test_an_idempotency_key_returns_the_first_job(client: MusicGenClient) -> None:
    key = uuid.uuid4().hex
    first = client.submit(prompt="once", duration_s=1.0, idempotency_key=key)
    again = client.submit(prompt="once", duration_s=1.0, idempotency_key=key)
    assert again.job_id == first.job_id
    with pytest.raises(MusicGenClientError) as refused:
        client.submit(prompt="something else", duration_s=1.0, idempotency_key=key)
    assert refused.value.status_code == 409
    assert refused.value.field == "idempotency_key"
    assert client.wait(first.job_id).status == "succeeded"


def test_an_identical_seeded_request_is_served_from_the_cache(client: MusicGenClient, server: Server) -> None:
    body = {"prompt": f"cached {uuid.uuid4().hex}", "duration_s": 1.0, "seed": 21}
    first = client.wait(client.submit(**body).job_id)
    assert first.result is not None and not first.result.cached
    again = client.submit(**body)
    assert again.status == "succeeded"  # answered at once
    view = client.status(again.job_id)
    assert view.result is not None and view.result.cached
    assert view.result.seed == 21
    original = httpx.get(f"{server.url}/jobs/{first.job_id}/audio").content
    assert httpx.get(f"{server.url}/jobs/{again.job_id}/audio").content == original
    unseeded = client.submit(prompt=body["prompt"], duration_s=1.0)
    assert unseeded.status != "succeeded" or not client.status(unseeded.job_id).result.cached  # type: ignore[union-attr]
    client.wait(unseeded.job_id)


def test_a_full_queue_answers_503_with_retry_after(client: MusicGenClient, server: Server) -> None:
    running = client.submit(prompt="busy", duration_s=LONG_S)
    wait_for(client, running.job_id, "running")
    waiting = [client.submit(prompt=f"wait {i}", duration_s=LONG_S) for i in range(3)]
    assert [job.queue_position for job in waiting] == [0, 1, 2]
    response = httpx.post(f"{server.url}/generate", json={"prompt": "one too many"})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "maximum of 3" in response.json()["error"]
    for job in [*waiting, running]:
        client.cancel(job.job_id)
    wait_for(client, running.job_id, "canceled", timeout_s=30)


def test_sync_http_client_submits_polls_and_cancels(server: Server) -> None:
    with bentoml.SyncHTTPClient(server.url) as sync_client:
        accepted = sync_client.generate(prompt="bentoml client", duration_s=1.0, seed=4)
        assert accepted["status_url"] == f"/jobs/{accepted['job_id']}"
        deadline = time.monotonic() + 120
        while (view := sync_client.job_status(job_id=accepted["job_id"]))["status"] != "succeeded":
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view["result"]["duration_s"] == 1.0
        assert sync_client.cancel_job(job_id=accepted["job_id"])["status"] == "succeeded"  # too late: nothing to do


def test_typed_client_continues_synchronously(client: MusicGenClient, tmp_path: Path) -> None:
    source = write_tone(tmp_path / "intro.mp3", seconds=3.0)
    response = client.continue_(source, duration_s=1.0, seed=2)
    assert response.duration_s == 1.0
    assert response.seed == 2
    assert client.health().status == "ready"


def test_continue_is_served_between_queued_jobs(client: MusicGenClient, tmp_path: Path) -> None:
    # Jobs and synchronous calls share the device: a /continue arriving while jobs are queued
    # does not wait for the whole queue, only (at most) for the job in progress.
    first = client.submit(prompt="first", duration_s=12.0)
    second = client.submit(prompt="second", duration_s=12.0)
    wait_for(client, first.job_id, "running")
    client.continue_(write_tone(tmp_path / "s.wav", seconds=2.0), duration_s=1.0)
    assert client.status(second.job_id).status != "succeeded"
    client.wait(second.job_id)
