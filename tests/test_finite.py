"""The non-finite guard: a request whose logits turn to NaN or infinity fails alone and at once,
naming the precision and the setting to change; the rest of its batch decodes what it would have
alone, the engine goes on, and a checkpoint that overflows is caught at warm-up, before `ready`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, NonFiniteOutput, Sampling
from musicgen_bento.engine.finite import finite_slots
from musicgen_bento.models.tiny import build_tiny_model

from .conftest import Server, write_tone

GREEDY = Sampling(cfg_coef=3.0, temperature=0.0)


def test_finite_slots_flags_a_slot_with_any_bad_value() -> None:
    logits = torch.zeros(6, 4, 8)
    logits[3, 2, 5] = float("nan")  # slot 1's unconditional row
    logits[4, 0, 0] = float("inf")  # slot 2
    assert finite_slots(logits).tolist() == [True, False, False]


class Poison:
    """Makes one request's logits NaN from its `at`-th decoding step on."""

    def __init__(self, at: int) -> None:
        self.victim: DecodeRequest | None = None
        self.at = at
        self.seen = 0

    def __call__(self, logits: torch.Tensor, requests: tuple[DecodeRequest, ...]) -> None:
        slots = [slot for slot, request in enumerate(requests) if request is self.victim]
        if slots:
            self.seen += 1
            if self.seen >= self.at:
                logits[2 * slots[0] : 2 * slots[0] + 2] = float("nan")


def _request(engine: DecodeEngine, processor: Any, text: str, frames: int) -> DecodeRequest:
    inputs = dict(processor(text=[text], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        states, mask = engine.encode_conditioning(inputs)
    return DecodeRequest(states, mask, None, frames, GREEDY, None)


def _decode_all(engine: DecodeEngine, requests: list[DecodeRequest]) -> list[Any]:
    outcomes: list[Any] = [None] * len(requests)

    def decode(index: int) -> None:
        try:
            outcomes[index] = engine.decode(requests[index], (index,))
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=decode, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_a_request_whose_logits_turn_nan_fails_alone_and_the_batch_goes_on() -> None:
    model, processor = build_tiny_model("text")
    poison = Poison(at=5)
    engine = DecodeEngine(model, "cpu", slots=4, options=EngineOptions(logits_hook=poison))
    try:
        requests = [_request(engine, processor, text, 30) for text in ("rock", "jazz piano", "ambient")]
        alone = [engine.decode(request, (index,)) for index, request in enumerate(requests)]
        poison.victim = requests[1]
        outcomes = _decode_all(engine, requests)
        assert isinstance(outcomes[1], NonFiniteOutput)
        assert "float32" in outcomes[1].message and "MUSICGEN_DTYPE" in outcomes[1].message
        assert "decoding step 5" in outcomes[1].message
        for index in (0, 2):
            assert torch.equal(outcomes[index], alone[index]), f"request {index} changed"
        assert engine.stats().nonfinite == 1
        poison.victim = None
        assert torch.equal(engine.decode(requests[1], (9,)), alone[1]), "the engine goes on"
    finally:
        engine.close()


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]) -> str:
    """A tiny text model whose first codebook head holds NaN: a stand-in for float16 overflowing."""
    from musicgen_bento.models.store import import_directory

    model, processor = build_tiny_model("text")
    with torch.no_grad():
        model.decoder.lm_heads[0].weight.fill_(float("nan"))
    directory = tmp_path_factory.mktemp("overflowing") / "checkpoint"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    info = import_directory(Path(directory), "musicgen-overflowing", source="a test", licence="none")
    return info.tag


def test_a_checkpoint_that_overflows_reports_error_at_warm_up(start_server: Any, overflowing_model: str) -> None:
    server: Server = start_server(settings={"MUSICGEN_MODEL": overflowing_model, "MUSICGEN_WARMUP_S": "0.2"})
    health = server.wait_until("error", timeout=180)
    assert "NaN or infinity" in str(health["detail"]) and "MUSICGEN_DTYPE" in str(health["detail"])
    refused = httpx.post(f"{server.url}/continue", json={"audio_path": "/x.wav"}, timeout=30)
    assert refused.status_code == 503


def test_a_request_that_turns_non_finite_is_a_500_naming_the_fix_and_the_server_goes_on(
    start_server: Any, overflowing_model: str, tmp_path: Path
) -> None:
    # Without a warm-up the server reports ready; the first request meets the NaN.
    output = tmp_path / "output"
    server: Server = start_server(
        settings={"MUSICGEN_MODEL": overflowing_model, "MUSICGEN_WARMUP_S": "0", "MUSICGEN_OUTPUT_DIR": str(output)}
    )
    server.wait_until("ready", timeout=180)
    source = write_tone(tmp_path / "source.wav", seconds=2.0)
    for _ in range(2):
        response = httpx.post(f"{server.url}/continue", json={"audio_path": str(source), "duration_s": 1}, timeout=120)
        assert response.status_code == 500, response.text
        message = response.json()["error"]
        assert "NaN or infinity" in message and "float32" in message and "MUSICGEN_DTYPE" in message
        assert "Traceback" not in response.text
    assert server.health()["status"] == "ready"  # type: ignore[index]
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert "musicgen_engine_requests_nonfinite_total 2.0" in metrics
    assert not [path for path in output.rglob("*") if path.is_file()], "a failed request leaves no file"
