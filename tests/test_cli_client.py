"""The command-line client against a real server, run as a user runs it (`python -m musicgen_bento
continue|generate|jobs|health`): files where -o says, uploads, progress lines, --json, refusals
and unreachable servers with their exit statuses, and Ctrl-C canceling what it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from musicgen_bento.client_cli import EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_UNREACHABLE
from musicgen_bento.testing import free_port

from .conftest import TINY_TEXT, Server, write_tone

MODEL_RATE = 32000


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    started: Server = start_server(settings={"MUSICGEN_MODEL": TINY_TEXT, "MUSICGEN_MAX_JOB_DURATION_S": "60"})
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("cli-sources") / "verse.wav", seconds=3.0, sample_rate=44100, channels=2)


def cli(server_url: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUSICGEN_SERVER_URL": server_url}
    done = subprocess.run(
        [sys.executable, "-m", "musicgen_bento", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_continue_streams_into_the_named_file_with_progress_lines(server: Server, source: Path, tmp_path: Path) -> None:
    done = cli(
        server.url, "continue", str(source), "-p", "organ", "-d", "2", "-o", "out.wav", "--seed", "3", cwd=tmp_path
    )
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.frames) == (MODEL_RATE, 2 * MODEL_RATE)
    assert "audio: 2.0/2 s" in done.stderr  # plain lines where stderr is not a terminal
    assert done.stdout.startswith("wrote out.wav")
    assert not list(tmp_path.glob(".*partial"))


def test_continue_uploads_with_flags_for_every_field_and_prints_json(
    server: Server, source: Path, tmp_path: Path
) -> None:
    args = ["continue", str(source), "-d", "1", "--upload", "--json", "--sample-rate", "48000"]
    done = cli(server.url, *args, "--sample-format", "pcm24", "--cfg-coef", "2.5", "--no-include-source", cwd=tmp_path)
    answer = json.loads(done.stdout)
    assert answer["sample_rate"] == 48000 and done.stderr == ""
    output = tmp_path / answer["output"]
    assert output.name == "verse-continued.wav"
    info = sf.info(str(output))
    assert (info.samplerate, info.subtype, info.frames) == (48000, "PCM_24", 48000)
    again = json.loads(cli(server.url, *args, cwd=tmp_path).stdout)
    assert again["output"] == "verse-continued-2.wav", "a default name never overwrites"


def test_several_takes_in_flac_run_as_a_job_and_every_take_is_saved(
    server: Server, source: Path, tmp_path: Path
) -> None:
    args = ["continue", str(source), "-d", "1", "--takes", "2", "--output-format", "flac", "-o", "song.flac"]
    done = cli(server.url, *args, cwd=tmp_path)
    assert done.stdout.split() == ["wrote", "song.flac", "wrote", "song-take2.flac"]
    for name in ("song.flac", "song-take2.flac"):
        assert sf.info(str(tmp_path / name)).frames == MODEL_RATE
    assert "decoding steps: 100%" in done.stderr


def test_generate_follows_the_job_and_downloads_it(server: Server, tmp_path: Path) -> None:
    done = cli(server.url, "generate", "-p", "sea shanty", "-d", "1.5", "--json", cwd=tmp_path)
    answer = json.loads(done.stdout)
    assert answer["job"]["status"] == "succeeded"
    (output,) = answer["outputs"]
    assert sf.info(str(tmp_path / output)).frames == int(1.5 * MODEL_RATE)


def test_jobs_show_download_and_cancel(server: Server, tmp_path: Path) -> None:
    job_id = cli(server.url, "generate", "-p", "pads", "-d", "1", "--no-wait", cwd=tmp_path).stdout.strip()
    deadline = time.monotonic() + 120
    while json.loads(cli(server.url, "jobs", "show", job_id, "--json", cwd=tmp_path).stdout)["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cli(server.url, "jobs", "download", job_id, "-o", "pads.wav", cwd=tmp_path)
    assert sf.info(str(tmp_path / "pads.wav")).frames == MODEL_RATE
    long_job = cli(server.url, "generate", "-p", "long", "-d", "60", "--no-wait", cwd=tmp_path).stdout.strip()
    canceled = json.loads(cli(server.url, "jobs", "cancel", long_job, "--json", cwd=tmp_path).stdout)
    assert canceled["status"] in ("canceled", "running")


def test_a_refusal_prints_the_field_and_exits_with_its_status(server: Server, source: Path, tmp_path: Path) -> None:
    done = cli(server.url, "continue", str(source), "-d", "999", cwd=tmp_path, check=False)
    assert done.returncode == EXIT_REFUSED
    assert "400: duration_s: must be at most" in done.stderr
    assert not list(tmp_path.iterdir()), "nothing half-written"
    bad_flag = cli(server.url, "continue", str(source), "--sample-rate", "44000", cwd=tmp_path, check=False)
    assert bad_flag.returncode == 2 and "--sample-rate" in bad_flag.stderr  # argparse names the flag
    missing = cli(server.url, "continue", str(tmp_path / "nowhere.wav"), cwd=tmp_path, check=False)
    assert missing.returncode == EXIT_REFUSED and "audio_path: no file at" in missing.stderr


def test_an_unreachable_server_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = cli(url, "health", cwd=tmp_path, check=False)
    assert done.returncode == EXIT_UNREACHABLE and f"no server answers at {url}" in done.stderr


def test_health_prints_the_server_state(server: Server, tmp_path: Path) -> None:
    assert cli(server.url, "health", cwd=tmp_path).stdout.startswith("ready: ")
    assert json.loads(cli(server.url, "health", "--json", cwd=tmp_path).stdout)["status"] == "ready"


def test_ctrl_c_cancels_the_job_it_started_and_exits_130(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "MUSICGEN_SERVER_URL": server.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "musicgen_bento", "generate", "-p", "long", "-d", "60", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    running: list[dict[str, Any]] = []
    while not running and time.monotonic() < deadline:
        time.sleep(0.2)
        jobs = httpx.get(f"{server.url}/health", timeout=10).json()["engine"]
        running = [jobs] if jobs["decoding"] else []
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "interrupted" in stderr
    # The job it started is canceled: nothing decodes any more.
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/health", timeout=10).json()["engine"]["decoding"]:
        assert time.monotonic() < deadline, "the job went on after Ctrl-C"
        time.sleep(0.2)
    assert not list(tmp_path.iterdir())
