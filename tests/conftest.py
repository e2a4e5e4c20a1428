"""Shared fixtures: a model store with the tiny random models, audio files, and real servers.

The store lives in a temporary BENTOML_HOME made once per test session, so tests never touch
the developer's own store. Servers are started with the same commands users run and stopped
at the end of their module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from musicgen_bento.jobs.model import JobQueue
from musicgen_bento.testing import ServerProcess, free_port, write_tone

ROOT = Path(__file__).resolve().parent.parent
BENTOML_HOME = Path(tempfile.mkdtemp(prefix="musicgen-tests-home-"))
# Set before anything imports bentoml, which reads it once.
os.environ["BENTOML_HOME"] = str(BENTOML_HOME)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BIN = Path(sys.executable).parent

TINY_TEXT = "musicgen-tiny-random"
TINY_MELODY = "musicgen-melody-tiny-random"
TINY_STEREO = "musicgen-stereo-tiny-random"


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, str]:
    """Creates the tiny text, melody and stereo models in the session's store, through the CLI."""
    subprocess.run([str(BIN / "musicgen-bento"), "models", "create-tiny"], check=True, capture_output=True)
    return {"text": TINY_TEXT, "melody": TINY_MELODY, "stereo": TINY_STEREO}


@pytest.fixture
def make_tone(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "source.wav", **kwargs: object) -> Path:
        return write_tone(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


class Server(ServerProcess):
    """A server of the test session, run from the checkout."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        super().__init__(command, env, port, log_path, cwd=ROOT)


def decode_together(engine: Any, requests: list[Any]) -> list[Any]:
    """Each request's codes, the requests decoded by `engine` from threads started together (the
    index is the arrival order); fails if one has not finished within two minutes."""
    codes: list[Any] = [None] * len(requests)

    def decode(index: int) -> None:
        codes[index] = engine.decode(requests[index], (index,))

    threads = [threading.Thread(target=decode, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request did not finish decoding"
    return codes


def server_env(output_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MUSICGEN_", "CF_MUSICGEN_"))}
    env.update(
        {
            "BENTOML_HOME": str(BENTOML_HOME),
            "MUSICGEN_OUTPUT_DIR": str(output_dir),
            # Beside the outputs, so that a test's uploads never land in the checkout.
            "MUSICGEN_UPLOAD_DIR": str(output_dir.parent / "uploads"),
            "MUSICGEN_WARMUP_S": "0",
        }
    )
    env.update(settings)
    return env


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Starts servers for a module; each is stopped when the module ends.

    `start_server(settings={...})` runs `bentoml serve service:MusicGen`;
    `start_server(cli_args=[...])` runs `python -m musicgen_bento ...` as the orchestrator does.
    """
    started: list[Server] = []

    def start(
        settings: dict[str, str] | None = None, cli_args: list[str] | None = None, workdir: Path | None = None
    ) -> Server:
        port = free_port()
        workdir = workdir or tmp_path_factory.mktemp("server")
        env = server_env(workdir / "output", **{"MUSICGEN_DATA_DIR": str(workdir / "data"), **(settings or {})})
        if cli_args is None:
            command = [str(BIN / "bentoml"), "serve", "service:MusicGen", "--port", str(port), "--host", "127.0.0.1"]
        else:
            command = [sys.executable, "-m", "musicgen_bento", *cli_args, "--port", str(port), "--host", "127.0.0.1"]
        server = Server(command, env, port, workdir / f"server-{port}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: MUSICGEN_TEST_REDIS_URL, else 127.0.0.1:6379, else a `redis-server` started here.

    Without any, Redis tests are skipped with the reason, unless MUSICGEN_TESTS_REQUIRE_REDIS=1
    (CI sets it), which turns the skip into a failure.
    """
    import shutil

    url = os.environ.get("MUSICGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _redis_reachable(url):
        yield url
        return
    server_binary = shutil.which("redis-server")
    if server_binary is not None:
        port = free_port()
        process = subprocess.Popen(
            [server_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(50):
            if _redis_reachable(url):
                break
            time.sleep(0.1)
        try:
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)
        return
    reason = f"no Redis at {url} and no redis-server installed to start one"
    if os.environ.get("MUSICGEN_TESTS_REQUIRE_REDIS") == "1":
        pytest.fail(f"MUSICGEN_TESTS_REQUIRE_REDIS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    import uuid

    import redis

    prefix = f"musicgen-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    """A job queue of each backend: embedded SQLite, and the real Redis under this test's prefix."""
    from musicgen_bento.jobs.redis_queue import RedisJobQueue
    from musicgen_bento.jobs.sqlite_queue import SqliteJobQueue

    opened: JobQueue
    if request.param == "sqlite":
        opened = SqliteJobQueue(tmp_path / "jobs.sqlite3", 3600)
    else:
        opened = RedisJobQueue(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"), 3600, 60)
    yield opened
    opened.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keeps each phase's report on the test item (`item.rep_call`), for fixtures that act on a
    failure (the browser tests' screenshots)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


CHROMIUM = os.environ.get("MUSICGEN_CHROMIUM", "/usr/bin/chromium")


def _browser_or_skip() -> str:
    import shutil

    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("MUSICGEN_TESTS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MUSICGEN_TESTS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return executable


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (whose own browser downloads are never used)."""
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Continue plays through Web Audio from a click; a headless machine has no sound card.
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
        )
        yield launched
        launched.close()
