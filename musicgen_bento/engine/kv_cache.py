"""The static attention caches of the running batch: self-attention keys and values for every
position of every row, and (text models) cross-attention keys, values and mask per row. They grow
by whole buckets, keep their contents when they do, and are reached by row."""

from __future__ import annotations

import math

import torch

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

    def move(self, move: Move, used: int) -> None:
        """Copies slot `move.source`'s rows (their first `used` positions) into slot `move.target`'s."""
        source, target = rows_of(move.source), rows_of(move.target)
        self.self_kv[:, target, :, :, :used] = self.self_kv[:, source, :, :, :used]
        if self.has_cross:
            self.cross_keys[:, target] = self.cross_keys[:, source]
            self.cross_values[:, target] = self.cross_values[:, source]
            self.cross_bias[target] = self.cross_bias[source]


def cache_dtype(weights: torch.dtype, device: torch.device) -> torch.dtype:
    """The precision of the attention caches, and so of attention itself.

    GPUs attend in the weights' precision. CPUs attend in float32 whatever the weights: a decoding
    step's attention reads every cached position of every row, and torch's CPU kernels for one
    query against many keys run far slower in bfloat16 than in float32 (measured on the
    development CPU at 16 rows and 768 positions: 16.2 ms a layer in bfloat16, 7.9 in float32;
    at 2 rows 2.1 against 0.7), which made attention most of a batched bfloat16 step. Keys and
    values are computed in the weights' precision and stored rounded from it, so float32 storage
    changes no value the half-precision projections produce.
    """
    return weights if device.type == "cuda" else torch.float32


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True: attend) as the additive one attention kernels use: 0 or -inf."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)


def rows_of(slot: int) -> slice:
    """The batch rows of a slot: its conditional and unconditional row."""
    return slice(2 * slot, 2 * slot + 2)


def round_up(value: int, step: int) -> int:
    """`value` rounded up to a multiple of `step`."""
    return int(math.ceil(value / step) * step)
