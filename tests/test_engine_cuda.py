"""The decoding engine on a CUDA device: steps replayed from captured CUDA graphs give the tokens
the eager steps give, batched or alone, and a running request never waits for the device.

Skipped where no CUDA device is present (CI has none): run `make test` on a GPU machine.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling
from musicgen_bento.models.tiny import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda:0"
# (text, new frames, sampling, seed): different lengths, so requests join and leave at different steps.
REQUESTS = [
    ("jazz", 40, Sampling(cfg_coef=3.0, temperature=0.0), 1),
    ("rock", 70, Sampling(cfg_coef=3.0, temperature=1.0, top_k=250), 2),
    ("", 25, Sampling(cfg_coef=1.0, temperature=1.0, top_k=50), 3),
    ("piano", 55, Sampling(cfg_coef=5.0, temperature=0.7, top_k=0, top_p=0.9), 4),
]


def _engine(kind: str, graphs: bool) -> tuple[DecodeEngine, object]:
    model, processor = build_tiny_model(kind)  # type: ignore[arg-type]
    return DecodeEngine(model.to(DEVICE), DEVICE, slots=4, options=EngineOptions(use_cuda_graphs=graphs)), processor


def _request(engine: DecodeEngine, processor: object, kind: str, index: int) -> DecodeRequest:
    text, frames, sampling, seed = REQUESTS[index]
    args: dict[str, object] = {"text": [text], "padding": True, "return_tensors": "pt"}
    if kind == "melody":
        t = torch.arange(32000) / 32000
        args.update(audio=(0.3 * torch.sin(2 * torch.pi * 220 * t)).numpy(), sampling_rate=32000)
    inputs = {key: value.to(DEVICE) for key, value in processor(**args).items()}  # type: ignore[operator]
    with torch.inference_mode():
        states, mask = engine.encode_conditioning(inputs)
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return DecodeRequest(states, mask, None, frames, sampling, generator)


def _requests(engine: DecodeEngine, processor: object, kind: str) -> list[DecodeRequest]:
    return [_request(engine, processor, kind, index) for index in range(len(REQUESTS))]


def _decode_together(engine: DecodeEngine, requests: list[DecodeRequest]) -> dict[int, torch.Tensor]:
    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        results[index] = engine.decode(requests[index], (index,))

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.parametrize("kind", ["text", "melody"])
def test_captured_steps_give_the_eager_steps_tokens(kind: str) -> None:
    eager, processor = _engine(kind, graphs=False)
    captured, _ = _engine(kind, graphs=True)
    expected = _decode_together(eager, _requests(eager, processor, kind))
    got = _decode_together(captured, _requests(captured, processor, kind))
    assert captured.runner.graphs.enabled, "graph capture failed and the engine fell back to eager steps (see the log)"
    assert captured.stats().graph_steps, "no step was replayed from a graph"
    assert sorted(got) == sorted(expected) == list(range(len(REQUESTS)))
    for index in expected:
        assert torch.equal(got[index], expected[index]), f"request {index} differs"
    eager.close()
    captured.close()


def test_a_running_request_never_waits_for_the_device() -> None:
    engine, processor = _engine("text", graphs=True)
    _decode_together(engine, _requests(engine, processor, "text"))  # captures every bucket these lengths need
    requests = _requests(engine, processor, "text")  # conditioning is the caller's, before decoding
    torch.cuda.synchronize()
    steps_before = engine.steps_run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _decode_together(engine, requests)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    steps = engine.steps_run - steps_before
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # Copying each finished request's codes to the host is the one wait by design.
    assert len(syncs) <= 2 * len(REQUESTS), f"{len(syncs)} host syncs in {steps} steps: {syncs[:3]}"
    engine.close()
