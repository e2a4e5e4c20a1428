"""CUDA graphs of the decoding step: captured once per (rows, length, cross length) bucket and
replayed, so a step on a GPU costs one launch instead of hundreds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger("musicgen_bento")

# The decoding step's forward: (rows, attention length, cross length) -> its output buffers (the
# logits, and whether each slot's are finite).
StepOutput = tuple[torch.Tensor, torch.Tensor]
Forward = Callable[[int, int, int], StepOutput]


@dataclass(frozen=True)
class GraphsStatus:
    """Whether decoding steps replay captured CUDA graphs, and why (for health and the log)."""

    on: bool
    reason: str


def padded_rows(rows: int, max_rows: int) -> int:
    """The rows a captured graph computes for `rows` active ones: the next power of two. The extra
    rows are free slots (position 0), whose results are ignored."""
    return min(1 << (rows - 1).bit_length(), max_rows)


class CudaGraphs:
    """Captured steps by bucket. Turns itself off, for good, if a capture fails (or the engine's
    start-up check finds replayed steps wrong): the engine then decodes eagerly.

    `capture` is the seam where a test injects a failing or a wrong capture on a CPU.
    """

    def __init__(self, forward: Forward, device: torch.device, max_rows: int) -> None:
        self._forward = forward
        self._device = device
        self._max_rows = max_rows
        self._graphs: dict[tuple[int, int, int], tuple[Any, StepOutput]] = {}
        self._pool: Any = None
        self.enabled = device.type == "cuda"
        self.reason = "on: not checked yet" if self.enabled else "off: not a CUDA device"
        # While paused (the start-up check's eager run), steps run eagerly but padded as replayed
        # ones are, so that both compute the same rows.
        self.paused = False

    @property
    def active(self) -> bool:
        """Whether the next step replays a graph."""
        return self.enabled and not self.paused

    def status(self) -> GraphsStatus:
        return GraphsStatus(self.enabled, self.reason)

    def turn_off(self, reason: str) -> None:
        """Decodes eagerly from now on, for the life of the process, and says why."""
        if self.enabled:
            logger.error("CUDA graphs turned off, decoding eagerly from now on: %s", reason)
        self.enabled = False
        self.reason = f"off: {reason}"
        self._graphs.clear()

    def clear(self) -> None:
        """Drops every graph (the buffers they read were replaced)."""
        self._graphs.clear()

    def run(self, rows: int, length: int, cross: int) -> StepOutput:
        """The step's output, from the graph of this bucket (captured now if new)."""
        padded = padded_rows(rows, self._max_rows)
        key = (padded, length, cross)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self.capture(padded, length, cross)
            except Exception as error:  # capture is an optimisation: decode eagerly rather than fail
                logger.exception("CUDA graph capture failed")
                self.turn_off(f"capture failed: {type(error).__name__}: {error}")
                return self._forward(rows, length, cross)
            self._graphs[key] = entry
        # The warm-up and capture wrote the cache at the current positions with the same inputs,
        # so replaying now is the step itself.
        entry[0].replay()
        return entry[1]

    def capture(self, rows: int, length: int, cross: int) -> tuple[Any, StepOutput]:
        """Captures the step for (rows, length, cross); returns the graph and its output buffers."""
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture, as CUDA graphs require
                self._forward(rows, length, cross)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # thread_local: request threads keep using the GPU (text encoder, codec) while this thread
        # captures; the default ("global") would fail their allocations.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = self._forward(rows, length, cross)
        return graph, output
