"""The memory budget of this service (`MUSICGEN_MAX_MEMORY_MB`): what the device offers, and the
engine's plan for it, made from the checkpoint before its weights are loaded."""

from __future__ import annotations

import torch

from ..engine import CachePrecision, choose_cache_precision
from ..engine.kv_cache import CAPACITY_STEP, CROSS_BUCKET, round_up
from ..engine.memory_plan import MIB, DecoderDims, MemoryPlan, plan_memory
from ..models.store import DecoderShape

# Text tokens a prompt is planned for (cross-attention, or the melody prefix): MusicGen's prompts
# are a sentence or two. A longer prompt still works; the cache grows for it beyond the plan.
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
) -> MemoryPlan:
    """The engine's slots and cache for this checkpoint in `max_memory_mb` (0: the device's free
    memory), with weights in `dtype` and attention caches in `cache_dtype`."""
    if max_memory_mb:
        budget, source = float(max_memory_mb), "MUSICGEN_MAX_MEMORY_MB"
    else:
        budget, source = free_memory_mib(device), f"free on {device} at start-up"
    frames = round(window_s * shape.frame_rate)
    prefix = shape.melody_prefix + PLANNED_TEXT_TOKENS if is_melody else 0
    positions = round_up(prefix + frames + _EXTRA_POSITIONS, CAPACITY_STEP)
    cross_positions = 0 if is_melody else round_up(PLANNED_TEXT_TOKENS, CROSS_BUCKET)
    element_bytes = torch.empty(0, dtype=dtype).element_size()
    return plan_memory(
        budget_mib=budget,
        budget_source=source,
        weights_bytes=shape.parameters * element_bytes,
        dims=DecoderDims(shape.layers, shape.hidden, shape.ffn, shape.codebooks, shape.vocab),
        requested_slots=requested_slots,
        positions=positions,
        cross_positions=cross_positions,
        cache_element_bytes=torch.empty(0, dtype=cache_dtype).element_size(),
        activation_element_bytes=element_bytes,
        window_samples=round(window_s * shape.sample_rate),
        device_type="cuda" if device.startswith("cuda") else "cpu",
    )
