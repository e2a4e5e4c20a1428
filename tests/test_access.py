"""Who may use the service, through the real server: API keys made with the command line (401
without one, every route but the public ones), the Host a request names (DNS rebinding), the web
page it comes from (Origin, CORS), and what each key may use (429 past its limits)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest

from musicgen_bento.access.keys import KeysFile
from musicgen_bento.access.usage import LocalLedger, RedisLedger
from musicgen_bento.api.client import MusicGenClient, MusicGenClientError
from musicgen_bento.api.endpoints import ENDPOINTS
from musicgen_bento.errors import InvalidParameter, LimitReached

from .conftest import TINY_TEXT, Server, write_tone


def keys_cli(keys_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "musicgen_bento", "keys", *args, "--api-keys-file", str(keys_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def add_key(keys_file: Path, name: str, *limits: str) -> str:
    done = keys_cli(keys_file, "add", name, *limits)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def secret(keys_file: Path) -> str:
    return add_key(keys_file, "studio")


@pytest.fixture(scope="module")
def server(start_server: Any, keys_file: Path, secret: str, tmp_path_factory: pytest.TempPathFactory) -> Server:
    inputs = tmp_path_factory.mktemp("access-inputs")
    started: Server = start_server(
        settings={
            "CF_MUSICGEN_MOCK": "1",
            "MUSICGEN_API_KEYS_FILE": str(keys_file),
            "MUSICGEN_ALLOWED_HOSTS": "studio.test",
            "MUSICGEN_CORS_ORIGINS": "http://127.0.0.1:9",
            "MUSICGEN_INPUT_ROOTS": str(inputs),
        }
    )
    started.wait_until("ready", timeout=120)
    return started


@pytest.fixture(scope="module")
def source(server: Server) -> Path:
    return write_tone(Path(server.env["MUSICGEN_INPUT_ROOTS"]) / "source.wav", seconds=2.0)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- keys, from the command line -----------------------------------------------------------------


def test_a_new_key_is_printed_once_and_stored_as_its_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    done = keys_cli(keys_file, "add", "backend", "--max-running", "2", "--audio-s-per-hour", "600")
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("mgb_") and len(secret) > 40
    stored = keys_file.read_text()
    assert secret not in stored
    assert json.loads(stored)["keys"][0]["max_running"] == 2
    assert keys_file.stat().st_mode & 0o077 == 0, "the keys file is for its owner only"
    listed = keys_cli(keys_file, "list")
    assert "backend" in listed.stdout and secret not in listed.stdout and "600" in listed.stdout
    assert keys_cli(keys_file, "remove", "backend").returncode == 0
    assert "backend" not in keys_cli(keys_file, "list").stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "two words"], "a key's name is"),
        (["add", "x", "--max-running", "-1"], "--max-running"),
        (["add", "x", "--audio-s-per-hour", "lots"], "--audio-s-per-hour"),
        (["remove", "nobody"], "no key is named 'nobody'"),
    ],
    ids=["bad-name", "negative-limit", "not-a-number", "unknown-key"],
)
def test_bad_key_commands_say_what_to_change(tmp_path: Path, args: list[str], says: str) -> None:
    done = keys_cli(tmp_path / "keys.json", *args)
    assert done.returncode != 0
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_a_name_can_hold_one_key_only(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    keys.add("backend")
    with pytest.raises(InvalidParameter, match="exists"):
        keys.add("backend")


# -- keys, through the server --------------------------------------------------------------------


def _guarded_routes() -> list[tuple[str, str]]:
    routes = [(e.method, e.path.replace("{job_id}", "0" * 32)) for e in ENDPOINTS if not e.public]
    return [*routes, ("GET", "/schema.json")]


@pytest.mark.parametrize(("method", "path"), _guarded_routes(), ids=lambda value: str(value))
def test_every_route_but_the_public_ones_needs_a_key(server: Server, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}", timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["field"] == "Authorization"
    wrong = httpx.request(method, f"{server.url}{path}", headers=bearer("mgb_not-a-key"), timeout=30)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("path", ["/health", "/playground", "/playground/playground.js", "/metrics", "/livez"])
def test_health_the_playground_metrics_and_probes_need_no_key(server: Server, path: str) -> None:
    assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200


def test_health_says_keys_are_required_and_nothing_more(server: Server) -> None:
    health = httpx.get(f"{server.url}/health", timeout=30).json()
    assert health["keys_required"] is True
    assert "studio" not in json.dumps(health)


def test_a_key_opens_every_kind_of_client(server: Server, secret: str, source: Path) -> None:
    answer = httpx.post(f"{server.url}/continue", json={"audio_path": str(source)}, headers=bearer(secret), timeout=60)
    assert answer.status_code == 200, answer.text
    with MusicGenClient(server.url, api_key=secret) as client:
        job = client.submit(prompt="keyed", duration_s=1.0)
        assert client.wait(job.job_id, timeout_s=60).status == "succeeded"
        with client.continue_stream(source, duration_s=1.0) as stream:
            assert sum(len(chunk) for chunk in stream) == stream.content_length
    with bentoml.SyncHTTPClient(server.url, token=secret) as sync_client:
        assert sync_client.health()["status"] == "ready"


def test_keys_come_and_go_without_a_restart(server: Server, keys_file: Path) -> None:
    added = add_key(keys_file, "newcomer")
    assert httpx.get(f"{server.url}/docs.json", headers=bearer(added), timeout=30).status_code == 200
    assert keys_cli(keys_file, "remove", "newcomer").returncode == 0
    assert httpx.get(f"{server.url}/docs.json", headers=bearer(added), timeout=30).status_code == 401


def test_a_secret_is_never_logged_but_the_keys_name_is(server: Server, secret: str) -> None:
    response = httpx.post(
        f"{server.url}/continue", json={"audio_path": "/nowhere.wav"}, headers=bearer(secret), timeout=30
    )
    assert response.status_code in (403, 404)
    deadline = time.monotonic() + 10
    while "key studio" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "key studio" in server.log()
    assert secret not in server.log()


def test_the_document_asks_for_the_key_where_the_server_does(server: Server, secret: str) -> None:
    document = httpx.get(f"{server.url}/docs.json", headers=bearer(secret), timeout=30).json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" in document["paths"]["/continue"]["post"]["responses"]
    assert "429" in document["paths"]["/generate"]["post"]["responses"]


# -- hosts and origins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "localhost.evil.example", "studio.test.evil"], ids=["other", "prefixed", "suffixed"]
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("POST", "/continue/stream"), ("POST", "/uploads")])
def test_a_host_this_server_is_not_is_refused_before_any_work(
    server: Server, secret: str, host: str, method: str, path: str
) -> None:
    headers = {**bearer(secret), "Host": host}
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30)
    assert response.status_code == 403, response.text
    assert response.json()["field"] == "Host"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "studio.test", "[::1]"], ids=str)
def test_addresses_this_machine_and_listed_hosts_are_answered(server: Server, host: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    assert httpx.get(f"{server.url}/health", headers={"Host": f"{host}:{port}"}, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/uploads", {"files": {"file": ("x.wav", b"RIFF", "audio/wav")}}),
        ("POST", "/continue/stream", {"json": {"audio_path": "/x.wav"}}),
        ("POST", "/continue", {"json": {"audio_path": "/x.wav"}}),
        ("GET", "/jobs/" + "0" * 32, {}),
        ("GET", "/health", {}),
    ],
    ids=["multipart-upload", "stream", "continue", "job", "health"],
)
def test_a_page_from_another_origin_is_refused_even_with_a_key(
    server: Server, secret: str, method: str, path: str, body: dict[str, Any]
) -> None:
    headers = {**bearer(secret), "Origin": "http://evil.example"}
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **body)
    assert response.status_code == 403, response.text
    assert response.json()["field"] == "Origin"
    assert "access-control-allow-origin" not in response.headers


def test_the_servers_own_origin_and_listed_ones_are_answered(server: Server, secret: str) -> None:
    own = httpx.get(f"{server.url}/docs.json", headers={**bearer(secret), "Origin": server.url}, timeout=30)
    assert own.status_code == 200
    listed = httpx.get(
        f"{server.url}/docs.json", headers={**bearer(secret), "Origin": "http://127.0.0.1:9"}, timeout=30
    )
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "http://127.0.0.1:9"
    preflight = httpx.options(
        f"{server.url}/continue",
        headers={
            "Origin": "http://127.0.0.1:9",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


# -- what a key may use ----------------------------------------------------------------------------


@pytest.fixture(params=["local", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "local":
        yield LocalLedger()
        return
    import redis

    yield RedisLedger(
        redis.Redis.from_url(request.getfixturevalue("redis_url")), request.getfixturevalue("redis_prefix")
    )


def test_a_ledger_counts_running_generations_per_key(ledger: Any) -> None:
    first = ledger.start("a", 2)
    ledger.start("a", 2)
    with pytest.raises(LimitReached) as refused:
        ledger.start("a", 2)
    assert refused.value.status_code == 429 and refused.value.field == "max_running"
    assert ledger.start("b", 2), "another key has its own count"
    ledger.finish("a", first)
    assert ledger.start("a", 2)


def test_a_ledger_counts_queued_jobs_and_drops_those_that_left_unseen(ledger: Any) -> None:
    ledger.enqueue("a", "job-1", 2, lambda job: True)
    ledger.enqueue("a", "job-2", 2, lambda job: True)
    with pytest.raises(LimitReached, match="max-queued"):
        ledger.enqueue("a", "job-3", 2, lambda job: True)
    ledger.enqueue("a", "job-3", 2, lambda job: job != "job-1")  # job-1 ran, and nobody said so
    ledger.dequeue("a", "job-2")
    ledger.enqueue("a", "job-4", 2, lambda job: True)


def test_a_ledger_charges_audio_for_an_hour_and_refunds_what_failed(ledger: Any) -> None:
    receipt = ledger.charge("a", 20.0, 30.0)
    with pytest.raises(LimitReached) as refused:
        ledger.charge("a", 20.0, 30.0)
    assert 3500 <= refused.value.retry_after_s <= 3600
    assert "audio-s-per-hour" in refused.value.message
    ledger.refund("a", receipt)
    ledger.charge("a", 20.0, 30.0)
    ledger.charge("a", 1e9, 0.0)  # 0: no limit


def test_replicas_sharing_redis_enforce_one_budget(redis_url: str, redis_prefix: str) -> None:
    import redis

    replicas = [RedisLedger(redis.Redis.from_url(redis_url), redis_prefix) for _ in range(2)]
    replicas[0].start("a", 1)
    with pytest.raises(LimitReached):
        replicas[1].start("a", 1)
    replicas[0].charge("a", 10.0, 15.0)
    with pytest.raises(LimitReached):
        replicas[1].charge("a", 10.0, 15.0)


@pytest.fixture(scope="module")
def limited(start_server: Any, tiny_models: dict[str, str], keys_file: Path) -> tuple[Server, str]:
    secret = add_key(keys_file, "limited", "--max-running", "1", "--max-queued", "1", "--audio-s-per-hour", "40")
    started: Server = start_server(
        settings={"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_API_KEYS_FILE": str(keys_file), "MUSICGEN_BATCH_SLOTS": "1"}
    )
    started.wait_until("ready", timeout=180)
    return started, secret


def test_past_a_keys_running_limit_a_generation_is_a_429_naming_it(limited: tuple[Server, str], tmp_path: Path) -> None:
    server, secret = limited
    source = write_tone(tmp_path / "source.wav", seconds=2.0)
    with MusicGenClient(server.url, api_key=secret) as client:
        stream = client.continue_stream(source, duration_s=12.0, seed=1)  # holds the key's one slot
        try:
            with pytest.raises(MusicGenClientError) as refused:
                client.continue_(source, duration_s=1.0)
        finally:
            stream.close()
    assert refused.value.status_code == 429 and refused.value.field == "max_running"
    assert "max-running" in refused.value.message


def test_past_a_keys_queued_limit_a_job_is_a_429(limited: tuple[Server, str]) -> None:
    server, secret = limited
    with MusicGenClient(server.url, api_key=secret) as client:
        running = client.submit(prompt="long", duration_s=20.0, seed=1)  # the one slot
        deadline = time.monotonic() + 30
        while client.status(running.job_id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        queued = client.submit(prompt="next", duration_s=1.0, seed=2)
        try:
            with pytest.raises(MusicGenClientError) as refused:
                client.submit(prompt="one too many", duration_s=1.0, seed=3)
            assert refused.value.status_code == 429 and refused.value.field == "max_queued"
            response = httpx.post(
                f"{server.url}/generate", json={"prompt": "x", "duration_s": 1.0}, headers=bearer(secret), timeout=30
            )
            assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
        finally:
            client.cancel(queued.job_id)
            client.cancel(running.job_id)


def test_past_a_keys_hour_of_audio_a_request_is_a_429_and_a_failed_one_costs_nothing(
    limited: tuple[Server, str], tmp_path: Path
) -> None:
    server, secret = limited
    source = write_tone(tmp_path / "source.wav", seconds=2.0)
    with MusicGenClient(server.url, api_key=secret) as client:
        _when_a_slot_is_free(lambda: client.continue_(source, duration_s=1.0))  # the jobs above may still end
        for _ in range(3):  # a source that is not there: refused, and not charged
            with pytest.raises(MusicGenClientError) as missing:
                client.continue_(tmp_path / "missing.wav", duration_s=15.0)
            assert missing.value.status_code == 404
        with pytest.raises(MusicGenClientError) as refused:
            client.continue_(source, duration_s=15.0, takes=2)  # past the hour's 40 s, with the jobs' 21 s above
    assert refused.value.status_code == 429 and refused.value.field == "audio_s_per_hour"
    assert "audio-s-per-hour" in refused.value.message


def _when_a_slot_is_free(call: Any, timeout_s: float = 60) -> Any:
    """`call()`, retried while the key's one running slot is still held."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except MusicGenClientError as error:
            if error.field != "max_running" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_page_from_another_local_origin_is_refused_until_it_is_listed(
    browser: Any, start_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from musicgen_bento.testing import free_port

    page_port = free_port()
    allowed_origin = f"http://127.0.0.1:{page_port}"
    listed: Server = start_server(settings={"CF_MUSICGEN_MOCK": "1", "MUSICGEN_CORS_ORIGINS": allowed_origin})
    listed.wait_until("ready", timeout=120)
    site = tmp_path_factory.mktemp("other-site")
    (site / "index.html").write_text("<!doctype html><title>another site</title>")
    pages = {
        "listed": allowed_origin,
        "unlisted": f"http://127.0.0.2:{page_port}",  # another loopback address: another origin
    }
    serving = [  # one static site at both loopback addresses, the same port
        subprocess.Popen(
            [sys.executable, "-m", "http.server", str(page_port), "--bind", address, "--directory", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for address in ("127.0.0.1", "127.0.0.2")
    ]
    try:
        for origin in pages.values():
            _wait_for_page(origin)
        context = browser.new_context()
        results = {}
        for name, origin in pages.items():
            page = context.new_page()
            page.goto(f"{origin}/index.html")
            results[name] = page.evaluate(
                """async (url) => {
                    const call = async (path, init) => {
                        try { return `status ${(await fetch(url + path, init)).status}`; }
                        catch (error) { return "blocked"; }
                    };
                    const form = new FormData();  // multipart: a "simple" request, sent with no preflight
                    form.append("file", new Blob(["not audio"]), "song.wav");
                    const json = { "content-type": "application/json" };
                    return {
                        job: await call("/jobs/status", { method: "POST", headers: json, body: '{"job_id": "x"}' }),
                        upload: await call("/uploads", { method: "POST", body: form }),
                    };
                }""",
                listed.url,
            )
        context.close()
    finally:
        for process in serving:
            process.terminate()
            process.wait(timeout=10)
    # Refused with 403 and no CORS headers, the page reads nothing: the JSON call is refused at its
    # preflight, and the upload, which needs none, is refused before the server reads it.
    assert results["unlisted"] == {"job": "blocked", "upload": "blocked"}
    assert "refused OPTIONS /jobs/status: 403 (Origin)" in listed.log()
    assert "refused POST /uploads: 403 (Origin)" in listed.log()
    # Listed, the page reads the service's answers: no such job, not audio.
    assert results["listed"] == {"job": "status 404", "upload": "status 422"}


def _wait_for_page(origin: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{origin}/index.html", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"the other site at {origin} did not start")


def test_the_playground_sends_the_key_it_is_given(browser: Any, server: Server, secret: str) -> None:
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/playground")
    key = page.get_by_label("API key")
    expect(key).to_be_visible(timeout=30_000)
    key.fill(secret)
    key.dispatch_event("change")
    seen = threading.Event()

    def on_response(response: Any) -> None:
        if response.url.endswith("/docs.json") and response.status == 200:
            seen.set()

    page.on("response", on_response)
    deadline = time.monotonic() + 20
    while not seen.is_set() and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    context.close()
    assert seen.is_set(), "the playground did not read the document with its key"


def _status_through_guard(settings: Any, keys: KeysFile, method: str, path: str) -> int:
    """The status the guard answers a request with (200: it let the request through)."""
    import asyncio

    from musicgen_bento.api.guard import Guard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"host", b"127.0.0.1:3000")]}
    # On a thread of its own: another test's event loop may be running on this one.
    runner = threading.Thread(target=lambda: asyncio.run(Guard(app, settings, keys)(scope, receive, send)))
    runner.start()
    runner.join(timeout=30)
    return int(sent[0]["status"])


def test_metrics_need_a_key_where_the_operator_says_so(tmp_path: Path) -> None:
    from musicgen_bento.settings import Settings

    keys = KeysFile(tmp_path / "keys.json")
    keys.add("prometheus")
    open_metrics = Settings.from_env({"MUSICGEN_API_KEYS_FILE": str(keys.path)})
    protected = Settings.from_env({"MUSICGEN_API_KEYS_FILE": str(keys.path), "MUSICGEN_PROTECT_METRICS": "1"})
    assert _status_through_guard(open_metrics, keys, "GET", "/metrics") == 200
    assert _status_through_guard(protected, keys, "GET", "/metrics") == 401
    assert _status_through_guard(protected, keys, "GET", "/health") == 200
