"""The engine's value types: what a request asks for (`DecodeRequest`, `Sampling`) and what the
engine reports (`StepReport` after each step, `EngineStats` on demand)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

StepFn = Callable[[], None]
# Receives a request's newly completed frames, (codebooks, frames) on the CPU, in order.
FramesFn = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens (the service's semantics: 0 turns top-k/top-p off)."""

    cfg_coef: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def guided(self) -> bool:
        return self.cfg_coef > 1

    @property
    def top_k_limit(self) -> int | None:
        """The tokens top-k keeps; None when top-k is off."""
        return self.top_k if self.top_k > 0 else None

    @property
    def top_p_limit(self) -> float | None:
        """The probability mass top-p keeps; None when top-p is off."""
        return self.top_p if 0 < self.top_p < 1 else None


@dataclass(frozen=True)
class DecodeRequest:
    """One window of decoding for one request.

    `conditioning` holds two rows, conditional then unconditional: cross-attention states shaped
    (2, S, hidden) with `conditioning_mask` (2, S) for text models, or the decoder prefix shaped
    (2, P, hidden) for melody models (mask None). `prompt_codes` (codebooks, frames) are the audio
    prompt's tokens; `new_frames` frames follow them. `stream_frames` > 0 hands the caller its new
    frames while it decodes, whenever that many more are complete (see `DecodeEngine.decode`).
    """

    conditioning: torch.Tensor
    conditioning_mask: torch.Tensor | None
    prompt_codes: torch.Tensor | None
    new_frames: int
    sampling: Sampling
    generator: torch.Generator | None
    stream_frames: int = 0

    @property
    def prompt_frames(self) -> int:
        return 0 if self.prompt_codes is None else int(self.prompt_codes.shape[1])


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


@dataclass(frozen=True)
class GraphsStatus:
    """Whether decoding steps replay captured CUDA graphs, and why (for health and the log)."""

    on: bool
    reason: str


@dataclass(frozen=True)
class BatchInvariance:
    """The rows a step computes at least, and whether that makes every row independent of the batch."""

    min_rows: int
    holds: bool
    reason: str


@dataclass(frozen=True)
class CachePrecision:
    """The attention caches' precision (and so attention's), and why (`kv_cache.choose_cache_precision`)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class WeightLayout:
    """How the decoder's linear weights are held for its products, and why (`weights`): dense;
    packed for oneDNN; or quantized to int8. Packed and int8 replace the model's linear modules."""

    packed: bool  # the model's linear modules replaced by products holding their weights otherwise
    reason: str
    packed_for_rows: int = 0  # the row count oneDNN's layout was chosen for (0: dense or int8)
    int8: bool = False  # weight-only int8 (MUSICGEN_QUANTIZE=int8) rather than oneDNN's layout

    @property
    def form(self) -> str:
        """`dense`, `packed` or `int8`, as `/health` shows it."""
        return "int8" if self.int8 else "packed" if self.packed else "dense"


@dataclass
class EngineStats:
    """Counters the engine keeps since it started (read them with `DecodeEngine.stats()`)."""

    steps: int = 0  # batched decoding steps
    request_steps: int = 0  # requests decoded in those steps, summed
    steps_by_batch: dict[int, int] = field(default_factory=dict)  # batch size -> steps at that size
    admitted: int = 0
    prefills_shared: int = 0  # admitted requests whose prefill was copied from a twin's (`DecodeEngine`)
    canceled: int = 0  # requests that left before their end because their caller gave up
    decoding: int = 0  # requests in a slot now
    waiting: int = 0  # requests queued for a slot now
    graph_steps: int = 0  # steps replayed from a captured CUDA graph
    padded_rows: int = 0  # rows computed for free slots alongside the running ones (padded steps)
    threads: int = 0  # CPU threads the engine's own thread computes with (0 until it starts; see `threads`)
    graphs: GraphsStatus = field(default_factory=lambda: GraphsStatus(False, "off: not a CUDA device"))
    invariance: BatchInvariance = field(default_factory=lambda: BatchInvariance(2, False, "not checked"))
    weights: WeightLayout = field(default_factory=lambda: WeightLayout(False, "dense"))
    attention: CachePrecision = field(default_factory=lambda: CachePrecision(torch.float32, "not chosen"))

    def count_step(self, batch: int) -> None:
        self.steps += 1
        self.request_steps += batch
        self.steps_by_batch[batch] = self.steps_by_batch.get(batch, 0) + 1
