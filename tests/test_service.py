"""The real service under `bentoml serve` with the tiny text model: health, /continue over HTTP
and through `bentoml.SyncHTTPClient`, and every kind of bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_bento.audio.loudness import integrated_loudness

from .conftest import TINY_TEXT, Server, write_tone

SAMPLE_RATE = 32000


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    files = {
        "wav": write_tone(folder / "song.wav", seconds=12.0, sample_rate=44100, channels=2),
        "mp3": write_tone(folder / "song.mp3", seconds=12.0, sample_rate=22050, channels=1),
        "flac": write_tone(folder / "song.flac", seconds=12.0, sample_rate=48000, channels=2),
        "ogg": write_tone(folder / "song.ogg", seconds=12.0, sample_rate=16000, channels=1),
        "short": write_tone(folder / "short.wav", seconds=3.0, sample_rate=32000, channels=1),
        "large": write_tone(folder / "large.wav", seconds=40.0, sample_rate=44100, channels=1, subtype="PCM_16"),
        "long": write_tone(folder / "long.wav", seconds=70.0, sample_rate=8000, channels=1, subtype="PCM_16"),
    }
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.txt.wav").write_text("these are not audio samples\n" * 50)
    truncated = write_tone(folder / "truncated.flac", seconds=4.0)
    truncated.write_bytes(truncated.read_bytes()[:400])
    (folder / "loop-a.wav").symlink_to(folder / "loop-b.wav")
    (folder / "loop-b.wav").symlink_to(folder / "loop-a.wav")
    tiny = write_tone(folder / "tiny.wav", seconds=0.01, sample_rate=32000, channels=1)
    files.update(
        empty=folder / "empty.wav",
        text=folder / "notes.txt.wav",
        truncated=truncated,
        folder=folder,
        loop=folder / "loop-a.wav",
        tiny=tiny,
    )
    return files


@pytest.fixture(scope="module")
def startup(start_server: Any, tiny_models: dict[str, str], sources: dict[str, Path]) -> dict[str, Any]:
    """Starts the server and records what it said while its model was loading."""
    server: Server = start_server(
        settings={
            "MUSICGEN_MODEL": TINY_TEXT,
            # A long warm-up keeps the server in `loading` long enough to be observed.
            "MUSICGEN_WARMUP_S": "20",
            "MUSICGEN_MAX_DURATION_S": "40",
            "MUSICGEN_MAX_INPUT_MB": "3",
            "MUSICGEN_MAX_INPUT_S": "60",
        }
    )
    statuses: list[str] = []
    early_continue: httpx.Response | None = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = server.health()
        if body is None:
            assert server.process.poll() is None, server.log()
            time.sleep(0.1)
            continue
        statuses.append(str(body["status"]))
        if body["status"] == "loading" and early_continue is None:
            early_continue = httpx.post(f"{server.url}/continue", json={"audio_path": str(sources["wav"])}, timeout=30)
        if body["status"] != "loading":
            break
        time.sleep(0.1)
    return {"server": server, "statuses": statuses, "early_continue": early_continue}


@pytest.fixture(scope="module")
def server(startup: dict[str, Any]) -> Server:
    return startup["server"]  # type: ignore[no-any-return]


def continue_(server: Server, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/continue", json=body, timeout=300)


def read_output(response: httpx.Response) -> tuple[np.ndarray, int]:
    data, rate = sf.read(response.json()["audio_path"], dtype="float32", always_2d=True)
    return data, rate


def test_health_reports_loading_then_ready(startup: dict[str, Any]) -> None:
    statuses = startup["statuses"]
    assert statuses[0] == "loading"
    assert statuses[-1] == "ready"
    assert set(statuses) == {"loading", "ready"}


def test_continue_while_loading_answers_503_with_retry_after(startup: dict[str, Any]) -> None:
    response = startup["early_continue"]
    assert response is not None
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "loading" in response.json()["error"]


def test_health_describes_the_model_and_device(server: Server) -> None:
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["model"] == TINY_TEXT
    assert body["gpu_id"] == 0
    assert body["device"] == "cpu"
    assert "random weights" in body["licence"]
    # `auto` measures: at the tiny decoder's width bfloat16 only adds overhead, so it stays float32,
    # and says why.
    assert body["precision"]["dtype"] == "float32"
    assert body["precision"]["reason"].startswith("auto: ")


def test_sync_http_client_health_matches_get(server: Server) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        body = client.health()
    assert body["status"] == "ready"
    assert body["model"] == TINY_TEXT


@pytest.mark.parametrize("source", ["wav", "mp3", "flac", "ogg"])
def test_continue_writes_exactly_the_new_music(server: Server, sources: dict[str, Path], source: str) -> None:
    response = continue_(server, audio_path=str(sources[source]), prompt="calm strings", duration_s=2.5, seed=1)
    assert response.status_code == 200, response.text
    body = response.json()
    path = Path(body["audio_path"])
    assert path.is_absolute() and path.suffix == ".wav" and path.is_file()
    data, rate = read_output(response)
    assert rate == body["sample_rate"] == SAMPLE_RATE
    assert data.shape == (int(2.5 * SAMPLE_RATE), 1)
    assert body["channels"] == 1
    assert body["duration_s"] == pytest.approx(2.5)
    assert body["prompt_duration_s"] == pytest.approx(10.0)
    assert body["seed"] == 1
    assert body["model"].startswith(f"{TINY_TEXT}:")
    assert body["elapsed_s"] > 0


@pytest.mark.parametrize(
    ("output_format", "tolerance_s"),
    [("wav", 0.0), ("flac", 0.0), ("ogg", 0.0), ("mp3", 0.06)],
    ids=["wav", "flac", "ogg", "mp3-frames-pad"],
)
def test_every_output_format_is_written(
    server: Server, sources: dict[str, Path], output_format: str, tolerance_s: float
) -> None:
    response = continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, seed=2, output_format=output_format)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["audio_path"].endswith(f".{output_format}")
    info = sf.info(body["audio_path"])
    assert info.samplerate == SAMPLE_RATE
    assert info.frames / info.samplerate == pytest.approx(1.0, abs=tolerance_s + 1e-9)
    assert body["duration_s"] == pytest.approx(info.frames / info.samplerate)


def test_a_short_source_is_used_whole_and_reported(server: Server, sources: dict[str, Path]) -> None:
    response = continue_(server, audio_path=str(sources["short"]), duration_s=1.0, prompt_duration_s=10.0)
    assert response.status_code == 200, response.text
    assert response.json()["prompt_duration_s"] == pytest.approx(3.0)


def test_prompt_duration_takes_the_end_of_the_source(server: Server, sources: dict[str, Path]) -> None:
    response = continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, prompt_duration_s=4.0)
    assert response.status_code == 200, response.text
    assert response.json()["prompt_duration_s"] == pytest.approx(4.0)


def test_include_source_puts_the_source_before_the_new_music(server: Server, sources: dict[str, Path]) -> None:
    new_only = continue_(server, audio_path=str(sources["short"]), duration_s=1.5, seed=9)
    with_source = continue_(server, audio_path=str(sources["short"]), duration_s=1.5, seed=9, include_source=True)
    assert with_source.status_code == 200, with_source.text
    joined, _ = read_output(with_source)
    new, _ = read_output(new_only)
    source, _ = sf.read(str(sources["short"]), dtype="float32", always_2d=True)
    assert joined.shape == (3 * SAMPLE_RATE + int(1.5 * SAMPLE_RATE), 1)
    assert with_source.json()["duration_s"] == pytest.approx(4.5)
    np.testing.assert_allclose(joined[: 3 * SAMPLE_RATE], source, atol=1e-3)
    np.testing.assert_allclose(joined[3 * SAMPLE_RATE :], new, atol=1e-3)


def test_prompt_start_continues_from_inside_the_source(server: Server, sources: dict[str, Path]) -> None:
    # "Continue from the chorus": the prompt is 1 s starting at 1 s, so the new music follows the
    # source's first 2 s; with include_source the output is those 2 s, then the new music.
    body = {"audio_path": str(sources["short"]), "duration_s": 1.5, "seed": 4, "prompt_duration_s": 1.0}
    response = continue_(server, **body, prompt_start_s=1.0, include_source=True)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["prompt_start_s"], answer["prompt_duration_s"]) == (pytest.approx(1.0), pytest.approx(1.0))
    joined, _ = read_output(response)
    source, _ = sf.read(str(sources["short"]), dtype="float32", always_2d=True)
    assert joined.shape == (2 * SAMPLE_RATE + int(1.5 * SAMPLE_RATE), 1)
    np.testing.assert_allclose(joined[: 2 * SAMPLE_RATE], source[: 2 * SAMPLE_RATE], atol=1e-3)
    from_the_end = continue_(server, **body).json()
    assert from_the_end["prompt_start_s"] == pytest.approx(2.0)


@pytest.mark.parametrize("target", [-14.0, -20.0])
def test_loudness_normalization_reaches_its_target_and_leaves_the_source_alone(
    server: Server, sources: dict[str, Path], target: float
) -> None:
    body = {"audio_path": str(sources["short"]), "duration_s": 2.0, "seed": 5, "include_source": True}
    response = continue_(server, **body, normalization="loudness", loudness_lufs=target)
    assert response.status_code == 200, response.text
    joined, _ = read_output(response)
    source, _ = sf.read(str(sources["short"]), dtype="float32", always_2d=True)
    np.testing.assert_allclose(joined[: 3 * SAMPLE_RATE], source, atol=1e-3)  # the source part is not altered
    new = torch.from_numpy(joined[3 * SAMPLE_RATE :].T.copy())
    assert integrated_loudness(new, SAMPLE_RATE) == pytest.approx(target, abs=0.5)
    assert float(new.abs().max()) <= 1.0  # never above 0 dBFS


@pytest.mark.parametrize("output_format", ["wav", "flac"])
def test_the_file_says_where_it_came_from(server: Server, sources: dict[str, Path], output_format: str) -> None:
    body = {"audio_path": str(sources["short"]), "duration_s": 1.0, "seed": 21, "prompt": "café strings"}
    response = continue_(server, **body, output_format=output_format)
    assert response.status_code == 200, response.text
    provenance = response.json()["provenance"]
    assert (provenance["seed"], provenance["prompt"], provenance["model"]) == (
        21,
        "café strings",
        response.json()["model"],
    )
    assert provenance["licence"] and provenance["software"].startswith("musicgen-bento ")
    assert provenance["parameters"]["duration_s"] == 1.0
    with sf.SoundFile(response.json()["audio_path"]) as written:
        metadata = written.copy_metadata()
    assert metadata["artist"] == provenance["model"]
    assert metadata["title"] == "MusicGen: café strings"
    comment = json.loads(metadata["comment"])
    assert (comment["seed"], comment["prompt"], comment["licence"]) == (21, "café strings", provenance["licence"])


def test_takes_decode_together_and_each_is_what_its_seed_gives_alone(server: Server, sources: dict[str, Path]) -> None:
    body = {"audio_path": str(sources["short"]), "duration_s": 1.0}
    steps_before, shared_before = _engine_steps(server), _engine_health(server)["prefills_shared"]
    response = continue_(server, **body, seed=30, takes=3)
    assert response.status_code == 200, response.text
    # One take alone takes 53 steps (50 frames and the delay pattern's 3). Three one after another
    # would take 159; decoded together they share their steps (each joins the batch as soon as its
    # text and prompt are encoded, so they need a few more than one take's), and the takes after
    # the first copy its prefill.
    assert _engine_steps(server) - steps_before < 2 * 53
    assert _engine_health(server)["prefills_shared"] - shared_before == 2
    answer = response.json()
    takes = answer["takes"]
    assert [take["seed"] for take in takes] == [30, 31, 32]
    assert (answer["audio_path"], answer["seed"]) == (takes[0]["audio_path"], 30)
    assert len({take["audio_path"] for take in takes}) == 3
    for take in takes:
        alone, _ = read_output(continue_(server, **body, seed=take["seed"]))
        together, _ = sf.read(take["audio_path"], dtype="float32", always_2d=True)
        np.testing.assert_array_equal(together, alone)


def test_same_seed_gives_the_same_audio_and_another_seed_other_audio(server: Server, sources: dict[str, Path]) -> None:
    first, _ = read_output(continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, seed=42))
    again, _ = read_output(continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, seed=42))
    other, _ = read_output(continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, seed=43))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_an_empty_prompt_is_conditioned_on_no_text(server: Server, sources: dict[str, Path]) -> None:
    # Guidance pushes the conditional row's logits away from the unconditional row's. With no text
    # the two rows are one conditioning, so guidance cannot change a thing: the audio is what the
    # unconditional row alone gives. A space is text (as in the reference), and guidance moves it.
    def audio(prompt: str, cfg_coef: float) -> np.ndarray:
        body = {"audio_path": str(sources["wav"]), "duration_s": 1.0, "seed": 8, "prompt": prompt, "cfg_coef": cfg_coef}
        response = continue_(server, **body)
        assert response.status_code == 200, response.text
        return read_output(response)[0]

    empty = audio("", 3.0)
    assert np.array_equal(empty, audio("", 1.0))
    assert np.array_equal(empty, audio("", 7.0))
    spaced = audio(" ", 3.0)
    assert not np.array_equal(spaced, audio(" ", 1.0))
    assert not np.array_equal(empty, spaced)


def test_a_random_seed_is_returned_and_replays(server: Server, sources: dict[str, Path]) -> None:
    first = continue_(server, audio_path=str(sources["wav"]), duration_s=1.0)
    seed = first.json()["seed"]
    replay = continue_(server, audio_path=str(sources["wav"]), duration_s=1.0, seed=seed)
    assert np.array_equal(read_output(first)[0], read_output(replay)[0])


def test_generation_past_the_30_second_window_has_the_exact_length(server: Server, sources: dict[str, Path]) -> None:
    # 10 s of prompt and 35 s of new music: three overlapping windows.
    response = continue_(server, audio_path=str(sources["wav"]), duration_s=35.0, seed=4)
    assert response.status_code == 200, response.text
    data, _ = read_output(response)
    assert data.shape == (35 * SAMPLE_RATE, 1)
    assert response.json()["duration_s"] == pytest.approx(35.0)


def test_sync_http_client_continues(server: Server, sources: dict[str, Path]) -> None:
    with bentoml.SyncHTTPClient(server.url, timeout=300) as client:
        body = client.continue_(audio_path=str(sources["flac"]), prompt="bass", duration_s=1.0, seed=5)
    assert body["duration_s"] == pytest.approx(1.0)
    assert sf.info(body["audio_path"]).frames == SAMPLE_RATE


def test_sync_http_client_sees_the_error_message(server: Server, sources: dict[str, Path]) -> None:
    with bentoml.SyncHTTPClient(server.url) as client, pytest.raises(Exception, match="no file at"):
        client.continue_(audio_path=str(sources["folder"] / "missing.wav"))


BAD_INPUTS = [
    ({"audio_path": "{folder}/missing.wav"}, 404, "audio_path", "no file at"),
    ({"audio_path": "{folder}"}, 422, "audio_path", "is a directory"),
    ({"audio_path": "/dev/null"}, 422, "audio_path", "not a regular file"),
    ({"audio_path": "{empty}"}, 422, "audio_path", "is empty"),
    ({"audio_path": "{text}"}, 422, "audio_path", "not a readable audio file"),
    ({"audio_path": "{truncated}"}, 422, "audio_path", "truncated or corrupt"),
    ({"audio_path": "song.wav"}, 400, "audio_path", "absolute path"),
    ({"audio_path": "{large}"}, 413, "audio_path", "the limit is 3 MB"),
    ({"audio_path": "{long}"}, 413, "audio_path", "the limit is 60 s"),
    ({}, 400, "audio_path", "is required"),
    ({"audio_path": 12}, 400, "audio_path", "valid string"),
    ({"duration_s": "long"}, 400, "duration_s", "valid number"),
    ({"duration_s": -1}, 400, "duration_s", "greater than or equal to 0.02"),
    ({"duration_s": 41}, 400, "duration_s", "at most 40 seconds"),
    ({"prompt_duration_s": 0}, 400, "prompt_duration_s", "greater than or equal to 0.02"),
    ({"prompt_duration_s": 29.5}, 400, "prompt_duration_s", "at most 29 seconds"),
    ({"cfg_coef": "strong"}, 400, "cfg_coef", "valid number"),
    ({"cfg_coef": 31}, 400, "cfg_coef", "less than or equal to 30"),
    ({"temperature": -0.5}, 400, "temperature", "greater than or equal to 0"),
    ({"top_k": -1}, 400, "top_k", "greater than or equal to 0"),
    ({"top_k": 2.5}, 400, "top_k", "valid integer"),
    ({"top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    ({"seed": -3}, 400, "seed", "greater than or equal to 0"),
    ({"output_format": "aac"}, 400, "output_format", "'wav', 'flac', 'ogg' or 'mp3'"),
    ({"include_source": "perhaps"}, 400, "include_source", "valid boolean"),
    ({"duraton_s": 5}, 400, "duraton_s", "not a field of this request"),
    ({"audio_path": "{loop}"}, 422, "audio_path", "loop of symbolic links"),
    ({"audio_path": "{folder}/a.wav\u0000"}, 400, "audio_path", "NUL character"),
    ({"audio_path": "{tiny}"}, 422, "audio_path", "at least one codec frame"),
    ({"duration_s": 1e-9, "output_format": "flac"}, 400, "duration_s", "greater than or equal to 0.02"),
    ({"duration_s": 1e-9, "output_format": "mp3"}, 400, "duration_s", "greater than or equal to 0.02"),
    ({"prompt_duration_s": 1e-9}, 400, "prompt_duration_s", "greater than or equal to 0.02"),
    ({"duration_s": True}, 400, "duration_s", "valid number"),
    ({"duration_s": "10"}, 400, "duration_s", "valid number"),
    ({"include_source": 0}, 400, "include_source", "valid boolean"),
    ({"seed": 1.5}, 400, "seed", "valid integer"),
    ({"prompt": 7}, 400, "prompt", "valid string"),
    ({"prompt_start_s": -1}, 400, "prompt_start_s", "greater than or equal to 0"),
    ({"audio_path": "{short}", "prompt_start_s": 3.0}, 400, "prompt_start_s", "must start by 2.980 s"),
    ({"prompt_start_s": "chorus"}, 400, "prompt_start_s", "valid number"),
    ({"normalization": "louder"}, 400, "normalization", "'none', 'clip', 'peak', 'rms' or 'loudness'"),
    ({"loudness_lufs": 0}, 400, "loudness_lufs", "less than or equal to -5"),
    ({"takes": 5}, 400, "takes", "less than or equal to 4"),
    ({"takes": 0}, 400, "takes", "greater than or equal to 1"),
    # 2000 characters the tiny model's tokenizer reads as 2002 tokens: past the planned cache.
    ({"prompt": "la " * 666 + "la"}, 400, "prompt", "is 2002 text tokens long (the model's tokenizer); at most 256"),
    ({"prompt": "x" * 2001}, 400, "prompt", "at most 2000 characters"),
]


@pytest.mark.parametrize(
    ("overrides", "status", "field", "message"),
    BAD_INPUTS,
    ids=[
        "missing-file",
        "directory",
        "device",
        "empty-file",
        "not-audio",
        "truncated",
        "relative-path",
        "over-size-limit",
        "over-duration-limit",
        "no-audio-path",
        "path-not-string",
        "duration-not-number",
        "duration-negative",
        "duration-over-max",
        "prompt-zero",
        "prompt-fills-window",
        "cfg-not-number",
        "cfg-too-high",
        "temperature-negative",
        "top-k-negative",
        "top-k-not-int",
        "top-p-over-one",
        "seed-negative",
        "unknown-format",
        "include-source-not-bool",
        "misspelt-field",
        "symlink-loop",
        "nul-byte-in-path",
        "source-under-one-frame",
        "duration-under-one-sample-flac",
        "duration-under-one-sample-mp3",
        "prompt-under-one-frame",
        "duration-boolean",
        "duration-string-number",
        "include-source-number",
        "seed-fraction",
        "prompt-not-string",
        "prompt-start-negative",
        "prompt-start-past-the-source",
        "prompt-start-not-number",
        "unknown-normalization",
        "loudness-too-loud",
        "too-many-takes",
        "no-takes",
        "prompt-over-the-planned-tokens",
        "prompt-over-2000-characters",
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    server: Server, sources: dict[str, Path], overrides: dict[str, Any], status: int, field: str, message: str
) -> None:
    body: dict[str, Any] = {"audio_path": str(sources["wav"]), "duration_s": 1.0}
    for key, value in overrides.items():
        body[key] = value.format(**{k: str(v) for k, v in sources.items()}) if isinstance(value, str) else value
    if not overrides:
        body.pop("audio_path")
    before = sorted(p.name for p in _output_dir(server).glob("*"))
    response = httpx.post(f"{server.url}/continue", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")
    assert message in error["error"]
    assert "Traceback" not in response.text
    assert sorted(p.name for p in _output_dir(server).glob("*")) == before  # nothing written, nothing partial


def test_malformed_json_is_a_400(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/continue", content=b'{"audio_path": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_server_keeps_serving_after_bad_input(server: Server, sources: dict[str, Path]) -> None:
    for _ in range(3):
        httpx.post(f"{server.url}/continue", json={"audio_path": "/dev/null"})
    assert server.health()["status"] == "ready"  # type: ignore[index]
    assert continue_(server, audio_path=str(sources["wav"]), duration_s=0.5).status_code == 200
    assert not [p for p in _output_dir(server).iterdir() if p.name.startswith(".")]  # no partial files


def _engine_health(server: Server) -> dict[str, Any]:
    health = server.health()
    assert health is not None
    engine = health["engine"]
    assert isinstance(engine, dict)
    return engine


def _engine_steps(server: Server) -> int:
    return int(_engine_health(server)["steps"])


def _output_dir(server: Server) -> Path:
    return server.log_path.parent / "output"
