"""A stereo checkpoint end to end, through the real server: the tiny stereo model (the real
architecture of facebook/musicgen-stereo-*, two audio channels with interleaved codebooks, at tiny
width) continues stereo and mono sources in every output format, keeps both channels of the
source with include_source, generates past its window, and runs jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from .conftest import TINY_STEREO, Server, write_tone

SAMPLE_RATE = 32000


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(
        settings={
            "MUSICGEN_MODEL": TINY_STEREO,
            # A short window: 6 s of music after a 2 s prompt takes several windows.
            "MUSICGEN_WINDOW_S": "4",
            "MUSICGEN_EXTEND_STRIDE_S": "2",
        }
    )
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def stereo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("stereo") / "source.wav", seconds=3.0, sample_rate=44100, channels=2)


def test_health_reports_the_stereo_model(server: Server) -> None:
    health = server.health()
    assert health is not None and str(health["model"]).startswith(TINY_STEREO)


@pytest.mark.parametrize("output_format", ["wav", "flac", "ogg", "mp3"])
def test_a_stereo_continuation_has_two_channels_and_its_exact_length(
    server: Server, stereo_source: Path, output_format: str
) -> None:
    body = {"audio_path": str(stereo_source), "duration_s": 1.5, "seed": 3, "output_format": output_format}
    response = httpx.post(f"{server.url}/continue", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["channels"], answer["sample_rate"]) == (2, SAMPLE_RATE)
    info = sf.info(answer["audio_path"])
    assert info.channels == 2
    # mp3 frames pad the end a little; the other formats hold the exact length.
    tolerance = 0.08 if output_format == "mp3" else 1e-9
    assert info.frames / info.samplerate == pytest.approx(1.5, abs=tolerance)


def test_a_mono_source_is_continued_in_stereo(server: Server, tmp_path: Path) -> None:
    mono = write_tone(tmp_path / "mono.flac", seconds=2.0, sample_rate=22050, channels=1)
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(mono), "duration_s": 1.0}, timeout=120)
    assert response.status_code == 200, response.text
    assert sf.info(response.json()["audio_path"]).channels == 2


def test_include_source_keeps_both_channels_of_the_source(server: Server, tmp_path: Path) -> None:
    source = write_tone(tmp_path / "source-32k.wav", seconds=2.0, sample_rate=SAMPLE_RATE, channels=2)
    body = {"audio_path": str(source), "duration_s": 1.0, "seed": 8, "include_source": True}
    response = httpx.post(f"{server.url}/continue", json=body, timeout=120)
    assert response.status_code == 200, response.text
    joined, _ = sf.read(response.json()["audio_path"], dtype="float32", always_2d=True)
    original, _ = sf.read(str(source), dtype="float32", always_2d=True)
    assert joined.shape == (3 * SAMPLE_RATE, 2)
    np.testing.assert_allclose(joined[: 2 * SAMPLE_RATE], original, atol=1e-3)
    assert not np.allclose(original[:, 0], original[:, 1])  # two different channels survived as two


def test_stereo_music_past_the_window_is_generated_in_windows(server: Server, stereo_source: Path) -> None:
    body = {"audio_path": str(stereo_source), "duration_s": 6.0, "prompt_duration_s": 2.0, "seed": 1}
    response = httpx.post(f"{server.url}/continue", json=body, timeout=300)
    assert response.status_code == 200, response.text
    info = sf.info(response.json()["audio_path"])
    assert (info.channels, info.frames) == (2, 6 * SAMPLE_RATE)


def run_job(server: Server, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Submits a job and waits for its end; its status URL and its final view."""
    accepted = httpx.post(f"{server.url}/generate", json=body, timeout=30)
    assert accepted.status_code == 202, accepted.text
    status_url = f"{server.url}{accepted.json()['status_url']}"
    deadline = time.monotonic() + 120
    while (view := httpx.get(status_url, timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert view["status"] == "succeeded", view
    return status_url, view


def test_a_stereo_job_runs(server: Server, stereo_source: Path) -> None:
    body = {"prompt": "strings", "continue_from": str(stereo_source), "duration_s": 1.0, "output_format": "flac"}
    _, view = run_job(server, body)
    assert view["result"]["channels"] == 2
    audio = httpx.get(f"{server.url}{view['result']['audio_url']}", timeout=30)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/flac"


def test_stereo_takes_are_each_a_stereo_file_served_by_number(server: Server, stereo_source: Path) -> None:
    body = {"continue_from": str(stereo_source), "duration_s": 1.0, "seed": 70, "takes": 2}
    status_url, view = run_job(server, body)
    takes = view["result"]["takes"]
    assert [take["seed"] for take in takes] == [70, 71]
    for take in takes:
        audio = httpx.get(f"{server.url}{take['audio_url']}", timeout=30)
        assert audio.status_code == 200
        assert sf.info(take["audio_path"]).channels == 2
        assert audio.content == Path(take["audio_path"]).read_bytes()
    for bad, status in (("2", 404), ("x", 400), ("-1", 400)):
        answer = httpx.get(f"{status_url}/audio", params={"take": bad}, timeout=30)
        assert answer.status_code == status, answer.text
        assert answer.json()["field"] == "take"
