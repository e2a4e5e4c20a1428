"""How many decoding slots fit a memory budget (`MUSICGEN_MAX_MEMORY_MB`): the arithmetic of
weights, KV cache and margin, made from a checkpoint's decoder shape before its weights load.

The arithmetic is pure, so it is tested against the real models' shapes on any machine. The engine
preallocates the cache this plan sizes, so a running node's memory does not grow with its load.
What the engine will hold (its caches' precision, its weights' form) is chosen before the plan and
handed to both, so that the plan and the engine cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MemoryBudgetError
from .kv_cache import CAPACITY_STEP, CROSS_BUCKET, choose_cache_precision, round_up
from .precision import Precision
from .weights import INT8_BYTES_PER_CHANNEL, INT8_BYTES_PER_WEIGHT, WeightLayout, choose_layout

MIB = 1 << 20

# Text tokens a prompt is planned for (cross-attention, or the melody prefix): MusicGen's prompts
# are a sentence or two. Longer ones are refused (`render.pipeline.check_model`): the cache would
# grow for them, in every slot, beyond the plan.
PLANNED_TEXT_TOKENS = 256
# The delay pattern and the start token add a few positions to a window's frames.
_EXTRA_POSITIONS = 16

# What a process holds beside weights, cache and activations: the CUDA context, cuBLAS workspaces
# and captured graphs' pool on a GPU; the interpreter, torch and BentoML on a CPU.
RUNTIME_OVERHEAD_MIB = {"cuda": 1024, "cpu": 768}

# The codec's decoder at the last, full-rate stage: channels x samples, a few tensors alive at once.
_CODEC_CHANNELS = 64
_CODEC_LIVE_TENSORS = 4


@dataclass(frozen=True)
class DecoderShape:
    """A checkpoint's decoder dimensions, and its parameters in all (text encoder, codec and
    decoder): what sizes the weights, the cache and the activations, known without loading them."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    codebooks: int = 4
    vocab: int = 2048
    parameters: int = 0
    sample_rate: int = 32000
    frame_rate: float = 50.0
    melody_prefix: int = 0  # melody models: chroma frames the decoder reads before the text's


@dataclass(frozen=True)
class MemoryPlan:
    """The engine's sizing for a budget: `slots` requests of up to `positions` cache positions."""

    budget_mib: float
    budget_source: str  # "MUSICGEN_MAX_MEMORY_MB" or what the device had free
    weights_mib: float  # as the engine holds them
    loading_mib: float  # the weights as loaded, before the engine quantizes them (int8)
    cache_mib_per_slot: float
    margin_mib: float
    slots: int
    requested_slots: int
    positions: int
    cross_positions: int

    @property
    def total_mib(self) -> float:
        return self.weights_mib + self.slots * self.cache_mib_per_slot + self.margin_mib

    def describe(self) -> str:
        limited = "" if self.slots == self.requested_slots else f" (of {self.requested_slots} asked)"
        loading = "" if self.loading_mib == self.weights_mib else f" ({self.loading_mib:.0f} MiB while loading)"
        return (
            f"{self.slots} slots{limited} of {self.positions} positions: weights {self.weights_mib:.0f} MiB{loading} "
            f"+ cache {self.slots} x {self.cache_mib_per_slot:.0f} MiB + margin {self.margin_mib:.0f} MiB "
            f"= {self.total_mib:.0f} of {self.budget_mib:.0f} MiB ({self.budget_source})"
        )


def cache_bytes_per_slot(shape: DecoderShape, positions: int, cross_positions: int, element_bytes: int) -> int:
    """A slot's KV cache: two rows (conditional, unconditional), keys and values of every layer
    for `positions` self-attention and `cross_positions` cross-attention positions."""
    return 2 * shape.layers * 2 * shape.hidden * (positions + cross_positions) * element_bytes


def activation_margin_bytes(
    shape: DecoderShape, positions: int, slots: int, element_bytes: int, window_samples: int, device_type: str
) -> int:
    """Memory beside weights and cache at the busiest moment: a full-window prefill's activations
    (two rows: residual stream, normalised copy, q|k|v and the feed-forward's inner layer), every
    slot's float32 logits and sampling buffers, the codec decoding a full window, and the runtime."""
    prefill = 2 * positions * (3 * shape.hidden + 3 * shape.hidden + shape.ffn) * element_bytes
    sampling = 3 * 2 * slots * shape.codebooks * shape.vocab * 4
    codec = _CODEC_LIVE_TENSORS * _CODEC_CHANNELS * window_samples * 4
    return prefill + sampling + codec + RUNTIME_OVERHEAD_MIB[device_type] * MIB


def plan_memory(
    *,
    budget_mib: float,
    budget_source: str,
    weights_bytes: int,
    shape: DecoderShape,
    loading_weights_bytes: int | None = None,
    requested_slots: int,
    positions: int,
    cross_positions: int,
    cache_element_bytes: int,
    activation_element_bytes: int,
    window_samples: int,
    device_type: str,
) -> MemoryPlan:
    """As many slots as fit (at most `requested_slots`), each able to hold a full window, beside
    `weights_bytes` of weights as the engine holds them. `loading_weights_bytes` (default: the
    same) is what they take while loading, before the engine quantizes them; the cache is allocated
    after that, so loading needs room for them and the runtime only.

    Raises `MemoryBudgetError`, naming the setting, when not even one slot fits beside the weights,
    or the weights cannot be loaded in the budget.
    """
    per_slot = cache_bytes_per_slot(shape, positions, cross_positions, cache_element_bytes)
    weights_mib = weights_bytes / MIB
    loading_mib = (weights_bytes if loading_weights_bytes is None else loading_weights_bytes) / MIB
    cache_mib = per_slot / MIB
    runtime_mib = RUNTIME_OVERHEAD_MIB[device_type]
    if loading_mib > weights_mib and loading_mib + runtime_mib > budget_mib:
        raise MemoryBudgetError(
            f"the model cannot be loaded in {budget_mib:.0f} MiB ({budget_source}): its weights take "
            f"{loading_mib:.0f} MiB as loaded (held in {weights_mib:.0f} MiB once quantized) and the runtime "
            f"{runtime_mib} MiB; raise MUSICGEN_MAX_MEMORY_MB (--max-memory-mb) or serve a smaller model"
        )

    def margin_for(slots: int) -> float:
        margin = activation_margin_bytes(shape, positions, slots, activation_element_bytes, window_samples, device_type)
        return margin / MIB

    slots = requested_slots
    while slots > 0 and weights_mib + slots * cache_mib + margin_for(slots) > budget_mib:
        slots -= 1
    if slots == 0:
        needed = weights_mib + cache_mib + margin_for(1)
        raise MemoryBudgetError(
            f"the model does not fit in {budget_mib:.0f} MiB ({budget_source}): its weights take "
            f"{weights_mib:.0f} MiB, and one decoding slot with its activations needs {needed - weights_mib:.0f} "
            f"MiB more ({needed:.0f} MiB in all); raise MUSICGEN_MAX_MEMORY_MB (--max-memory-mb), shorten "
            "MUSICGEN_WINDOW_S, or serve a smaller model"
        )
    return MemoryPlan(
        budget_mib=budget_mib,
        budget_source=budget_source,
        weights_mib=weights_mib,
        loading_mib=loading_mib,
        cache_mib_per_slot=cache_mib,
        margin_mib=margin_for(slots),
        slots=slots,
        requested_slots=requested_slots,
        positions=positions,
        cross_positions=cross_positions,
    )


def free_memory_mib(device: str) -> float:
    """What the device has free now: the GPU's free memory on CUDA, available host memory otherwise."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free / MIB
    import psutil

    return float(psutil.virtual_memory().available) / MIB


def cache_precision_for(shape: DecoderShape, *, device: str, dtype: torch.dtype, slots: int) -> Precision:
    """The engine's attention caches' precision for `slots` slots of this decoder (see
    `kv_cache.choose_cache_precision`), chosen before the plan so that the plan reserves it."""
    return choose_cache_precision(dtype, torch.device(device), shape.heads, shape.hidden // shape.heads, 2 * slots)


def weights_layout_for(shape: DecoderShape, *, device: str, dtype: torch.dtype, quantize: bool) -> WeightLayout:
    """How the engine will hold the decoder's linear weights (int8 where `quantize` and PyTorch's
    int8 kernel checks out, packed for oneDNN where that does), chosen before the plan so that the
    plan counts what the engine will hold.

    The checks compare kernels with reference products on a weight of the feed-forward's shape;
    their outcome depends on the kernels and the shape, not on the values, so a random weight
    stands in for the checkpoint's, which are not loaded yet.
    """
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
        shape=shape,
        requested_slots=requested_slots,
        positions=positions,
        cross_positions=cross_positions,
        cache_element_bytes=torch.empty(0, dtype=cache_dtype).element_size(),
        activation_element_bytes=element_bytes,
        window_samples=round(window_s * shape.sample_rate),
        device_type="cuda" if device.startswith("cuda") else "cpu",
    )
