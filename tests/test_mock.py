"""Mock mode (CF_MUSICGEN_MOCK=1): no model, ready at once, output of the real shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from .conftest import Server, write_tone

SAMPLE_RATE = 32000


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(start_server: Any, allowed: Path) -> Server:
    server: Server = start_server(settings={"CF_MUSICGEN_MOCK": "1", "MUSICGEN_INPUT_ROOTS": str(allowed)})
    server.wait_until("ready", timeout=120)
    return server


def test_health_is_ready_with_model_mock(server: Server) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ready"
    assert body["model"] == "mock"


def test_output_is_the_source_tail_padded_with_silence(server: Server, allowed: Path) -> None:
    source = write_tone(allowed / "tone.wav", seconds=3.0, sample_rate=32000, channels=1)
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(source), "duration_s": 5.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "mock"
    assert body["duration_s"] == pytest.approx(5.0)
    data, rate = sf.read(body["audio_path"], dtype="float32", always_2d=True)
    original, _ = sf.read(str(source), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE
    assert data.shape == (5 * SAMPLE_RATE, 1)
    np.testing.assert_allclose(data[: 3 * SAMPLE_RATE], original, atol=1e-3)
    assert np.abs(data[3 * SAMPLE_RATE :]).max() == 0


def test_output_is_at_the_model_rate_and_channels_and_cut_to_length(server: Server, allowed: Path) -> None:
    source = write_tone(allowed / "stereo.flac", seconds=12.0, sample_rate=48000, channels=2)
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(source), "duration_s": 4.0})
    assert response.status_code == 200, response.text
    info = sf.info(response.json()["audio_path"])
    assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, 4 * SAMPLE_RATE)


def test_paths_outside_the_input_roots_are_forbidden(server: Server, allowed: Path, tmp_path: Path) -> None:
    outside = write_tone(tmp_path / "outside.wav")
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(outside)})
    assert response.status_code == 403
    assert response.json()["field"] == "audio_path"
    assert "outside the allowed input directories" in response.json()["error"]


def test_symlinks_out_of_the_input_roots_are_forbidden(server: Server, allowed: Path, tmp_path: Path) -> None:
    outside = write_tone(tmp_path / "secret.wav")
    link = allowed / "innocent.wav"
    link.symlink_to(outside)
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(link)})
    assert response.status_code == 403
