"""`POST /uploads` through a real server: a stored upload works as `audio_path` and `continue_from`
(even where MUSICGEN_INPUT_ROOTS is narrow), bad uploads get a 4xx naming `file` and leave nothing
behind, an oversized body is refused before it is all read, and uploads expire."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import TINY_TEXT, Server, write_tone

MAX_INPUT_MB = 1


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("uploads")
    return {"uploads": base / "uploads", "inputs": base / "inputs", "files": base / "files"}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str], folders: dict[str, Path]) -> Server:
    folders["inputs"].mkdir()
    started: Server = start_server(
        settings={
            "MUSICGEN_MODEL": TINY_TEXT,
            "MUSICGEN_UPLOAD_DIR": str(folders["uploads"]),
            # Clients' own files may come from one directory only; uploads are readable all the same.
            "MUSICGEN_INPUT_ROOTS": str(folders["inputs"]),
            "MUSICGEN_MAX_INPUT_MB": str(MAX_INPUT_MB),
        }
    )
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def song(folders: dict[str, Path]) -> Path:
    folders["files"].mkdir(exist_ok=True)
    return write_tone(folders["files"] / "song.flac", seconds=3.0, sample_rate=16000, channels=2)


def upload(server: Server, content: bytes | Iterator[bytes], filename: str = "song.flac", **kwargs: Any) -> Any:
    return httpx.post(f"{server.url}/uploads", files={"file": (filename, content)}, timeout=60, **kwargs)


def leftovers(folders: dict[str, Path]) -> list[str]:
    return sorted(p.name for p in folders["uploads"].iterdir()) if folders["uploads"].exists() else []


def test_an_upload_is_stored_and_answers_what_it_holds(server: Server, song: Path, folders: dict[str, Path]) -> None:
    response = upload(server, song.read_bytes())
    assert response.status_code == 201, response.text
    stored = response.json()
    path = Path(stored["audio_path"])
    assert path.parent == folders["uploads"].resolve()
    assert path.suffix == ".flac"
    assert path.read_bytes() == song.read_bytes()
    assert (stored["duration_s"], stored["sample_rate"], stored["channels"]) == (3.0, 16000, 2)
    expires = datetime.fromisoformat(stored["expires_at"])
    assert 86000 < expires.timestamp() - time.time() <= 86400


def test_an_upload_works_as_audio_path_and_continue_from(server: Server, song: Path) -> None:
    path = upload(server, song.read_bytes()).json()["audio_path"]
    continued = httpx.post(f"{server.url}/continue", json={"audio_path": path, "duration_s": 0.5}, timeout=120)
    assert continued.status_code == 200, continued.text
    job = httpx.post(f"{server.url}/generate", json={"continue_from": path, "duration_s": 0.5}, timeout=60)
    assert job.status_code == 202, job.text
    # A file outside the input roots stays refused: the upload directory is the only addition.
    refused = httpx.post(f"{server.url}/continue", json={"audio_path": str(song), "duration_s": 0.5}, timeout=60)
    assert refused.status_code == 403


def test_the_extension_follows_the_content_not_the_name(server: Server, song: Path) -> None:
    response = upload(server, song.read_bytes(), filename="recording.mp3")
    assert response.status_code == 201, response.text
    assert response.json()["audio_path"].endswith(".flac")


BAD_UPLOADS = [
    (b"", 422, "is empty"),
    (b"these are not audio samples\n" * 40, 422, "'notes.wav' is not a readable audio file"),
    ("truncated", 422, "truncated or corrupt"),
    (b"\0" * (MAX_INPUT_MB * 1024 * 1024 + 200 * 1024), 413, "larger than the limit of 1 MB"),
]


@pytest.mark.parametrize(
    ("content", "status", "message"), BAD_UPLOADS, ids=["empty", "not-audio", "truncated", "large"]
)
def test_a_bad_upload_is_refused_naming_the_file_and_leaves_nothing(
    server: Server, song: Path, folders: dict[str, Path], content: Any, status: int, message: str
) -> None:
    if content == "truncated":
        content = song.read_bytes()[:300]
    before = leftovers(folders)
    response = upload(server, content, filename="notes.wav")
    assert response.status_code == status, response.text
    assert response.json()["field"] == "file"
    assert message in response.json()["error"]
    assert str(folders["uploads"]) not in response.json()["error"]  # no server path in the answer
    assert leftovers(folders) == before


def test_a_body_that_grows_past_the_limit_is_cut_off(server: Server, folders: dict[str, Path]) -> None:
    # No Content-Length (chunked): the server counts as the body arrives and stops reading at the limit.
    boundary = "musicgen-test-boundary"
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'.encode()
        for _ in range(40):  # 40 MB if it were all sent
            sent += 1
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    before = leftovers(folders)
    try:
        response = httpx.post(
            f"{server.url}/uploads",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
    except httpx.HTTPError:  # the server may close the connection as soon as it has answered
        response = None
    if response is not None:
        assert response.status_code == 413, response.text
    assert sent < 40
    assert leftovers(folders) == before


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"file": "song.wav"}}, 415, "multipart/form-data"),
        ({"files": {"audio": ("song.wav", b"RIFF")}}, 400, "the multipart field 'file'"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "file"),
    ],
    ids=["json-body", "other-field", "malformed-multipart"],
)
def test_what_is_not_a_file_upload_is_refused(
    server: Server, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"{server.url}/uploads", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.text
    assert server.health()["status"] == "ready"  # type: ignore[index]


def test_uploads_expire(start_server: Any, tiny_models: dict[str, str], song: Path, tmp_path: Path) -> None:
    short: Server = start_server(
        settings={"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_UPLOAD_DIR": str(tmp_path), "MUSICGEN_UPLOAD_TTL_S": "2"}
    )
    short.wait_until("ready", timeout=180)
    path = Path(upload(short, song.read_bytes()).json()["audio_path"])
    assert path.exists()
    deadline = time.monotonic() + 30
    while path.exists():
        assert time.monotonic() < deadline, "the upload was not swept"
        time.sleep(0.2)
    gone = httpx.post(f"{short.url}/continue", json={"audio_path": str(path), "duration_s": 0.5}, timeout=60)
    assert gone.status_code == 404


def test_a_sweep_deletes_expired_uploads_and_nothing_else(tmp_path: Path, song: Path) -> None:
    from musicgen_bento.audio.paths import InputLimits
    from musicgen_bento.audio.uploads import UploadStore

    store = UploadStore(tmp_path / "uploads", InputLimits(), ttl_s=60)
    with song.open("rb") as source:
        old = store.store(source, "old.flac").path
    with song.open("rb") as source:
        fresh = store.store(source, "fresh.flac").path
    unrelated = tmp_path / "uploads" / "notes.txt"
    unrelated.write_text("an operator's file")
    an_hour_ago = time.time() - 3600
    for path in (old, unrelated):
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert store.sweep() == 1
    assert not old.exists()
    assert fresh.exists() and unrelated.exists()


def test_an_upload_works_as_melody_path(
    start_server: Any, tiny_models: dict[str, str], song: Path, tmp_path: Path
) -> None:
    melody: Server = start_server(
        settings={"MUSICGEN_MODEL": tiny_models["melody"], "MUSICGEN_UPLOAD_DIR": str(tmp_path)}
    )
    melody.wait_until("ready", timeout=180)
    assert melody.health()["melody"] is True  # type: ignore[index]
    path = upload(melody, song.read_bytes()).json()["audio_path"]
    body = {"prompt": "a march", "melody_path": path, "duration_s": 0.5, "seed": 1}
    job = httpx.post(f"{melody.url}/generate", json=body, timeout=60)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while (view := httpx.get(f"{melody.url}/jobs/{job.json()['job_id']}", timeout=30).json())["status"] != "succeeded":
        assert view["status"] in {"queued", "running"} and time.monotonic() < deadline, view
        time.sleep(0.2)
