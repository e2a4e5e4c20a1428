"""The start-up check of CUDA graphs, run on the CPU through the engine's `graphs` seam.

No GPU is available to this project's CI, so the decision logic is tested here with stand-ins for
captured graphs: one whose capture fails, one whose replay computes wrong logits, one that replays
correctly. `tests/test_engine_cuda.py` runs the real thing on a GPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling
from musicgen_bento.engine.cuda_graphs import CudaGraphs, Forward, StepOutput
from musicgen_bento.models.tiny import build_tiny_model

GREEDY = Sampling(cfg_coef=3.0, temperature=0.0)


class _Pretend(CudaGraphs):
    """Graphs that believe they run on a GPU; `replay` computes a step in their stead."""

    def __init__(self, forward: Forward, device: torch.device, max_rows: int) -> None:
        super().__init__(forward, device, max_rows)
        self.enabled, self.reason = True, "on: not checked yet"
        self.forward = forward
        self.replays = 0

    def capture(self, rows: int, length: int, cross: int) -> tuple[Any, StepOutput]:
        pretend = self

        class Replay:
            def replay(self) -> None:
                pretend.replays += 1
                pretend.replay(rows, length, cross)

        # A step's logits land in one buffer, as a captured graph's output does.
        return Replay(), self.forward(rows, length, cross)

    def replay(self, rows: int, length: int, cross: int) -> None:
        self.forward(rows, length, cross)


class _FailingCapture(_Pretend):
    def capture(self, rows: int, length: int, cross: int) -> tuple[Any, StepOutput]:
        raise RuntimeError("injected: operation not permitted when stream is capturing")


class _WrongReplay(_Pretend):
    def replay(self, rows: int, length: int, cross: int) -> None:
        self.forward(rows, length, cross)[0][:, :, 7] += 1e4  # every codebook's best token becomes 7


def _engine(graphs: type[CudaGraphs] | None) -> tuple[DecodeEngine, Any]:
    model, processor = build_tiny_model("text")
    if graphs is None:
        return DecodeEngine(model, "cpu", slots=2), processor
    return DecodeEngine(model, "cpu", slots=2, options=EngineOptions(graphs=graphs)), processor


def _request(engine: DecodeEngine, processor: Any, text: str, frames: int, sampling: Sampling) -> DecodeRequest:
    inputs = dict(processor(text=[text], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        states, mask = engine.encode_conditioning(inputs)
    return DecodeRequest(states, mask, None, frames, sampling, torch.Generator().manual_seed(5))


def _served_codes(engine: DecodeEngine, processor: Any) -> torch.Tensor:
    """What the engine serves after its check: a sampled request."""
    return engine.decode(_request(engine, processor, "after the check", 30, Sampling(temperature=1.0)), (0,))


@pytest.fixture(scope="module")
def eager_codes() -> torch.Tensor:
    engine, processor = _engine(None)
    try:
        return _served_codes(engine, processor)
    finally:
        engine.close()


def test_without_graphs_the_check_decodes_nothing_and_says_why() -> None:
    engine, processor = _engine(None)
    status = engine.check_graphs(_request(engine, processor, "check", 20, GREEDY))
    assert (status.on, status.reason) == (False, "off: not a CUDA device")
    assert engine.steps_run == 0
    engine.close()


def test_graphs_that_replay_the_eager_steps_stay_on(eager_codes: torch.Tensor) -> None:
    engine, processor = _engine(_Pretend)
    status = engine.check_graphs(_request(engine, processor, "check", 20, GREEDY))
    assert status.on and status.reason.startswith("on: replayed steps gave the eager steps' codes")
    assert engine.stats().graphs == status
    graphs = engine.runner.graphs
    assert isinstance(graphs, _Pretend) and graphs.replays > 0
    replays = graphs.replays
    assert torch.equal(_served_codes(engine, processor), eager_codes)
    assert graphs.replays > replays, "requests after the check decode through the graphs"
    engine.close()


def test_a_failed_capture_turns_graphs_off_and_the_engine_serves_eagerly(eager_codes: torch.Tensor) -> None:
    engine, processor = _engine(_FailingCapture)
    status = engine.check_graphs(_request(engine, processor, "check", 20, GREEDY))
    assert not status.on
    assert status.reason.startswith("off: capture failed: RuntimeError: injected")
    assert engine.stats().graphs == status
    assert torch.equal(_served_codes(engine, processor), eager_codes)
    engine.close()


def test_replayed_steps_that_differ_turn_graphs_off_for_good(eager_codes: torch.Tensor) -> None:
    engine, processor = _engine(_WrongReplay)
    status = engine.check_graphs(_request(engine, processor, "check", 20, GREEDY))
    assert not status.on
    assert "replayed steps gave other codes than eager ones at start-up (first at frame" in status.reason
    graphs = engine.runner.graphs
    assert isinstance(graphs, _WrongReplay)
    replays = graphs.replays
    assert torch.equal(_served_codes(engine, processor), eager_codes), "served eagerly, so right"
    assert graphs.replays == replays, "no step replays a graph after the check failed"
    engine.close()


def test_the_check_refuses_a_sampled_request() -> None:
    engine, processor = _engine(_Pretend)
    with pytest.raises(ValueError, match="greedy"):
        engine.check_graphs(_request(engine, processor, "check", 20, Sampling(temperature=1.0)))
    engine.close()
