"""Files that drop into a session, through the real server: `sample_rate`, `sample_format` and
`match_source` on `/continue`, the stream and jobs, read back with soundfile (rate, channels,
subtype, length), the source part of include_source as a plain resampling of the source, and
every refusal naming its field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_bento.api.client import MusicGenClient
from musicgen_bento.audio.resample import OutputForm, StreamingResampler, resample

from .conftest import TINY_TEXT, Server, write_tone

MODEL_RATE = 32000


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {
        "stereo-44k": write_tone(folder / "session.wav", seconds=3.0, sample_rate=44100, channels=2),
        "mono-48k": write_tone(folder / "take.flac", seconds=3.0, sample_rate=48000, channels=1),
        "96k": write_tone(folder / "hires.wav", seconds=2.0, sample_rate=96000, channels=1),
    }


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(settings={"MUSICGEN_MODEL": TINY_TEXT})
    started.wait_until("ready", timeout=180)
    return started


def continue_(server: Server, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/continue", json=body, timeout=300)


FORMS = [
    ("wav", "pcm16", 44100, "PCM_16"),
    ("wav", "pcm24", 48000, "PCM_24"),
    ("wav", "float32", 96000, "FLOAT"),
    ("wav", "pcm16", 22050, "PCM_16"),
    ("flac", "pcm16", 88200, "PCM_16"),
    ("flac", "pcm24", 44100, "PCM_24"),
    ("flac", "pcm24", 16000, "PCM_24"),
    ("ogg", "pcm16", 48000, "VORBIS"),
    ("mp3", "pcm16", 44100, "MPEG_LAYER_III"),
]


@pytest.mark.parametrize(("output_format", "sample_format", "rate", "subtype"), FORMS)
def test_the_file_has_the_asked_rate_depth_and_length(
    server: Server, sources: dict[str, Path], output_format: str, sample_format: str, rate: int, subtype: str
) -> None:
    body = {"audio_path": str(sources["mono-48k"]), "duration_s": 1.5, "seed": 3}
    body.update(output_format=output_format, sample_format=sample_format, sample_rate=rate)
    response = continue_(server, **body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = sf.info(answer["audio_path"])
    assert (info.samplerate, info.channels, info.subtype) == (rate, 1, subtype)
    assert answer["sample_rate"] == rate and answer["channels"] == 1
    if output_format == "mp3":  # mp3 frames pad a few milliseconds
        assert info.frames / rate == pytest.approx(1.5, abs=0.06)
    else:
        assert info.frames == round(1.5 * rate)
    assert answer["provenance"]["parameters"]["sample_rate"] == rate
    assert answer["provenance"]["parameters"]["sample_format"] == sample_format


def test_the_new_music_is_the_models_output_resampled(server: Server, sources: dict[str, Path]) -> None:
    body = {"audio_path": str(sources["mono-48k"]), "duration_s": 1.0, "seed": 4, "sample_format": "float32"}
    at_model_rate, _ = sf.read(continue_(server, **body).json()["audio_path"], dtype="float32", always_2d=True)
    response = continue_(server, **body, sample_rate=48000)
    at_48k, _ = sf.read(response.json()["audio_path"], dtype="float32", always_2d=True)
    expected = resample(torch.from_numpy(at_model_rate.T.copy()), MODEL_RATE, 48000).T.numpy()
    np.testing.assert_allclose(at_48k, expected[:48000], atol=1e-6)


def test_match_source_takes_the_sources_rate_and_channels_and_keeps_it_bit_for_bit(
    server: Server, sources: dict[str, Path]
) -> None:
    source = sources["stereo-44k"]
    body = {"audio_path": str(source), "duration_s": 1.0, "seed": 5, "match_source": True, "include_source": True}
    response = continue_(server, **body)
    assert response.status_code == 200, response.text
    data, rate = sf.read(response.json()["audio_path"], dtype="int16", always_2d=True)
    original, _ = sf.read(str(source), dtype="int16", always_2d=True)
    assert rate == 44100 and data.shape == (original.shape[0] + 44100, 2)
    assert np.array_equal(data[: original.shape[0]], original)  # the source part: the source itself
    assert np.array_equal(data[original.shape[0] :, 0], data[original.shape[0] :, 1])  # mono model, both sides


def test_include_source_at_another_rate_is_a_plain_resampling_of_the_source(
    server: Server, sources: dict[str, Path]
) -> None:
    source = sources["mono-48k"]
    body = {"audio_path": str(source), "duration_s": 1.0, "seed": 6, "include_source": True}
    response = continue_(server, **body, sample_rate=44100, sample_format="float32")
    data, rate = sf.read(response.json()["audio_path"], dtype="float32", always_2d=True)
    original, _ = sf.read(str(source), dtype="float32", always_2d=True)
    plain = OutputForm(44100, 1, "float32").conform(torch.from_numpy(original.T.copy()), 48000).T.numpy()
    assert rate == 44100 and data.shape == (plain.shape[0] + 44100, 1)
    assert np.array_equal(data[: plain.shape[0]], plain)


def test_the_stream_announces_its_rate_and_depth_and_holds_the_written_audio(
    server: Server, sources: dict[str, Path]
) -> None:
    body = {"audio_path": str(sources["mono-48k"]), "duration_s": 1.5, "seed": 7}
    body.update(sample_rate=48000, sample_format="pcm24")
    response = httpx.post(f"{server.url}/continue/stream", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert len(response.content) == int(response.headers["content-length"])
    streamed, rate = sf.read(io.BytesIO(response.content), dtype="float32", always_2d=True)
    info = sf.info(io.BytesIO(response.content))
    assert (rate, info.subtype, streamed.shape) == (48000, "PCM_24", (72000, 1))
    written, _ = sf.read(response.headers["x-audio-path"], dtype="float32", always_2d=True)
    assert np.array_equal(streamed, written)
    whole, _ = sf.read(continue_(server, **body).json()["audio_path"], dtype="float32", always_2d=True)
    # The codec decodes a stream in chunks (within float rounding of one pass): so are they here.
    assert np.abs(streamed - whole).max() < 1e-3


def test_a_streaming_resampler_gives_the_whole_signals_resampling() -> None:
    signal = torch.randn(2, 50_000, generator=torch.Generator().manual_seed(0))
    for to_rate in (16000, 22050, 44100, 48000, 96000):
        resampler = StreamingResampler(MODEL_RATE, to_rate)
        chunks, start = [], 0
        for size in (1, 640, 12_345, 3_000, 20_000):
            chunks.append(resampler.push(signal[:, start : start + size]))
            start += size
        chunks += [resampler.push(signal[:, start:]), resampler.finish()]
        assert torch.equal(torch.cat(chunks, dim=1), resample(signal, MODEL_RATE, to_rate)), to_rate


def test_a_job_writes_the_asked_form(server: Server, sources: dict[str, Path], tmp_path: Path) -> None:
    with MusicGenClient(server.url, timeout_s=120) as client:
        job = client.submit(
            continue_from=str(sources["stereo-44k"]),
            duration_s=1.0,
            output_format="flac",
            sample_format="pcm24",
            match_source=True,
        )
        assert client.wait(job.job_id, timeout_s=120).status == "succeeded"
        saved = client.download(job.job_id, tmp_path / "take.flac")
    info = sf.info(str(saved))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, "PCM_24", 44100)


REFUSALS = [
    ({"output_format": "flac", "sample_format": "float32"}, "sample_format", "flac files hold pcm16 or pcm24"),
    ({"output_format": "ogg", "sample_format": "pcm24"}, "sample_format", "ogg files hold none to choose"),
    ({"output_format": "mp3", "sample_rate": 96000}, "sample_rate", "up to 48000 Hz"),
    ({"sample_rate": 44000}, "sample_rate", "44100"),
    ({"sample_format": "pcm32"}, "sample_format", "pcm24"),
    ({"sample_rate": 48000, "match_source": True}, "sample_rate", "give one or the other"),
    ({"match_source": "yes"}, "match_source", "valid boolean"),
]


@pytest.mark.parametrize(("extra", "field", "message"), REFUSALS)
def test_a_form_the_file_cannot_have_is_a_400_naming_the_field(
    server: Server, sources: dict[str, Path], extra: dict[str, Any], field: str, message: str
) -> None:
    for route in ("/continue", "/continue/stream"):
        body = {"audio_path": str(sources["mono-48k"]), "duration_s": 1.0, **extra}
        response = httpx.post(f"{server.url}{route}", json=body, timeout=60)
        assert response.status_code == 400, (route, response.text)
        assert response.json()["field"] == field and message in response.json()["error"], response.text


def test_match_source_refuses_what_the_source_makes_impossible(server: Server, sources: dict[str, Path]) -> None:
    body = {"audio_path": str(sources["96k"]), "duration_s": 1.0, "output_format": "mp3", "match_source": True}
    response = continue_(server, **body)
    assert response.status_code == 400 and response.json()["field"] == "match_source", response.text
    job = httpx.post(f"{server.url}/generate", json={"prompt": "x", "match_source": True}, timeout=60)
    assert job.status_code == 400 and job.json()["field"] == "match_source", job.text
    refused_job = httpx.post(
        f"{server.url}/generate",
        json={"continue_from": str(sources["96k"]), "output_format": "mp3", "match_source": True},
        timeout=60,
    )
    assert refused_job.status_code == 400 and refused_job.json()["field"] == "match_source", refused_job.text
