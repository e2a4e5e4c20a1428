"""What the engine reports: a `StepReport` after every step (for metrics), `EngineStats` on demand."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cuda_graphs import GraphsStatus
from .invariance import BatchInvariance
from .precision import Precision
from .weights import WeightLayout


@dataclass(frozen=True)
class StepReport:
    """What the engine did in one decoding step, for metrics: handed to `DecodeEngine.observer`.

    The engine also reports when it goes idle, with `batch` 0.
    """

    batch: int  # requests decoded together in this step
    decoding: int  # requests holding a slot after it
    waiting: int  # requests queued for a free slot after it
    canceled: int  # requests canceled since the engine started
    admitted: tuple[tuple[int, ...], ...] = ()  # the orders of the requests admitted since the last report
    nonfinite: int = 0  # requests failed since the engine started because their logits were not finite


@dataclass
class EngineStats:
    """Counters the engine keeps since it started (read them with `DecodeEngine.stats()`)."""

    steps: int = 0  # batched decoding steps
    request_steps: int = 0  # requests decoded in those steps, summed
    steps_by_batch: dict[int, int] = field(default_factory=dict)  # batch size -> steps at that size
    admitted: int = 0
    prefills_shared: int = 0  # admitted requests whose prefill was copied from a twin's (`DecodeEngine`)
    canceled: int = 0  # requests that left before their end because their caller gave up
    nonfinite: int = 0  # requests failed because their logits turned to NaN or infinity
    decoding: int = 0  # requests in a slot now
    waiting: int = 0  # requests queued for a slot now
    graph_steps: int = 0  # steps replayed from a captured CUDA graph
    padded_rows: int = 0  # rows computed for free slots alongside the running ones (padded steps)
    threads: int = 0  # CPU threads the engine's own thread computes with (0 until it starts; see `threads`)
    graphs: GraphsStatus = field(default_factory=lambda: GraphsStatus(False, "off: not a CUDA device"))
    invariance: BatchInvariance = field(default_factory=lambda: BatchInvariance(2, False, "not checked"))
    weights: WeightLayout = field(default_factory=lambda: WeightLayout(False, "dense"))
    attention: Precision = field(default_factory=lambda: Precision(torch.float32, "not chosen"))

    def count_step(self, batch: int) -> None:
        self.steps += 1
        self.request_steps += batch
        self.steps_by_batch[batch] = self.steps_by_batch.get(batch, 0) + 1
