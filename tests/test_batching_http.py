"""Step-level batching where users meet it: concurrent `/continue` calls and jobs sent over HTTP to
a real server decode in the same engine steps (read from its Prometheus metrics, not from
timing), each request's audio is what it would be alone, and a client that disconnects frees its
slot at once and gets nothing written."""

from __future__ import annotations

import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_bento.api.client import MusicGenClient

from .conftest import TINY_TEXT, Server, write_tone

SLOTS = 4
CLIP_S = 4.0
STEPS_PER_CLIP = int(CLIP_S * 50) + 3  # 50 frames a second, plus the delay pattern's 3 steps


def metrics(server: Server) -> dict[str, float]:
    """The server's Prometheus samples, keyed by name with labels."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def steps_at_batch(before: dict[str, float], after: dict[str, float], size: int) -> int:
    """Decoding steps run with exactly `size` requests in the batch between two readings."""

    def at_most(values: dict[str, float], bound: int) -> float:
        return values.get(f'musicgen_engine_batch_size_bucket{{le="{float(bound)}"}}', 0.0)

    def exactly(values: dict[str, float]) -> float:
        return at_most(values, size) - at_most(values, size - 1)

    return round(exactly(after) - exactly(before))


def settings(**extra: str) -> dict[str, str]:
    return {"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_BATCH_SLOTS": str(SLOTS), **extra}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    # Long requests allowed, so that one is still decoding when its client leaves (the tiny model
    # decodes 30 s in under 2 s on two cores).
    started: Server = start_server(settings=settings(MUSICGEN_MAX_DURATION_S="300"))
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("batching") / "source.wav", seconds=3.0)


def continue_call(server: Server, source: Path, seed: int, **options: Any) -> dict[str, Any]:
    body = {"audio_path": str(source), "prompt": f"take {seed}", "duration_s": CLIP_S, "seed": seed, **options}
    response = httpx.post(f"{server.url}/continue", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def samples(path: str) -> np.ndarray:
    data, _ = sf.read(path, dtype="int16")
    return data


def all_at_once(calls: list[Any]) -> list[Any]:
    """Runs the zero-argument `calls` on threads released together; their results in order."""
    start = threading.Barrier(len(calls))

    def released(call: Any) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_concurrent_continue_calls_decode_in_the_same_steps(server: Server, source: Path, temperature: float) -> None:
    # Sampled tokens are the sensitive case: a last-bit difference in a logit batched moves the
    # draw now and then (seen in CI before the engine checked its kernels' batch invariance).
    alone = [continue_call(server, source, seed, temperature=temperature) for seed in range(SLOTS)]
    before = metrics(server)
    together = all_at_once(
        [lambda seed=seed: continue_call(server, source, seed, temperature=temperature) for seed in range(SLOTS)]
    )
    after = metrics(server)
    # Each call decodes STEPS_PER_CLIP steps; arriving together, most of them are shared by all four.
    assert steps_at_batch(before, after, SLOTS) >= STEPS_PER_CLIP // 2, (before, after)
    for single, batched in zip(alone, together, strict=True):
        assert batched["seed"] == single["seed"]
        assert np.array_equal(samples(batched["audio_path"]), samples(single["audio_path"]))


# oneDNN packs bfloat16 weights where it has bfloat16 kernels; elsewhere they stay dense.
_BFLOAT16_WEIGHTS = "packed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "dense"


@pytest.mark.parametrize(
    ("variable", "value", "weights"),
    [("MUSICGEN_DTYPE", "bfloat16", _BFLOAT16_WEIGHTS), ("MUSICGEN_QUANTIZE", "int8", "int8")],
    ids=["bfloat16", "int8"],
)
def test_reduced_precision_calls_decode_together_as_alone(
    start_server: Any, source: Path, tiny_models: dict[str, str], variable: str, value: str, weights: str
) -> None:
    # CPUs in bfloat16 multiply by weights packed for oneDNN (the `auto` choice on CPUs with native
    # bfloat16), and an operator may ask for int8 weights; batching must reach those calls, and
    # change none of them, as it does in float32.
    reduced: Server = start_server(settings=settings(**{variable: value}))
    reduced.wait_until("ready", timeout=180)
    engine = httpx.get(f"{reduced.url}/health", timeout=10).json()["engine"]
    assert engine["weights"] == weights, engine["weights_reason"]
    alone = [continue_call(reduced, source, seed, temperature=1.0) for seed in range(SLOTS)]
    before = metrics(reduced)
    together = all_at_once(
        [lambda seed=seed: continue_call(reduced, source, seed, temperature=1.0) for seed in range(SLOTS)]
    )
    after = metrics(reduced)
    assert steps_at_batch(before, after, SLOTS) >= STEPS_PER_CLIP // 2, (before, after)
    for single, batched in zip(alone, together, strict=True):
        assert np.array_equal(samples(batched["audio_path"]), samples(single["audio_path"]))


def test_more_calls_than_slots_wait_and_all_finish(server: Server, source: Path) -> None:
    before = metrics(server)
    answers = all_at_once([lambda seed=seed: continue_call(server, source, seed) for seed in range(SLOTS + 2)])
    after = metrics(server)
    assert [answer["duration_s"] for answer in answers] == [CLIP_S] * (SLOTS + 2)
    assert steps_at_batch(before, after, SLOTS) > 0
    assert after["musicgen_engine_requests_decoding"] == after["musicgen_engine_requests_waiting"] == 0


def test_jobs_and_continue_calls_share_the_batch(server: Server, source: Path) -> None:
    with MusicGenClient(server.url) as client:
        before = metrics(server)
        jobs = [
            client.submit(prompt=f"job {n}", duration_s=CLIP_S, seed=n, idempotency_key=uuid.uuid4().hex)
            for n in range(2)
        ]
        answers = all_at_once([lambda seed=seed: continue_call(server, source, seed) for seed in range(2)])
        views = [client.wait(job.job_id, timeout_s=120) for job in jobs]
    after = metrics(server)
    assert [view.status for view in views] == ["succeeded"] * 2
    assert [answer["duration_s"] for answer in answers] == [CLIP_S] * 2
    assert steps_at_batch(before, after, SLOTS) > 0


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def job_server(request: pytest.FixtureRequest, start_server: Any, server: Server) -> Server:
    if request.param == "sqlite":
        return server
    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    redis_url = request.getfixturevalue("redis_url")
    started: Server = start_server(settings=settings(MUSICGEN_REDIS_URL=redis_url, MUSICGEN_REDIS_PREFIX=prefix))
    started.wait_until("ready", timeout=180)
    return started


def test_concurrent_jobs_decode_in_the_same_steps(job_server: Server) -> None:
    def submit_and_fetch(client: MusicGenClient, seed: int) -> np.ndarray:
        # A new idempotency key each time: the artifact cache would answer a repeat at once.
        job = client.submit(prompt=f"job {seed}", duration_s=CLIP_S, seed=seed, idempotency_key=uuid.uuid4().hex)
        assert client.wait(job.job_id, timeout_s=120).status == "succeeded"
        audio = httpx.get(f"{job_server.url}/jobs/{job.job_id}/audio", timeout=30).content
        data, _ = sf.read(io.BytesIO(audio), dtype="int16")  # the samples: the file's metadata has its date
        return data

    with MusicGenClient(job_server.url) as client:
        alone = [submit_and_fetch(client, seed) for seed in range(SLOTS)]
        before = metrics(job_server)
        together = all_at_once([lambda seed=seed: submit_and_fetch(client, seed) for seed in range(SLOTS)])
    after = metrics(job_server)
    assert steps_at_batch(before, after, SLOTS) >= STEPS_PER_CLIP // 2, (before, after)
    for index, (batched, single) in enumerate(zip(together, alone, strict=True)):
        np.testing.assert_array_equal(batched, single, err_msg=f"job {index}: batching changed its audio")
    assert after["musicgen_jobs_running"] == 0


def test_a_client_that_disconnects_is_canceled_and_nothing_is_written(server: Server, source: Path) -> None:
    output_dir = server.log_path.parent / "output"
    output_dir.mkdir(exist_ok=True)
    files_before = set(output_dir.iterdir())
    canceled_before = metrics(server).get("musicgen_engine_requests_canceled_total", 0.0)
    body = {"audio_path": str(source), "duration_s": 300.0, "seed": 5}
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up while the 300 s continuation is decoding, and closes the connection.
        httpx.post(f"{server.url}/continue", json=body, timeout=httpx.Timeout(2.0, connect=5.0))
    deadline = time.monotonic() + 10
    while (now := metrics(server))["musicgen_engine_requests_canceled_total"] <= canceled_before:
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert now["musicgen_engine_requests_decoding"] == 0  # its slot is free again
    time.sleep(0.5)
    assert set(output_dir.iterdir()) == files_before
    assert continue_call(server, source, seed=6)["duration_s"] == CLIP_S  # and the server serves on


def test_transformers_engine_serves_concurrent_calls_one_at_a_time(
    start_server: Any, source: Path, tiny_models: dict[str, str]
) -> None:
    fallback: Server = start_server(settings=settings(MUSICGEN_ENGINE="transformers"))
    fallback.wait_until("ready", timeout=180)
    alone = continue_call(fallback, source, seed=3, duration_s=1.0)
    answers = all_at_once([lambda: continue_call(fallback, source, seed=3, duration_s=1.0)] * 3)
    for answer in answers:
        assert np.array_equal(samples(answer["audio_path"]), samples(alone["audio_path"]))
    assert metrics(fallback).get("musicgen_engine_batch_size_count", 0.0) == 0  # no engine: nothing batched


def test_health_reports_the_engine(server: Server) -> None:
    engine = httpx.get(f"{server.url}/health", timeout=10).json()["engine"]
    assert engine["kind"] == "static"
    assert engine["slots"] == SLOTS
    assert engine["decoding"] == engine["waiting"] == 0
    assert engine["steps"] > 0  # the earlier tests' steps


def test_a_client_that_disconnects_while_waiting_leaves_the_line(
    start_server: Any, source: Path, tiny_models: dict[str, str]
) -> None:
    # transformers' generate() serves one request at a time: a second call waits for the first.
    fallback: Server = start_server(settings=settings(MUSICGEN_ENGINE="transformers"))
    fallback.wait_until("ready", timeout=180)
    # Long enough that the first call still decodes when the second gives up (the tiny model makes
    # 8 s in about 1.4 s on an AMX CPU).
    first = threading.Thread(target=continue_call, args=(fallback, source, 1), kwargs={"duration_s": 30.0})
    first.start()
    time.sleep(0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{fallback.url}/continue",
            json={"audio_path": str(source), "duration_s": 1.0, "seed": 2},
            timeout=httpx.Timeout(1.0, connect=5.0),
        )
    first.join()
    log = fallback.log_path.read_text(errors="replace")
    assert "client disconnected while waiting; it leaves the line" in log, log[-3000:]
