"""A hostile client and a full disk against the real server: bodies that are not JSON, odd job ids
and paths, unknown routes, and an output directory that is full or read-only. Every answer is a
JSON 4xx (or a documented 5xx with what to do), nothing half-written stays behind, and the server
recovers by itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from musicgen_bento.api.client import MusicGenClient

from .conftest import TINY_TEXT, Server, write_tone

POST_ROUTES = ["/continue", "/generate", "/jobs/status", "/jobs/cancel", "/health"]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(settings={"MUSICGEN_MODEL": TINY_TEXT})
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("hardening") / "source.wav", seconds=2.0)


def assert_json_error(response: httpx.Response, status: int, says: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert says in body["error"], body
    assert "Traceback" not in response.text
    return body


NON_JSON_BODIES = [
    ({"content-type": "multipart/form-data"}, b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--"),
    ({"content-type": "application/x-www-form-urlencoded"}, b"duration_s=" + b"9" * 5000),
    ({"content-type": "application/x-www-form-urlencoded"}, "&".join(f"f{i}=1" for i in range(5000)).encode()),
    ({"content-type": "text/plain"}, b'{"audio_path": "/x.wav"}'),
    ({"content-type": "multipart/form-data; boundary=zz"}, b"--zz\r\nbroken"),
]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(
    ("headers", "body"),
    NON_JSON_BODIES,
    ids=["multipart-no-boundary", "form-5000-digits", "form-5000-fields", "text-plain", "multipart-truncated"],
)
def test_a_body_that_is_not_json_is_a_415(server: Server, route: str, headers: dict[str, str], body: bytes) -> None:
    response = httpx.post(f"{server.url}{route}", content=body, headers=headers, timeout=30)
    error = assert_json_error(response, 415, "must be JSON")
    assert error["field"] == "body"


NOT_UTF8 = [b"\xff\x0d", b"\xff", b'{"audio_path": "\xff"}', b'{"prompt": "a\xffb", "audio_path": "/x"}', b'"\xfe"']


@pytest.mark.parametrize("route", [*POST_ROUTES[:-1], "/continue/stream"])
@pytest.mark.parametrize("body", NOT_UTF8, ids=["ff-0d", "ff", "in-a-path", "in-the-prompt", "a-string"])
def test_a_body_that_is_not_utf8_is_a_400(server: Server, route: str, body: bytes) -> None:
    response = httpx.post(
        f"{server.url}{route}", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    error = assert_json_error(response, 400, "not valid JSON")
    assert error["field"] == "body"


@pytest.mark.parametrize("route", ["/continue", "/continue/stream"])
@pytest.mark.parametrize(
    ("value", "field", "says"),
    [
        ("3.9e307", "prompt_start_s", "must start by"),
        ("1e999", "prompt_start_s", "finite number"),
        ("Infinity", "duration_s", "finite number"),
        ("NaN", "cfg_coef", ""),
    ],
    ids=["huge-start", "overflowing-start", "infinite-duration", "nan-guidance"],
)
def test_numbers_past_every_bound_are_a_400(
    server: Server, source: Path, route: str, value: str, field: str, says: str
) -> None:
    body = f'{{"audio_path": "{source}", "{field}": {value}}}'.encode()
    response = httpx.post(
        f"{server.url}{route}", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    error = assert_json_error(response, 400, says)
    assert error["field"] == field


def test_a_refused_request_is_one_info_line_and_no_traceback(server: Server, source: Path) -> None:
    marker = f"/refused-{uuid.uuid4().hex[:8]}.wav"
    response = httpx.post(f"{server.url}/continue", json={"audio_path": marker, "duration_s": 1e9}, timeout=30)
    assert response.status_code == 400
    deadline = time.monotonic() + 10
    while "refused POST /continue: 400 (duration_s)" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in server.log().splitlines() if "refused POST /continue" in line]
    assert any("400 (duration_s)" in line for line in lines), lines[-3:]
    assert "Traceback" not in server.log(), "a refused request logged a traceback"


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/jobs/..%2F..%2Fx", "no route"),
        ("/jobs/" + "a" * 60_000, "60000 characters"),  # httpx refuses URLs over 64 kB
        ("/jobs/not-a-job-id", "no job 'not-a-job-id'"),
        ("/jobs/" + uuid.uuid4().hex, "never existed"),
        ("/jobs/" + uuid.uuid4().hex + "/audio", "never existed"),
        ("/no/such/route", "no route"),
    ],
    ids=["encoded-traversal", "60k-id", "not-an-id", "unknown-id", "unknown-audio", "unknown-route"],
)
def test_every_404_is_the_json_error(server: Server, path: str, says: str) -> None:
    response = httpx.get(f"{server.url}{path}", timeout=30)
    assert response.status_code == 404, response.text
    body = assert_json_error(response, 404, says)
    assert len(body["error"]) < 400  # a long id is quoted cut short, not echoed whole


def test_a_method_no_route_takes_is_a_json_405(server: Server) -> None:
    response = httpx.get(f"{server.url}/continue", timeout=30)
    assert_json_error(response, 405, "not allowed")


@pytest.mark.parametrize(
    ("fields", "status", "field", "says"),
    [
        ({"continue_from": "{loop}"}, 422, "continue_from", "loop of symbolic links"),
        ({"continue_from": "/x/a.wav\u0000"}, 400, "continue_from", "NUL character"),
        ({"continue_from": "{tiny}"}, 422, "continue_from", "at least one codec frame"),
        ({"continue_from": "{source}", "prompt_duration_s": 1e-9}, 400, "prompt_duration_s", "0.02"),
        ({"melody_path": "{loop}"}, 422, "melody_path", "loop of symbolic links"),
        ({"duration_s": 1e-9, "output_format": "flac"}, 400, "duration_s", "0.02"),
        ({"duration_s": True}, 400, "duration_s", "valid number"),
    ],
    ids=["loop", "nul", "under-one-frame", "prompt-under-one-frame", "melody-loop", "under-one-sample", "bool"],
)
def test_a_job_is_refused_as_continue_refuses_it(
    server: Server, source: Path, fields: dict[str, Any], status: int, field: str, says: str
) -> None:
    folder = source.parent
    loop = folder / "loop-a.wav"
    if not loop.is_symlink():
        loop.symlink_to(folder / "loop-b.wav")
        (folder / "loop-b.wav").symlink_to(loop)
    tiny = write_tone(folder / "tiny.wav", seconds=0.01, sample_rate=32000, channels=1)
    paths = {"loop": str(loop), "tiny": str(tiny), "source": str(source)}
    body = {"prompt": "x", **{k: v.format(**paths) if isinstance(v, str) else v for k, v in fields.items()}}
    response = httpx.post(f"{server.url}/generate", json=body, timeout=30)
    error = assert_json_error(response, status, says)
    assert error["field"] == field


def test_the_start_up_log_warns_about_open_input_roots(server: Server) -> None:
    assert "MUSICGEN_INPUT_ROOTS is empty" in server.log_path.read_text(errors="replace")


def test_a_server_on_loopback_does_not_warn_that_it_is_exposed(server: Server) -> None:
    # Served with `bentoml serve --host 127.0.0.1`: the worker finds its socket's address itself.
    assert "beyond this machine" not in server.log_path.read_text(errors="replace")


# -- a full or read-only output directory --------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of `size_kb` mounted at `path`, for as long as the block runs."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with small_filesystem(tmp_path_factory.mktemp("small-disk") / "output", size_kb=512) as path:
        yield path


@pytest.fixture(scope="module")
def small_disk_server(start_server: Any, small_disk: Path, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(settings={"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_OUTPUT_DIR": str(small_disk)})
    started.wait_until("ready", timeout=180)
    return started


def fill(directory: Path, leave_kb: int) -> Path:
    """Fills `directory`'s filesystem up to `leave_kb` free; returns the filler file."""
    filler = directory / "filler.bin"
    usage = os.statvfs(directory)
    free = usage.f_bavail * usage.f_frsize
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave_kb * 1024))
    return filler


def test_a_full_output_directory_answers_507_and_recovers(
    small_disk_server: Server, small_disk: Path, source: Path
) -> None:
    body = {"audio_path": str(source), "duration_s": 2.0, "seed": 1}  # 128 kB of 16-bit mono wav
    filler = fill(small_disk, leave_kb=16)
    try:
        response = httpx.post(f"{small_disk_server.url}/continue", json=body, timeout=120)
        error = assert_json_error(response, 507, "is full")
        assert str(small_disk) in error["error"]
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]  # no partial file
        with MusicGenClient(small_disk_server.url) as client:
            job = client.submit(prompt="full disk", duration_s=2.0, seed=2)
            view = client.wait(job.job_id, timeout_s=120)
        assert view.status == "failed"
        assert view.error is not None and "is full" in view.error
    finally:
        filler.unlink()
    # Space is back: the same request succeeds, with no restart.
    response = httpx.post(f"{small_disk_server.url}/continue", json=body, timeout=120)
    assert response.status_code == 200, response.text


def test_a_read_only_output_directory_answers_503_and_recovers(
    small_disk_server: Server, small_disk: Path, source: Path
) -> None:
    body = {"audio_path": str(source), "duration_s": 0.5, "seed": 1}
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        response = httpx.post(f"{small_disk_server.url}/continue", json=body, timeout=120)
        error = assert_json_error(response, 503, "cannot write")
        assert int(response.headers["retry-after"]) > 0
        assert "MUSICGEN_OUTPUT_DIR" in error["error"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    time.sleep(0.1)
    assert httpx.post(f"{small_disk_server.url}/continue", json=body, timeout=120).status_code == 200
