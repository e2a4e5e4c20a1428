"""The engine's model runner, driven by a scheduler's plans on this thread: no engine thread, no
callers waiting. Requests decoded this way give transformers' tokens (greedy, as the engine's own
tests compare), leave with their codes, share a twin's prefill, and fail alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from musicgen_bento.engine import DecodeRequest, Sampling
from musicgen_bento.engine.request_state import RequestState
from musicgen_bento.engine.runner import ModelRunner
from musicgen_bento.engine.scheduler import Scheduler
from musicgen_bento.models.tiny import build_tiny_model

GREEDY = Sampling(cfg_coef=3.0, temperature=0.0)


@pytest.fixture(scope="module")
def model() -> tuple[Any, Any]:
    return build_tiny_model("text")


@pytest.fixture
def runner(model: tuple[Any, Any]) -> Iterator[ModelRunner]:
    yield ModelRunner(model[0], torch.device("cpu"), slots=2)


def _request(runner: ModelRunner, processor: Any, text: str, frames: int, prompt: torch.Tensor | None = None) -> Any:
    inputs = dict(processor(text=[text], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        states, mask = runner.decoder.encode_conditioning(inputs)
    return DecodeRequest(states, mask, prompt, frames, GREEDY, None)


def _run(runner: ModelRunner, scheduler: Scheduler[RequestState], limit: int = 500) -> int:
    """Carries out plans until every request has left; the steps that ran."""
    steps = 0
    with torch.inference_mode():
        for _ in range(limit):
            if scheduler.idle:
                return steps
            steps += runner.carry_out(scheduler.schedule()) > 0
    raise AssertionError("the requests never all left")


def _reference(model: Any, processor: Any, text: str, frames: int) -> torch.Tensor:
    """transformers' greedy codes for `text`, as the engine's tests take them."""
    captured: list[torch.Tensor] = []
    decode = model.audio_encoder.decode

    def capture(codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(codes.clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        with torch.inference_mode():
            inputs = dict(processor(text=[text], padding=True, return_tensors="pt"))
            model.generate(**inputs, max_new_tokens=frames + 3, do_sample=False, guidance_scale=3.0)
    finally:
        model.audio_encoder.decode = decode
    return captured[-1][0, 0]


def test_plans_carried_out_decode_as_transformers_does(runner: ModelRunner, model: tuple[Any, Any]) -> None:
    scheduler: Scheduler[RequestState] = Scheduler(runner.slots)
    states = [
        runner.request_state(_request(runner, model[1], text, 12), (order,))
        for order, text in enumerate(("rock", "soft jazz piano"))
    ]
    for state in states:
        scheduler.submit(state, state.order)
    steps = _run(runner, scheduler)
    for state, text in zip(states, ("rock", "soft jazz piano"), strict=True):
        assert torch.equal(state.channel.follow(None, None), _reference(model[0], model[1], text, 12))
    # Both decoded together: one step per token after the prefill's, not one per request.
    assert steps == states[0].max_length - states[0].known - 1


def test_more_requests_than_slots_take_the_slots_as_they_free(runner: ModelRunner, model: tuple[Any, Any]) -> None:
    scheduler: Scheduler[RequestState] = Scheduler(runner.slots)
    lengths = (6, 14, 9)
    states = [
        runner.request_state(_request(runner, model[1], "drums", frames), (order,))
        for order, frames in enumerate(lengths)
    ]
    for state in states:
        scheduler.submit(state, state.order)
    _run(runner, scheduler)
    for state, frames in zip(states, lengths, strict=True):
        assert state.channel.follow(None, None).shape == (4, frames)


def test_a_twin_shares_its_prefill(runner: ModelRunner, model: tuple[Any, Any]) -> None:
    scheduler: Scheduler[RequestState] = Scheduler(runner.slots)
    request = _request(
        runner, model[1], "ambient", 10, torch.randint(0, 2048, (4, 8), generator=torch.Generator().manual_seed(1))
    )
    states = [runner.request_state(request, (order,)) for order in range(2)]
    for state in states:
        scheduler.submit(state, state.order)
    _run(runner, scheduler)
    assert runner.counters.prefills_shared == 1
    assert torch.equal(states[0].channel.follow(None, None), states[1].channel.follow(None, None))


def test_a_failed_prefill_fails_its_request_alone(runner: ModelRunner, model: tuple[Any, Any]) -> None:
    scheduler: Scheduler[RequestState] = Scheduler(runner.slots)
    good = runner.request_state(_request(runner, model[1], "rock", 8), (0,))
    # Conditioning of the wrong width: the cross-attention projection refuses it.
    broken_request = _request(runner, model[1], "rock", 8)
    broken = runner.request_state(
        DecodeRequest(broken_request.conditioning[..., :3], broken_request.conditioning_mask, None, 8, GREEDY, None),
        (1,),
    )
    for state in (good, broken):
        scheduler.submit(state, state.order)
    _run(runner, scheduler)
    assert good.channel.follow(None, None).shape == (4, 8)
    with pytest.raises(RuntimeError):
        broken.channel.follow(None, None)


def test_a_canceled_request_leaves_at_the_next_plan(runner: ModelRunner, model: tuple[Any, Any]) -> None:
    scheduler: Scheduler[RequestState] = Scheduler(runner.slots)
    state = runner.request_state(_request(runner, model[1], "rock", 40), (0,))
    scheduler.submit(state, state.order)
    with torch.inference_mode():
        runner.carry_out(scheduler.schedule())
        state.channel.canceled = True
        plan = scheduler.schedule()
    assert [leave.request for leave in plan.leaving] == [state] and plan.decoding == ()
    runner.carry_out(plan)
    assert runner.counters.canceled == 1 and scheduler.idle
