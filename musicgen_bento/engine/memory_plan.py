"""How many decoding slots fit a memory budget: the arithmetic of weights, KV cache and margin.

Pure arithmetic, so it is tested against the real models' shapes on any machine. The engine
preallocates the cache this plan sizes, so a running node's memory does not grow with its load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MemoryBudgetError

MIB = 1 << 20

# What a process holds beside weights, cache and activations: the CUDA context, cuBLAS workspaces
# and captured graphs' pool on a GPU; the interpreter, torch and BentoML on a CPU.
RUNTIME_OVERHEAD_MIB = {"cuda": 1024, "cpu": 768}

# The codec's decoder at the last, full-rate stage: channels x samples, a few tensors alive at once.
_CODEC_CHANNELS = 64
_CODEC_LIVE_TENSORS = 4


@dataclass(frozen=True)
class DecoderDims:
    """The decoder's dimensions that size its cache and activations."""

    layers: int
    hidden: int
    ffn: int
    codebooks: int
    vocab: int


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


def cache_bytes_per_slot(dims: DecoderDims, positions: int, cross_positions: int, element_bytes: int) -> int:
    """A slot's KV cache: two rows (conditional, unconditional), keys and values of every layer
    for `positions` self-attention and `cross_positions` cross-attention positions."""
    return 2 * dims.layers * 2 * dims.hidden * (positions + cross_positions) * element_bytes


def activation_margin_bytes(
    dims: DecoderDims, positions: int, slots: int, element_bytes: int, window_samples: int, device_type: str
) -> int:
    """Memory beside weights and cache at the busiest moment: a full-window prefill's activations
    (two rows: residual stream, normalised copy, q|k|v and the feed-forward's inner layer), every
    slot's float32 logits and sampling buffers, the codec decoding a full window, and the runtime."""
    prefill = 2 * positions * (3 * dims.hidden + 3 * dims.hidden + dims.ffn) * element_bytes
    sampling = 3 * 2 * slots * dims.codebooks * dims.vocab * 4
    codec = _CODEC_LIVE_TENSORS * _CODEC_CHANNELS * window_samples * 4
    return prefill + sampling + codec + RUNTIME_OVERHEAD_MIB[device_type] * MIB


def plan_memory(
    *,
    budget_mib: float,
    budget_source: str,
    weights_bytes: int,
    dims: DecoderDims,
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
    per_slot = cache_bytes_per_slot(dims, positions, cross_positions, cache_element_bytes)
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
        margin = activation_margin_bytes(dims, positions, slots, activation_element_bytes, window_samples, device_type)
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
