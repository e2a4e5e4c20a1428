"""The memory budget (MUSICGEN_MAX_MEMORY_MB): the plan's arithmetic at the real models' shapes,
and a budget too small for the model refused end to end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from musicgen_bento.engine import DecodeEngine, DecoderShape, EngineOptions, WeightLayout
from musicgen_bento.engine.kv_cache import CROSS_BUCKET, round_up
from musicgen_bento.engine.memory_plan import (
    MIB,
    PLANNED_TEXT_TOKENS,
    cache_bytes_per_slot,
    int8_linear_weights,
    plan_for,
    plan_memory,
    weights_layout_for,
)
from musicgen_bento.engine.weights import INT8_BYTES_PER_CHANNEL, INT8_BYTES_PER_WEIGHT, Int8Linear, JointPart
from musicgen_bento.errors import MemoryBudgetError
from musicgen_bento.generation.backends import Budget, TransformersBackend
from musicgen_bento.models.store import decoder_shape, find
from musicgen_bento.models.tiny import build_tiny_model

from .conftest import TINY_TEXT

# The published checkpoints' shapes (their config.json) and parameters (decoder, t5-base's encoder
# and the 32 kHz EnCodec), as the README's sizing table counts them.
MELODY = DecoderShape(
    hidden=1536, ffn=6144, layers=48, heads=24, codebooks=4, vocab=2048, parameters=1_551_132_608, melody_prefix=235
)
SMALL = DecoderShape(hidden=1024, ffn=4096, layers=24, heads=16, codebooks=4, vocab=2048, parameters=586_438_592)


def _plan(shape: DecoderShape, budget_mb: int, slots: int = 8, device: str = "cuda:0", **kw: Any) -> Any:
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    options = {"device": device, "dtype": dtype, "cache_dtype": dtype, "requested_slots": slots, "window_s": 30.0}
    options.update(kw)
    return plan_for(shape, max_memory_mb=budget_mb, is_melody=shape.melody_prefix > 0, **options)


def test_melody_in_the_orchestrators_8000_mb_gets_the_slots_that_fit() -> None:
    plan = _plan(MELODY, 8000)
    # A 30 s window is 1500 frames; the chroma prefix (235) and 256 planned text tokens precede
    # it: 2007 positions, allocated in steps of 256 -> 2048.
    assert plan.positions == 2048 and plan.cross_positions == 0
    # 2 rows x 48 layers x (key, value) x 1536 x 2048 positions x 2 bytes = 1152 MiB a slot.
    assert plan.cache_mib_per_slot == pytest.approx(1152)
    assert plan.weights_mib == pytest.approx(1_551_132_608 * 2 / MIB)
    # weights 2959 + margin 2082 leave 2959 MiB: two slots of 1152.
    assert plan.slots == 2 and plan.requested_slots == 8
    assert plan.total_mib <= 8000
    assert "2 slots (of 8 asked)" in plan.describe() and "MUSICGEN_MAX_MEMORY_MB" in plan.describe()


def test_a_large_budget_keeps_the_slots_asked_for() -> None:
    plan = _plan(MELODY, 24000)
    assert plan.slots == 8
    assert plan.total_mib == pytest.approx(plan.weights_mib + 8 * plan.cache_mib_per_slot + plan.margin_mib)


def test_small_text_model_plans_cross_attention_too() -> None:
    plan = _plan(SMALL, 6000)
    assert plan.positions == 1536 and plan.cross_positions == 256
    assert plan.cache_mib_per_slot * MIB == cache_bytes_per_slot(SMALL, 1536, 256, 2)
    assert plan.slots == 8


def test_the_plan_reserves_caches_in_the_precision_the_engine_holds_them() -> None:
    float32 = _plan(SMALL, 64000, device="cpu")
    bfloat16 = _plan(SMALL, 64000, device="cpu", dtype=torch.bfloat16, cache_dtype=torch.bfloat16)
    mixed = _plan(SMALL, 64000, device="cpu", dtype=torch.bfloat16, cache_dtype=torch.float32)
    assert float32.cache_mib_per_slot == pytest.approx(2 * bfloat16.cache_mib_per_slot)
    assert mixed.cache_mib_per_slot == float32.cache_mib_per_slot and mixed.weights_mib == bfloat16.weights_mib


def test_the_transformers_engine_plans_one_cache_of_its_own_in_the_weights_precision() -> None:
    plans = {
        dtype: TransformersBackend().plan(SMALL, Budget("cpu", dtype, 64000, 30.0, is_melody=False))
        for dtype in (torch.float32, torch.bfloat16)
    }
    assert plans[torch.float32].cache_mib_per_slot == pytest.approx(2 * plans[torch.bfloat16].cache_mib_per_slot)
    assert plans[torch.float32].slots == plans[torch.bfloat16].slots == 1


INT8 = WeightLayout(True, "int8 (planned)", int8=True)


def test_int8_weights_are_planned_as_held_and_loaded_in_full() -> None:
    float32 = _plan(SMALL, 64000, device="cpu")
    int8 = _plan(SMALL, 64000, device="cpu", weights=INT8)
    parameters, channels = int8_linear_weights(SMALL, is_melody=False)
    # Each quantized weight goes from 4 bytes to 1, and gains its channel's scales.
    saved = parameters * (4 - INT8_BYTES_PER_WEIGHT) - channels * INT8_BYTES_PER_CHANNEL
    assert (float32.weights_mib - int8.weights_mib) * MIB == pytest.approx(saved)
    assert int8.weights_mib < float32.weights_mib / 2, "musicgen-small's weights are mostly the decoder's linears"
    assert int8.loading_mib == float32.loading_mib == float32.weights_mib
    assert f"weights {int8.weights_mib:.0f} MiB ({int8.loading_mib:.0f} MiB while loading)" in int8.describe()
    assert "while loading" not in float32.describe()
    # Room for 3 slots of float32 weights (the margin shrinks with fewer slots than 8): int8's
    # 1.2 GB less leaves room for one more of 705 MiB.
    budget = round(float32.weights_mib + 3 * float32.cache_mib_per_slot + float32.margin_mib)
    assert _plan(SMALL, budget, device="cpu").slots == 3
    assert _plan(SMALL, budget, device="cpu", weights=INT8).slots == 4


def test_a_budget_that_cannot_load_the_float_weights_is_refused_even_with_int8() -> None:
    # 2500 MiB would hold musicgen-small's int8 weights, a slot and the margin, but the checkpoint
    # loads in float32 first (2237 MiB) beside the runtime's 768.
    with pytest.raises(MemoryBudgetError) as refused:
        _plan(SMALL, 2500, device="cpu", weights=INT8)
    message = refused.value.message
    assert "cannot be loaded in 2500 MiB" in message and "take 2237 MiB as loaded" in message
    assert "MUSICGEN_MAX_MEMORY_MB (--max-memory-mb)" in message


@pytest.mark.parametrize("kind", ["text", "melody"])
def test_the_int8_plan_counts_the_bytes_the_engine_holds(kind: str) -> None:
    model, _ = build_tiny_model(kind)  # type: ignore[arg-type]
    config = model.decoder.config
    shape = DecoderShape(
        hidden=config.hidden_size,
        ffn=config.ffn_dim,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        codebooks=config.num_codebooks,
        vocab=config.vocab_size,
    )
    layout = weights_layout_for(shape, device="cpu", dtype=torch.float32, quantize=True)
    assert layout is not None and layout.int8, layout
    engine = DecodeEngine(model, "cpu", 1, EngineOptions(weights=layout))
    try:
        assert engine.stats().weights is layout
        modules = list(model.decoder.modules())
        held = {id(m): m for m in modules if isinstance(m, Int8Linear)}
        held.update({id(m.joint): m.joint for m in modules if isinstance(m, JointPart)})
        held_bytes = sum(b.numel() * b.element_size() for module in held.values() for b in module.buffers())
        parameters, channels = int8_linear_weights(shape, is_melody=kind == "melody")
        assert held_bytes == parameters * INT8_BYTES_PER_WEIGHT + channels * INT8_BYTES_PER_CHANNEL
    finally:
        engine.close()


def test_the_weights_form_is_chosen_for_the_static_engine_only() -> None:
    held_as_loaded = TransformersBackend().plan(SMALL, Budget("cpu", torch.float32, 64000, 30.0, is_melody=False))
    assert held_as_loaded.weights_mib == held_as_loaded.loading_mib
    dense = weights_layout_for(SMALL, device="cpu", dtype=torch.float32, quantize=False)
    assert dense.form == "dense"
    on_cuda = weights_layout_for(SMALL, device="cuda:0", dtype=torch.float16, quantize=True)
    assert on_cuda.form == "dense" and "is for CPUs" in on_cuda.reason


def test_a_budget_below_the_weights_is_refused_naming_the_setting() -> None:
    with pytest.raises(MemoryBudgetError) as refused:
        _plan(MELODY, 4000)
    message = refused.value.message
    assert "MUSICGEN_MAX_MEMORY_MB (--max-memory-mb)" in message
    assert "does not fit in 4000 MiB" in message and "its weights take 2959 MiB" in message


def test_the_arithmetic_counts_every_slot_it_grants() -> None:
    common = {
        "budget_source": "test",
        "weights_bytes": 100 * MIB,
        "shape": DecoderShape(layers=2, hidden=64, ffn=128, heads=2, codebooks=4, vocab=2048),
        "requested_slots": 8,
        "positions": 1024,
        "cross_positions": 0,
        "cache_element_bytes": 4,
        "activation_element_bytes": 4,
        "window_samples": 0,
        "device_type": "cpu",
    }
    generous = plan_memory(budget_mib=100_000, **common)
    one_less = plan_memory(budget_mib=generous.total_mib - 1, **common)
    assert (generous.slots, one_less.slots) == (8, 7)


def test_a_budget_too_small_for_the_model_fails_start_up_with_the_reason(start_server: Any) -> None:
    server = start_server(cli_args=["--model", TINY_TEXT, "--max-memory-mb", "1"])
    body = server.wait_until("error", timeout=180)
    assert "MUSICGEN_MAX_MEMORY_MB" in str(body["detail"]) and "does not fit in 1 MiB" in str(body["detail"])
    response = httpx.post(f"{server.url}/continue", json={"audio_path": "/dev/null"})
    assert response.status_code == 503
    assert "MUSICGEN_MAX_MEMORY_MB" in response.json()["error"]


def test_health_reports_the_plan_and_the_measured_peak(start_server: Any, tiny_models: dict[str, str]) -> None:
    # bfloat16 weights, whose attention caches the engine holds in bfloat16 or float32 as it
    # measures on this CPU: the plan must reserve what it holds.
    server = start_server(
        cli_args=["--model", TINY_TEXT, "--max-memory-mb", "6000", "--batch-slots", "3", "--dtype", "bfloat16"]
    )
    body = server.wait_until("ready", timeout=180)
    memory = body["memory"]
    assert isinstance(memory, dict)
    assert (memory["budget_mb"], memory["budget_source"], memory["slots"]) == (6000, "MUSICGEN_MAX_MEMORY_MB", 3)
    assert memory["planned_mb"] <= 6000 and memory["cache_positions"] >= 1500
    info = find(tiny_models["text"])
    assert info is not None
    shape = decoder_shape(info)
    held = torch.empty(0, dtype=getattr(torch, body["engine"]["attention"])).element_size()
    cross = round_up(PLANNED_TEXT_TOKENS, CROSS_BUCKET)
    held_mib = cache_bytes_per_slot(shape, memory["cache_positions"], cross, held) / MIB
    assert memory["cache_mb_per_slot"] == round(held_mib, 1)
    assert memory["peak_mb"] > memory["weights_mb"], "a measured peak: at least the process around the weights"
    engine = body["engine"]
    assert isinstance(engine, dict) and engine["slots"] == 3
    assert (engine["graphs"], engine["graphs_reason"]) == ("off", "off: not a CUDA device")
