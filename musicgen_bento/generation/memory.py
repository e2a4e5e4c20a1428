"""The memory budget of this service (`MUSICGEN_MAX_MEMORY_MB`): what the device offers, and the
engine's plan for it, made from the checkpoint before its weights are loaded. What the engine will
hold (its caches' precision, its weights' form) is chosen first and handed to it, so that the plan
and the engine cannot disagree."""

from __future__ import annotations

import torch

from ..engine import CachePrecision, WeightLayout, choose_cache_precision, choose_layout
from ..engine.kv_cache import CAPACITY_STEP, CROSS_BUCKET, round_up
from ..engine.memory_plan import MIB, DecoderDims, MemoryPlan, plan_memory
from ..engine.weights import INT8_BYTES_PER_CHANNEL, INT8_BYTES_PER_WEIGHT
from ..models.store import DecoderShape

# Text tokens a prompt is planned for (cross-attention, or the melody prefix): MusicGen's prompts
# are a sentence or two. Longer ones are refused (`render.pipeline.check_model`): the cache would
# grow for them, in every slot, beyond the plan.
PLANNED_TEXT_TOKENS = 256
# The delay pattern and the start token add a few positions to a window's frames.
_EXTRA_POSITIONS = 16


def free_memory_mib(device: str) -> float:
    """What the device has free now: the GPU's free memory on CUDA, available host memory otherwise."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free / MIB
    import psutil

    return float(psutil.virtual_memory().available) / MIB


def cache_precision_for(
    shape: DecoderShape, *, device: str, dtype: torch.dtype, static: bool, slots: int
) -> CachePrecision:
    """The attention caches' precision, chosen before the plan so that the plan reserves what the
    engine will hold: the static engine's measured choice for `slots` slots, or transformers' own
    cache in the weights' precision."""
    if not static:
        return CachePrecision(dtype, "transformers' own cache, in the weights' precision")
    return choose_cache_precision(dtype, torch.device(device), shape.heads, shape.hidden // shape.heads, 2 * slots)


def weights_layout_for(
    shape: DecoderShape, *, device: str, dtype: torch.dtype, static: bool, quantize: bool
) -> WeightLayout | None:
    """How the static engine will hold the decoder's linear weights (int8 where `quantize` and
    PyTorch's int8 kernel checks out, packed for oneDNN where that does), chosen before the plan
    so that the plan counts what the engine will hold; None for transformers' engine.

    The checks compare kernels with reference products on a weight of the feed-forward's shape;
    their outcome depends on the kernels and the shape, not on the values, so a random weight
    stands in for the checkpoint's, which are not loaded yet.
    """
    if not static:
        return None
    sample = torch.randn(shape.ffn, shape.hidden, generator=torch.Generator().manual_seed(0)).to(dtype)
    return choose_layout(torch.device(device), dtype, sample, quantize)


def int8_linear_weights(shape: DecoderShape, *, is_melody: bool) -> tuple[int, int]:
    """(parameters, output channels) of the decoder's linear weights that `MUSICGEN_QUANTIZE=int8`
    quantizes: every layer's self-attention (q, k, v, out), feed-forward and, in text models,
    cross-attention (q, k, v, out, all hidden x hidden), and the codebooks' heads."""
    hidden, ffn = shape.hidden, shape.ffn
    attention_blocks = 1 if is_melody else 2
    per_layer = attention_blocks * 4 * hidden * hidden + 2 * hidden * ffn
    channels_per_layer = attention_blocks * 4 * hidden + ffn + hidden
    heads = shape.codebooks * shape.vocab
    return shape.layers * per_layer + heads * hidden, shape.layers * channels_per_layer + heads


def plan_for(
    shape: DecoderShape,
    *,
    device: str,
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    max_memory_mb: int,
    requested_slots: int,
    window_s: float,
    is_melody: bool,
    weights: WeightLayout | None = None,
) -> MemoryPlan:
    """The engine's slots and cache for this checkpoint in `max_memory_mb` (0: the device's free
    memory), with weights in `dtype` (the decoder's linear ones in int8 where `weights` says so)
    and attention caches in `cache_dtype`."""
    if max_memory_mb:
        budget, source = float(max_memory_mb), "MUSICGEN_MAX_MEMORY_MB"
    else:
        budget, source = free_memory_mib(device), f"free on {device} at start-up"
    frames = round(window_s * shape.frame_rate)
    prefix = shape.melody_prefix + PLANNED_TEXT_TOKENS if is_melody else 0
    positions = round_up(prefix + frames + _EXTRA_POSITIONS, CAPACITY_STEP)
    cross_positions = 0 if is_melody else round_up(PLANNED_TEXT_TOKENS, CROSS_BUCKET)
    element_bytes = torch.empty(0, dtype=dtype).element_size()
    loaded_bytes = shape.parameters * element_bytes
    held_bytes = loaded_bytes
    if weights is not None and weights.int8:
        parameters, channels = int8_linear_weights(shape, is_melody=is_melody)
        held_bytes += parameters * (INT8_BYTES_PER_WEIGHT - element_bytes) + channels * INT8_BYTES_PER_CHANNEL
    return plan_memory(
        budget_mib=budget,
        budget_source=source,
        weights_bytes=held_bytes,
        loading_weights_bytes=loaded_bytes,
        dims=DecoderDims(shape.layers, shape.hidden, shape.ffn, shape.codebooks, shape.vocab),
        requested_slots=requested_slots,
        positions=positions,
        cross_positions=cross_positions,
        cache_element_bytes=torch.empty(0, dtype=cache_dtype).element_size(),
        activation_element_bytes=element_bytes,
        window_samples=round(window_s * shape.sample_rate),
        device_type="cuda" if device.startswith("cuda") else "cpu",
    )
