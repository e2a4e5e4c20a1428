"""The weights' precision: what `MUSICGEN_DTYPE` picks where, and the attention caches' precision."""

from __future__ import annotations

import pytest
import torch

from musicgen_bento.engine import DecoderShape, kv_cache
from musicgen_bento.engine.kv_cache import choose_cache_precision
from musicgen_bento.generation import device
from musicgen_bento.generation.device import bfloat16_time_ratio, pick_precision

SMALL = DecoderShape(hidden=1024, ffn=4096, layers=24, heads=16)


@pytest.mark.parametrize("requested", ["float32", "float16", "bfloat16"])
def test_an_explicit_dtype_is_taken_as_asked_everywhere(requested: str) -> None:
    for where in ("cpu", "cuda:0"):
        precision = pick_precision(where, requested, SMALL)
        assert (precision.name, precision.reason) == (requested, f"MUSICGEN_DTYPE={requested}")


def test_auto_stays_float32_on_a_cpu_without_bfloat16_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_cpu_bfloat16_features", lambda: {"AMX": False, "AVX-512 BF16": False})
    precision = pick_precision("cpu", "auto", SMALL)
    assert precision.dtype == torch.float32
    assert "no native bfloat16" in precision.reason


@pytest.mark.parametrize(("ratio", "expected"), [(0.3, torch.bfloat16), (0.95, torch.float32), (2.0, torch.float32)])
def test_auto_follows_the_measurement_on_a_bfloat16_cpu(
    monkeypatch: pytest.MonkeyPatch, ratio: float, expected: torch.dtype
) -> None:
    monkeypatch.setattr(device, "_cpu_bfloat16_features", lambda: {"AMX": True, "AVX-512 BF16": True})
    monkeypatch.setattr(device, "bfloat16_time_ratio", lambda shape: ratio)
    precision = pick_precision("cpu", "auto", SMALL)
    assert precision.dtype == expected
    assert f"{ratio:.2f}x" in precision.reason and "AMX and AVX-512 BF16" in precision.reason


def test_the_measurement_gives_a_positive_ratio() -> None:
    tiny = DecoderShape(hidden=32, ffn=64, layers=2, heads=2)
    assert bfloat16_time_ratio(tiny, rounds=2) > 0


def test_gpus_attend_in_the_weights_precision_and_float32_cpus_in_float32() -> None:
    for weights in (torch.float16, torch.bfloat16):
        assert choose_cache_precision(weights, torch.device("cuda", 0), 16, 64, 16).dtype == weights
    chosen = choose_cache_precision(torch.float32, torch.device("cpu"), 16, 64, 16)
    assert (chosen.dtype, chosen.reason) == (torch.float32, "float32: the weights are float32")


@pytest.mark.parametrize(("ratio", "expected"), [(0.3, torch.bfloat16), (0.95, torch.float32), (2.5, torch.float32)])
def test_a_bfloat16_cpu_attends_in_what_measured_faster(
    monkeypatch: pytest.MonkeyPatch, ratio: float, expected: torch.dtype
) -> None:
    monkeypatch.setattr(kv_cache, "bfloat16_attention_time_ratio", lambda heads, head_dim, rows: ratio)
    monkeypatch.setattr(kv_cache, "_measured_ratios", {})
    chosen = choose_cache_precision(torch.bfloat16, torch.device("cpu"), 16, 64, 16)
    assert chosen.dtype == expected
    assert chosen.reason.startswith(chosen.name) and f"{ratio:.2f}x float32's time" in chosen.reason


def test_the_attention_measurement_gives_a_positive_ratio() -> None:
    assert kv_cache.bfloat16_attention_time_ratio(2, 8, 4, rounds=1) > 0


def test_engines_of_one_shape_attend_in_one_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    # A measurement near the threshold must not give two engines built side by side different caches.
    ratios = iter([0.5, 1.5])
    monkeypatch.setattr(kv_cache, "bfloat16_attention_time_ratio", lambda heads, head_dim, rows: next(ratios))
    monkeypatch.setattr(kv_cache, "_measured_ratios", {})
    first = choose_cache_precision(torch.bfloat16, torch.device("cpu"), 4, 8, 8)
    second = choose_cache_precision(torch.bfloat16, torch.device("cpu"), 4, 8, 8)
    assert first == second and first.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["text", "melody", "stereo"])
def test_a_bfloat16_generator_on_a_cpu_keeps_its_codec_in_float32(tiny_models: dict[str, str], kind: str) -> None:
    from musicgen_bento.audio.clip import AudioClip
    from musicgen_bento.generation.generator import MusicGenGenerator
    from musicgen_bento.generation.params import GenerationParams, GenerationRequest
    from musicgen_bento.models.store import find

    info = find(tiny_models[kind])
    assert info is not None
    generator = MusicGenGenerator(info, "cpu", torch.bfloat16, 2.0, 1.0)
    generator.load()
    source = AudioClip(
        0.3 * torch.sin(torch.arange(32000) / 32000 * 2 * torch.pi * 220).repeat(info.channels, 1), 32000
    )
    melody = source if kind == "melody" else None
    request = GenerationRequest(
        GenerationParams(prompt="x", duration_s=0.5, seed=3), audio_prompt=source, melody=melody
    )
    result = generator.generate(request)
    assert result.audio.dtype == torch.float32 and result.audio.shape[0] == info.channels
    assert result.audio.isfinite().all()
    assert generator.decode_engine is not None and generator.decode_engine.runner.decoder.dtype == torch.bfloat16
    codec_weights = {p.dtype for p in generator.decode_engine.model.audio_encoder.parameters()}
    assert codec_weights == {torch.float32}
    generator.close()


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16), ((7, 5), torch.float16)],
    ids=["hopper", "ampere", "ada", "turing"],
)
def test_auto_on_cuda_takes_bfloat16_where_the_gpu_has_it(capability: tuple[int, int], dtype: torch.dtype) -> None:
    chosen = pick_precision("cuda:0", "auto", SMALL, capability=lambda device: capability)
    assert chosen.dtype == dtype
    assert f"compute capability {capability[0]}.{capability[1]}" in chosen.reason


def test_a_chosen_precision_is_kept_on_cuda() -> None:
    chosen = pick_precision("cuda:0", "float16", SMALL, capability=lambda device: (9, 0))
    assert (chosen.dtype, chosen.reason) == (torch.float16, "MUSICGEN_DTYPE=float16")
