"""How the decoder's weights are held: packed for oneDNN on CPUs in bfloat16 only where the packed
products give `F.linear`'s values, the model keeping one copy and working as before, and the same
tokens from packed and dense engines."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling, weights
from musicgen_bento.engine.memory_plan import MIB
from musicgen_bento.engine.weights import Int8Linear, JointPart, PackedLinear, choose_layout
from musicgen_bento.models.tiny import build_real_shape_model, build_tiny_model, save_tiny_model

from .conftest import decode_together

SAMPLED = Sampling(cfg_coef=3.0, temperature=1.0, top_k=250)

# oneDNN multiplies bfloat16 only on CPUs with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT. Elsewhere
# packing is refused and the weights stay dense (`test_a_cpu_without_onednn_bfloat16_keeps_them_dense`);
# the tests of packing itself need a CPU that packs.
ONEDNN_BFLOAT16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
needs_packing = pytest.mark.skipif(not ONEDNN_BFLOAT16, reason="oneDNN has no bfloat16 kernels on this CPU")


def _bfloat16_model(kind: str) -> tuple[Any, Any]:
    model, processor = build_tiny_model(kind)  # type: ignore[arg-type]
    return model.to(torch.bfloat16), processor


def _linears(model: Any) -> list[torch.nn.Module]:
    decoder = model.decoder
    return [module for module in [*decoder.model.decoder.layers.modules(), *decoder.lm_heads] if _is_linear(module)]


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | PackedLinear | Int8Linear | JointPart)


@pytest.mark.parametrize(
    ("device", "dtype", "reason"),
    [
        ("cuda", torch.float16, "dense: cuda multiplies the weights as they are"),
        ("cpu", torch.float32, "dense: packing is for bfloat16"),
    ],
    ids=["cuda", "cpu-float32"],
)
def test_only_bfloat16_on_a_cpu_is_packed(device: str, dtype: torch.dtype, reason: str) -> None:
    layout = choose_layout(torch.device(device), dtype, torch.zeros(8, 8, dtype=dtype))
    assert not layout.packed
    assert layout.reason.startswith(reason)


@needs_packing
def test_bfloat16_on_this_cpu_is_packed_after_the_check() -> None:
    layout = choose_layout(torch.device("cpu"), torch.bfloat16, torch.randn(64, 32).bfloat16())
    assert layout.packed, layout.reason
    assert "the same values as F.linear" in layout.reason


@pytest.mark.skipif(ONEDNN_BFLOAT16, reason="oneDNN packs bfloat16 on this CPU")
def test_a_cpu_without_onednn_bfloat16_keeps_them_dense() -> None:
    model, _ = _bfloat16_model("text")
    engine = DecodeEngine(model, "cpu", 1)
    try:
        layout = engine.stats().weights
        assert not layout.packed and layout.packed_for_rows == 0
        refused = "dense: no packed layout gives F.linear's values (the layout for 16 rows failed: "
        assert layout.reason.startswith(refused)
        assert "bf16 path needs the cpu support" in layout.reason, "oneDNN's own refusal, quoted"
        assert all(isinstance(module, torch.nn.Linear) for module in _linears(model))
    finally:
        engine.close()


@needs_packing
def test_packed_products_that_differ_keep_the_weights_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: forward(self, x) + 1)
    layout = choose_layout(torch.device("cpu"), torch.bfloat16, torch.randn(64, 32).bfloat16())
    assert not layout.packed
    assert layout.packed_for_rows == 0
    assert layout.reason == (
        "dense: no packed layout gives F.linear's values "
        "(the layout for 16 rows differs at 2 rows; the layout for 1 row differs at 2 rows)"
    )


@needs_packing
def test_a_layout_whose_products_differ_gives_way_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on an AMX CPU, where oneDNN's layout for 16 rows rounds 32 rows and more otherwise than
    # F.linear, and its layout for one row does not.
    forward = PackedLinear.forward

    def differ_from_32_rows(self: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        return forward(self, x) + (1 if self.for_rows == 16 and x.shape[0] >= 32 else 0)

    monkeypatch.setattr(PackedLinear, "forward", differ_from_32_rows)
    model, processor = _bfloat16_model("text")
    dense = DecodeEngine(copy.deepcopy(model), "cpu", 4, EngineOptions(pack_weights=False))
    engine = DecodeEngine(model, "cpu", 4)
    try:
        layout = engine.stats().weights
        assert layout.packed and layout.packed_for_rows == 1
        assert layout.reason.startswith("packed for oneDNN at start-up in its layout for 1 row;")
        assert layout.reason.endswith("; the layout for 16 rows differs at 130 rows")
        assert {module.joint.for_rows for module in model.decoder.lm_heads} == {1}
        codes = _decode_together(engine, processor, "text")
        assert all(torch.equal(a, b) for a, b in zip(codes, _decode_together(dense, processor, "text"), strict=True))
    finally:
        engine.close()
        dense.close()


@needs_packing
def test_packing_that_fails_keeps_the_weights_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(PackedLinear, "forward", refuse)
    model, _ = _bfloat16_model("text")
    engine = DecodeEngine(model, "cpu", 1)
    try:
        layout = engine.stats().weights
        assert not layout.packed
        refused = "RuntimeError: no oneDNN kernel for this CPU"
        assert layout.reason == (
            f"dense: no packed layout gives F.linear's values "
            f"(the layout for 16 rows failed: {refused}; the layout for 1 row failed: {refused})"
        )
        assert all(isinstance(module, torch.nn.Linear) for module in _linears(model))
    finally:
        engine.close()


@needs_packing
@pytest.mark.parametrize("kind", ["text", "melody"])
def test_packing_leaves_one_copy_of_every_linear_weight(kind: str) -> None:
    model, _ = _bfloat16_model(kind)
    dense_bytes = sum(p.numel() * p.element_size() for module in _linears(model) for p in module.parameters())
    before = sum(p.numel() for p in model.decoder.parameters())
    engine = DecodeEngine(model, "cpu", 1)
    try:
        assert engine.stats().weights.packed
        linears = _linears(model)
        assert linears and not any(isinstance(module, torch.nn.Linear) for module in linears)
        # No dense copy is left as a parameter: the decoder lost exactly its linear weights' elements.
        after = sum(p.numel() for p in model.decoder.parameters())
        assert (before - after) * 2 == dense_bytes
        # q, k and v of a layer share one packed product, as the codebooks' heads do.
        attention = model.decoder.model.decoder.layers[0].self_attn
        assert (
            attention.q_proj.joint is attention.k_proj.joint is attention.v_proj.joint is engine.runner.decoder.qkv[0]
        )
        assert {head.joint for head in model.decoder.lm_heads} == {engine.runner.decoder.codebook_heads}
    finally:
        engine.close()


@needs_packing
def test_a_packed_model_generates_what_it_generated_before() -> None:
    model, processor = _bfloat16_model("text")
    inputs = dict(processor(text=["lo fi"], padding=True, return_tensors="pt"))

    def generate() -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=12, do_sample=False, guidance_scale=3.0)  # type: ignore[no-any-return]

    before = generate()
    first = DecodeEngine(model, "cpu", 1)
    second = DecodeEngine(model, "cpu", 1)  # finds the model packed and reuses its products
    try:
        assert torch.equal(generate(), before)
        assert second.runner.decoder.qkv[0] is first.runner.decoder.qkv[0]
        assert second.stats().weights.reason == "packed for oneDNN by an earlier engine on this model"
    finally:
        first.close()
        second.close()


@needs_packing
@pytest.mark.parametrize("kind", ["text", "melody"])
def test_packed_and_dense_engines_give_the_same_tokens_batched(kind: str) -> None:
    model, processor = _bfloat16_model(kind)
    engines = {
        "dense": DecodeEngine(copy.deepcopy(model), "cpu", 4, EngineOptions(pack_weights=False)),
        "packed": DecodeEngine(model, "cpu", 4),
    }
    assert [engine.stats().weights.packed for engine in engines.values()] == [False, True]
    try:
        codes = {name: _decode_together(engine, processor, kind) for name, engine in engines.items()}
        for index, (dense, packed) in enumerate(zip(codes["dense"], codes["packed"], strict=True)):
            assert torch.equal(dense, packed), f"request {index} differs packed"
        assert max(engines["packed"].stats().steps_by_batch) == 4, "the requests did not decode together"
    finally:
        for engine in engines.values():
            engine.close()


def _decode_together(
    engine: DecodeEngine, processor: Any, kind: str, dtype: torch.dtype = torch.bfloat16, only: int | None = None
) -> list[torch.Tensor]:
    """The codes of four requests decoded together (or of request `only`, alone)."""
    requests = []
    for seed in range(4) if only is None else [only]:
        args: dict[str, Any] = {"text": [f"take {seed}"], "padding": True, "return_tensors": "pt"}
        if kind == "melody":
            tone = torch.sin(2 * torch.pi * (220 + 40 * seed) * torch.arange(32000) / 32000)
            args.update(audio=(0.3 * tone).numpy(), sampling_rate=32000)
        inputs = dict(processor(**args))
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(dtype)
        with torch.inference_mode():
            states, mask = engine.encode_conditioning(inputs)
        prompt = torch.randint(0, 2048, (4, 10 + 7 * seed), generator=torch.Generator().manual_seed(seed))
        requests.append(DecodeRequest(states, mask, prompt, 30, SAMPLED, torch.Generator().manual_seed(seed)))
    return decode_together(engine, requests)


# -- int8 (MUSICGEN_QUANTIZE=int8) ---------------------------------------------------------------


def test_int8_is_taken_where_asked_and_its_kernel_checks_out() -> None:
    layout = choose_layout(torch.device("cpu"), torch.float32, torch.randn(64, 32), quantize=True)
    assert layout.int8 and layout.packed and layout.form == "int8", layout.reason
    assert layout.reason.startswith("int8 (MUSICGEN_QUANTIZE=int8): weight-only, one scale per output channel")
    assert choose_layout(torch.device("cpu"), torch.float32, torch.randn(64, 32)).form == "dense"
    on_cuda = choose_layout(torch.device("cuda"), torch.float16, torch.zeros(8, 8), quantize=True)
    assert on_cuda.form == "dense"
    assert on_cuda.reason == "dense: MUSICGEN_QUANTIZE=int8 is for CPUs; cuda multiplies the weights as they are"


def test_int8_products_stay_within_the_quantization_of_the_float_ones() -> None:
    weight = torch.randn(96, 64)
    quantized = Int8Linear(weight, torch.randn(96))
    assert quantized.quantized.dtype == torch.int8 and quantized.quantized.abs().max() <= 127
    for rows in (2, 200):  # the int8 kernel, then the dequantized weight
        x = torch.randn(rows, 64)
        with torch.inference_mode():
            exact = torch.nn.functional.linear(x, weight, quantized.bias)
            assert torch.allclose(quantized(x), exact, atol=0.05 * float(exact.abs().max()))


def test_an_int8_kernel_that_differs_keeps_the_weights_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = Int8Linear.forward
    monkeypatch.setattr(Int8Linear, "forward", lambda self, x: forward(self, x) * 1.1)
    layout = choose_layout(torch.device("cpu"), torch.float32, torch.randn(64, 32), quantize=True)
    assert layout.form == "dense"
    assert layout.reason == (
        "dense: MUSICGEN_QUANTIZE=int8 was asked, but the int8 kernel differs from the dequantized weight's "
        "products at 2 rows"
    )


def test_an_int8_kernel_that_fails_keeps_the_weights_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Int8Linear, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("no int8 kernel for this CPU")

    monkeypatch.setattr(Int8Linear, "forward", refuse)
    model, _ = build_tiny_model("text")
    engine = DecodeEngine(model, "cpu", 1, EngineOptions(quantize=True))
    try:
        assert engine.stats().weights.form == "dense"
        assert engine.stats().weights.reason.endswith("failed: NotImplementedError: no int8 kernel for this CPU")
        assert all(isinstance(module, torch.nn.Linear) for module in _linears(model))
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["text", "melody"])
def test_int8_engines_decode_each_request_as_alone_and_free_the_float_weights(kind: str) -> None:
    model, processor = build_tiny_model(kind)  # type: ignore[arg-type]
    float_weights = sum(p.numel() for module in _linears(model) for p in module.parameters() if p.dim() == 2)
    before = sum(p.numel() for p in model.decoder.parameters())
    engine = DecodeEngine(model, "cpu", 4, EngineOptions(quantize=True))
    try:
        assert engine.stats().weights.form == "int8"
        assert engine.runner.invariance.holds, engine.runner.invariance.reason
        # Every linear weight is held in int8 now; the float ones are gone from the model.
        assert not any(isinstance(module, torch.nn.Linear) for module in _linears(model))
        assert before - sum(p.numel() for p in model.decoder.parameters()) == float_weights
        attention = model.decoder.model.decoder.layers[0].self_attn
        assert isinstance(attention.q_proj.joint, Int8Linear) and attention.q_proj.joint is engine.runner.decoder.qkv[0]
        together = _decode_together(engine, processor, kind, torch.float32)
        alone = [_decode_together(engine, processor, kind, torch.float32, only=index)[0] for index in range(4)]
        for index, (batched, single) in enumerate(zip(together, alone, strict=True)):
            assert torch.equal(batched, single), f"request {index} differs batched"
        assert max(engine.stats().steps_by_batch) == 4, "the requests did not decode together"
    finally:
        engine.close()


def test_quantized_float_weights_go_back_to_the_operating_system() -> None:
    # Freed weights had stayed resident in glibc's heap: a server with int8 weights held more
    # memory than one with float32. Four layers at musicgen-small's widths: 270 MB of float32 linear
    # weights become 70 MB of int8.
    model, _ = build_real_shape_model("musicgen-small", layers=4)
    float_bytes = sum(p.numel() * p.element_size() for module in _linears(model) for p in module.parameters())
    weights.release_replaced_weights(model, False)  # what earlier tests freed is not this test's to count
    before = psutil.Process().memory_info().rss
    engine = DecodeEngine(model, "cpu", 1, EngineOptions(quantize=True))
    try:
        assert engine.stats().weights.form == "int8", engine.stats().weights.reason
        returned = before - psutil.Process().memory_info().rss
        assert returned > float_bytes / 2, f"{returned / MIB:.0f} MiB returned of {float_bytes / MIB:.0f} MiB quantized"
    finally:
        engine.close()


@pytest.mark.parametrize("quantize", [True, False], ids=["int8", "float32"])
def test_int8_weights_let_the_checkpoints_memory_map_go(tmp_path: Path, quantize: bool) -> None:
    # transformers loads a float32 checkpoint as views of its memory-mapped file: with int8 weights
    # the map would keep the replaced float32 ones resident. Float32 weights stay views (all in use).
    directory = save_tiny_model("text", tmp_path / "checkpoint")
    model = MusicgenForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()

    def mapped() -> list[str]:
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(directory) in line]

    assert mapped(), "the checkpoint is memory-mapped as loaded (what this test is about)"
    engine = DecodeEngine(model, "cpu", 1, EngineOptions(quantize=quantize))
    try:
        assert engine.stats().weights.form == ("int8" if quantize else "dense")
        assert bool(mapped()) is not quantize
        processor = AutoProcessor.from_pretrained(directory)
        codes = _decode_together(engine, processor, "text", torch.float32)  # decodes from the copies
        assert len(codes) == 4
    finally:
        engine.close()


def test_a_second_engine_finds_the_model_in_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = build_tiny_model("text")
    first = DecodeEngine(model, "cpu", 1, EngineOptions(quantize=True))
    monkeypatch.setattr(weights, "int8_products_differ", lambda weight: pytest.fail("checked again"))
    second = DecodeEngine(model, "cpu", 1)
    try:
        assert second.stats().weights.reason == "int8: quantized by an earlier engine on this model"
        assert second.runner.decoder.qkv[0] is first.runner.decoder.qkv[0]
        inputs = dict(processor(text=["lo fi"], padding=True, return_tensors="pt"))
        with torch.inference_mode():  # the model's own generate() runs on the int8 modules
            assert model.generate(**inputs, max_new_tokens=8, do_sample=False).shape[-1] > 0
    finally:
        first.close()
        second.close()
