"""The command line: the node orchestrator's `python -m musicgen_bento ...`, flags and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
import torch

from .conftest import BIN, ROOT, TINY_MELODY, Server, write_tone


@pytest.fixture(scope="module")
def melody_server(start_server: Any, tiny_models: dict[str, str]) -> Server:
    server: Server = start_server(cli_args=["--model", TINY_MELODY, "--gpu-id", "0", "--max-duration-s", "20"])
    server.wait_until("ready", timeout=180)
    return server


def test_orchestrator_command_line_serves_health(melody_server: Server) -> None:
    body = httpx.get(f"{melody_server.url}/health").json()
    memory = body.pop("memory")
    precision = body.pop("precision")
    invariance = body["engine"].pop("batch_invariance_reason")
    weights = body["engine"].pop("weights_reason")
    assert body == {
        "status": "ready",
        "keys_required": False,
        "model": TINY_MELODY,
        "gpu_id": 0,
        "device": "cpu",
        "licence": "none: random weights generated locally, not a trained model",
        # The flags' defaults: the static engine with 8 slots; nothing decoded yet (no warm-up in tests).
        "engine": {
            "kind": "static",
            "slots": 8,
            "decoding": 0,
            "waiting": 0,
            "steps": 0,
            "prefills_shared": 0,
            "graphs": "off",
            "graphs_reason": "off: not a CUDA device",
            "batch_invariant": True,
            "weights": "dense",
            "attention": "float32",
            "attention_reason": "float32: the weights are float32",
            "threads": torch.get_num_threads(),  # the engine's thread took the cores for itself
        },
        "melody": True,
    }
    assert precision["dtype"] == "float32" and precision["reason"].startswith("auto: ")
    assert weights.startswith("dense: packing is for bfloat16")  # auto keeps the tiny model in float32
    assert invariance.startswith("checked at start-up: a request's rows get the same values alone as in a batch")
    # No budget given: the host's free memory, which holds all 8 slots of the tiny model.
    assert memory["budget_source"] == "free on cpu at start-up" and memory["slots"] == 8
    assert memory["planned_mb"] <= memory["budget_mb"] and memory["peak_mb"] > 0


def test_melody_model_continues_a_source(melody_server: Server, tmp_path: Path) -> None:
    source = write_tone(tmp_path / "melody.ogg", seconds=6.0, sample_rate=44100, channels=2)
    response = httpx.post(
        f"{melody_server.url}/continue",
        json={"audio_path": str(source), "prompt": "folk guitar", "duration_s": 2.0, "prompt_duration_s": 5.0},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"].startswith(f"{TINY_MELODY}:")
    assert body["prompt_duration_s"] == pytest.approx(5.0)
    assert sf.info(body["audio_path"]).frames == 2 * 32000


def test_flags_become_settings(melody_server: Server, tmp_path: Path) -> None:
    source = write_tone(tmp_path / "s.wav", seconds=2.0)
    response = httpx.post(f"{melody_server.url}/continue", json={"audio_path": str(source), "duration_s": 25})
    assert response.status_code == 400
    assert "at most 20 seconds" in response.json()["error"]


def test_help_lists_every_flag_with_its_variable() -> None:
    done = subprocess.run([sys.executable, "-m", "musicgen_bento", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    done = subprocess.run([str(BIN / "musicgen-bento"), "serve", "--help"], capture_output=True, text=True)
    for flag, variable in [
        ("--model", "MUSICGEN_MODEL"),
        ("--gpu-id", "MUSICGEN_GPU_ID"),
        ("--mock", "CF_MUSICGEN_MOCK"),
    ]:
        assert flag in done.stdout and variable in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu-id", "first"], "MUSICGEN_GPU_ID"),
        (["--max-duration-s", "0"], "MUSICGEN_MAX_DURATION_S"),
        (["--dtype", "int4"], "MUSICGEN_DTYPE"),
    ],
    ids=["gpu-id-not-int", "zero-max-duration", "unknown-dtype"],
)
def test_bad_flags_exit_2_naming_the_setting(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "musicgen_bento", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_that_cannot_load_reports_error_in_health(start_server: Any) -> None:
    server: Server = start_server(cli_args=["--model", "no-such-model"])
    body = server.wait_until("error", timeout=180)
    assert "no model 'no-such-model' in the store" in str(body["detail"])
    response = httpx.post(f"{server.url}/continue", json={"audio_path": "/dev/null"})
    assert response.status_code == 503
    assert "failed to load" in response.json()["error"]
    assert "retry-after" in response.headers


def test_a_hub_model_without_hub_access_names_the_offline_choices(start_server: Any) -> None:
    server: Server = start_server(cli_args=["--model", "facebook/musicgen-small"], settings={"HF_HUB_OFFLINE": "1"})
    body = server.wait_until("error", timeout=180)
    detail = str(body["detail"])
    assert "could not download 'facebook/musicgen-small'" in detail
    assert "--model musicgen-tiny-random" in detail
    assert "--mock" in detail
