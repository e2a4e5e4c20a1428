"""The static attention caches of the running batch: self-attention keys and values for every
position of every row, and (text models) cross-attention keys, values and mask per row. They grow
by whole buckets, keep their contents when they do, and are reached by row."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .precision import Precision
from .scheduler import Move

# Capacities grow in these steps, so the slices a step takes (and the graphs captured on CUDA)
# have few distinct shapes.
CAPACITY_STEP = 256
CROSS_BUCKET = 16


class KVCache:
    """Keys and values for `rows` rows (two per slot: conditional, unconditional)."""

    def __init__(
        self, layers: int, rows: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, cross: bool
    ) -> None:
        self.layers, self.rows, self.heads, self.head_dim = layers, rows, heads, head_dim
        self.dtype, self.device = dtype, device
        self.has_cross = cross
        self.positions = 0  # self-attention capacity
        self.cross_positions = 0  # cross-attention capacity
        empty = torch.empty(0)
        # Keys and values side by side (index 0 and 1 of the third dimension), so that a step
        # writes both with one operation per layer: (layers, rows, 2, heads, positions, head_dim).
        self.self_kv = empty
        self.cross_keys, self.cross_values, self.cross_bias = empty, empty, empty

    def reserve(self, positions: int, cross_positions: int) -> bool:
        """Grows the caches to hold `positions` (and `cross_positions`), keeping their contents.
        True when a buffer was replaced (views and graphs taken of the old ones are stale)."""
        positions = round_up(max(positions, self.positions), CAPACITY_STEP)
        cross_positions = round_up(max(cross_positions, self.cross_positions, 1), CROSS_BUCKET)
        grew = False
        if positions > self.positions:
            shape = (self.layers, self.rows, 2, self.heads, positions, self.head_dim)
            cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self.positions:
                cache[..., : self.positions, :] = self.self_kv
            self.self_kv, self.positions, grew = cache, positions, True
        if self.has_cross and cross_positions > self.cross_positions:
            self._grow_cross(cross_positions)
            grew = True
        return grew

    def _grow_cross(self, cross_positions: int) -> None:
        shape = (self.layers, self.rows, self.heads, cross_positions, self.head_dim)
        keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Additive (0 or -inf), in the weights' precision: attention kernels take a boolean mask by
        # converting it to this on every call, once per layer per step. New positions are masked:
        # requests already decoding must not attend to them.
        bias = torch.full((self.rows, cross_positions), -math.inf, dtype=self.dtype, device=self.device)
        if self.cross_positions:
            keys[..., : self.cross_positions, :] = self.cross_keys
            values[..., : self.cross_positions, :] = self.cross_values
            bias[:, : self.cross_positions] = self.cross_bias
        self.cross_keys, self.cross_values, self.cross_bias = keys, values, bias
        self.cross_positions = cross_positions

    def copy_rows(self, source: slice, target: slice, positions: int) -> None:
        """Copies rows `source`'s first `positions` self-attention positions and their
        cross-attention into rows `target` (a request moving slots, a prefill shared)."""
        self.self_kv[:, target, :, :, :positions] = self.self_kv[:, source, :, :, :positions]
        if self.has_cross:
            self.cross_keys[:, target] = self.cross_keys[:, source]
            self.cross_values[:, target] = self.cross_values[:, source]
            self.cross_bias[target] = self.cross_bias[source]

    def move(self, move: Move, used: int) -> None:
        """Copies slot `move.source`'s rows (their first `used` positions) into slot `move.target`'s."""
        self.copy_rows(rows_of(move.source), rows_of(move.target), used)


# A bfloat16 cache on a CPU must measure clearly faster than float32's: a near tie is not worth
# the rounding of every key and value.
_BFLOAT16_ATTENDS_BELOW = 0.8
# The cached positions attention is measured over: a 10 s audio prompt and a few seconds of music.
_MEASURED_POSITIONS = 640
# Measured once per process for each (heads, head size, rows): engines of one shape built side by
# side (a benchmark's variants, a test's) must attend in the same precision, and a measurement near
# the threshold could otherwise come out either way.
_measured_ratios: dict[tuple[int, int, int], float] = {}


def choose_cache_precision(
    weights: torch.dtype, device: torch.device, heads: int, head_dim: int, rows: int
) -> Precision:
    """The precision of the attention caches, and so of a decoding step's attention, and why.

    GPUs attend in the weights' precision, as do float32 CPUs. With bfloat16 weights on a CPU it
    depends on the CPU's kernels for one query against many keys, so it is measured: bfloat16 has
    run several times slower than float32 on AVX-512 BF16 CPUs without AMX, and several times
    faster on AMX CPUs. Either way keys and values are computed in the weights' precision, so a
    float32 cache changes no value the bfloat16 projections produce, and a bfloat16 one rounds none.
    """
    if device.type == "cuda":
        return Precision(weights, "the weights' precision: GPUs attend in it")
    if weights != torch.bfloat16:
        return Precision(torch.float32, f"float32: the weights are {str(weights).removeprefix('torch.')}")
    key = (heads, head_dim, rows)
    if key not in _measured_ratios:
        _measured_ratios[key] = bfloat16_attention_time_ratio(heads, head_dim, rows)
    ratio = _measured_ratios[key]
    measured = (
        f"attending over {_MEASURED_POSITIONS} positions at 2 and {rows} rows took {ratio:.2f}x float32's time "
        "in bfloat16"
    )
    if ratio < _BFLOAT16_ATTENDS_BELOW:
        return Precision(torch.bfloat16, f"bfloat16: {measured}")
    return Precision(torch.float32, f"float32: {measured}")


def bfloat16_attention_time_ratio(heads: int, head_dim: int, rows: int, rounds: int = 3) -> float:
    """bfloat16's time over float32's for a decoding step's attention on this CPU: one query per
    row against `_MEASURED_POSITIONS` cached keys and values (views of a larger cache, as a step's
    are), at a lone request's 2 rows and at `rows`, summed. Best of `rounds` each."""
    seconds = {}
    noise = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        total = 0.0
        for count in sorted({2, max(2, rows)}):
            cache = torch.randn(count, 2, heads, _MEASURED_POSITIONS + CAPACITY_STEP, head_dim, generator=noise)
            cache = cache.to(dtype)
            keys, values = cache[:, 0, :, :_MEASURED_POSITIONS], cache[:, 1, :, :_MEASURED_POSITIONS]
            query = torch.randn(count, heads, 1, head_dim, generator=noise).to(dtype)
            bias = torch.zeros(count, 1, 1, _MEASURED_POSITIONS, dtype=dtype)
            best = float("inf")
            with torch.inference_mode():
                for _ in range(rounds + 1):  # the first round warms up
                    started = time.perf_counter()
                    for _ in range(4):
                        F.scaled_dot_product_attention(query, keys, values, attn_mask=bias)
                    best = min(best, time.perf_counter() - started)
            total += best
        seconds[dtype] = total
    return seconds[torch.bfloat16] / seconds[torch.float32]


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True: attend) as the additive one attention kernels use: 0 or -inf."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)


def rows_of(slot: int) -> slice:
    """The batch rows of a slot: its conditional and unconditional row."""
    return slice(2 * slot, 2 * slot + 2)


def round_up(value: int, step: int) -> int:
    """`value` rounded up to a multiple of `step`."""
    return int(math.ceil(value / step) * step)
