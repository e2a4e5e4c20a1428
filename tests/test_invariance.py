"""Batch invariance: the start-up check's choice of the rows a step computes (on stand-in products
that behave as real kernels were seen to), and, on this machine's real kernels at musicgen-small's
widths, a request's logits bit for bit the same alone and batched."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from musicgen_bento.engine import DecodeEngine, DecodeRequest, Sampling
from musicgen_bento.engine.invariance import find_min_rows
from musicgen_bento.engine.sampler import SamplingParams
from musicgen_bento.models.tiny import build_real_shape_model


def _same_everywhere(rows: int) -> torch.Tensor:
    return torch.ones(rows, 3)


def _other_kernel_below(threshold: int) -> Callable[[int], torch.Tensor]:
    """A product computed by another kernel (rounding otherwise) for fewer than `threshold` rows."""
    return lambda rows: torch.full((rows, 3), 1.0 if rows < threshold else 1.0 + 2**-20)


def _depends_on_place(rows: int) -> torch.Tensor:
    """A product whose rows round differently by their place in the batch, at every row count."""
    return torch.arange(rows, dtype=torch.float32).unsqueeze(1).expand(rows, 3)


@pytest.mark.parametrize(
    ("probes", "min_rows", "holds"),
    [
        ([_same_everywhere], 2, True),
        ([_same_everywhere, _other_kernel_below(4)], 4, True),
        ([_other_kernel_below(8), _other_kernel_below(4)], 8, True),
        ([_other_kernel_below(16)], 16, True),
        ([_same_everywhere, _depends_on_place], 2, False),
    ],
    ids=["invariant-as-is", "two-rows-differ", "fewer-than-8-differ", "only-all-slots", "varies-by-place"],
)
def test_the_step_computes_the_fewest_rows_that_make_every_product_invariant(
    probes: list[Callable[[int], torch.Tensor]], min_rows: int, holds: bool
) -> None:
    found = find_min_rows([(f"probe {index}", probe) for index, probe in enumerate(probes)], max_rows=16)
    assert (found.min_rows, found.holds) == (min_rows, holds)


def test_a_product_that_never_agrees_is_named_in_the_reason() -> None:
    found = find_min_rows([("the steady product", _same_everywhere), ("the restless product", _depends_on_place)], 8)
    assert not found.holds
    assert "the restless product differs" in found.reason and "may differ batched and alone" in found.reason


def test_an_odd_slot_count_is_checked_up_to_all_its_rows() -> None:
    # 3 slots: 6 rows, not a power of two; only computing all of them makes this product agree.
    assert find_min_rows([("p", _other_kernel_below(6))], max_rows=6).min_rows == 6


class LogitsTap:
    """Records the logits each request's tokens were chosen from, step by step, by its generator
    (the object: holding it keeps another request's generator from reusing its id)."""

    def __init__(self, engine: DecodeEngine) -> None:
        self.by_generator: dict[torch.Generator, list[torch.Tensor]] = {}
        sampler = engine.runner.sampler
        choose = sampler.choose

        def tapped(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
            for offset, generator in enumerate(params.generators):
                assert generator is not None
                self.by_generator.setdefault(generator, []).append(logits[offset].clone())
            return choose(logits, params)

        sampler.choose = tapped  # type: ignore[method-assign]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def wide(request: pytest.FixtureRequest) -> Iterator[tuple[DecodeEngine, Any]]:
    # musicgen-small's widths (so the kernels its steps run), two layers (so it is quick).
    model, processor = build_real_shape_model("musicgen-small", layers=2)
    engine = DecodeEngine(model.to(request.param), "cpu", slots=4)
    yield engine, processor
    engine.close()


def _request(engine: DecodeEngine, processor: Any, text: str, prompt_frames: int, seed: int) -> DecodeRequest:
    with torch.inference_mode():
        states, mask = engine.encode_conditioning(dict(processor(text=[text], padding=True, return_tensors="pt")))
    prompt = torch.randint(0, 2048, (4, prompt_frames), generator=torch.Generator().manual_seed(seed))
    return DecodeRequest(states, mask, prompt, 30, Sampling(temperature=1.0), torch.Generator().manual_seed(seed))


def test_a_requests_logits_are_the_same_bit_for_bit_batched_and_alone(wide: tuple[DecodeEngine, Any]) -> None:
    engine, processor = wide
    if not engine.runner.invariance.holds:
        pytest.xfail(f"this machine's kernels: {engine.runner.invariance.reason}")
    tap = LogitsTap(engine)
    cases = [("rock", 40, 1), ("jazz piano", 10, 2), ("ambient pads", 70, 3), ("drums", 25, 4)]
    batched = [_request(engine, processor, *case) for case in cases]
    threads = [
        threading.Thread(target=engine.decode, args=(request, (index,))) for index, request in enumerate(batched)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert max(engine.stats().steps_by_batch) >= 3, "the requests did not decode together"
    for index, case in enumerate(cases):
        alone = _request(engine, processor, *case)
        engine.decode(alone, (0,))
        together, by_itself = tap.by_generator[batched[index].generator], tap.by_generator[alone.generator]
        assert len(together) == len(by_itself) == 30 + 3
        differing = [step for step, (a, b) in enumerate(zip(together, by_itself, strict=True)) if not torch.equal(a, b)]
        assert not differing, f"request {index}: logits differ batched and alone from step {differing[:1]}"
