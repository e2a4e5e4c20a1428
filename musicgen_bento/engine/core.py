"""A decoding engine for the MusicGen decoder: static KV cache, on-device sampling, step-level batching.

`DecodeEngine` runs the decoder of a loaded transformers MusicGen (or MusicGen-Melody) model with
its own loop instead of `generate()`, re-using the model's modules and weights:

- **Static cache.** Self-attention keys and values live side by side in one preallocated buffer,
  shaped (layers, rows, 2, heads, positions, head_dim); each step writes one position per row and
  attends over a length bucket of the buffer, masked per row. Cross-attention keys/values (text models) are
  computed once per request; melody models' conditioning prefix (chroma + text) is prefilled into
  the self-attention cache once per request.
- **Few operations per step.** A step at batch 1 costs its number of kernels more than their
  arithmetic: each layer projects query, key and value with one matrix multiplication and writes
  key and value with one indexed copy; the codebooks' heads are one multiplication and their
  embeddings one lookup; attention masks are additive and built once per step.
- **Guidance as one pass.** Every request owns two adjacent rows (conditional, unconditional), so
  classifier-free guidance is part of the batched forward and mixed on the device.
- **Step-level batching.** Requests from any number of threads queue in arrival order; between
  two decoding steps waiting requests are prefilled into free slots, and finished or canceled
  ones leave. Each request keeps its own length, prompt, seed and sampling parameters.
- **Sampling on the device.** The delay pattern, guidance mix, temperature, top-k and top-p are
  batched tensor operations with per-slot parameters; nothing waits for the device per step.
  Sampling draws exponential noise from each request's own `torch.Generator` and takes
  argmax(probs / noise): on the CPU this is exactly what `torch.multinomial` does, so a request
  reproduces transformers' `generate()` token for token with the same seed (see `README.md`).
- **CUDA graphs.** On CUDA each step's forward is captured once per (rows, length, text length)
  bucket and replayed; everywhere else it runs eagerly.

Its parts, one file each: `scheduler` (who decodes; plain Python), `batch_state` (per-request
tensors by slot), `kv_cache`, `decoder` (one layer function for prefill and step), `sampler`,
`delay_pattern` and `cuda_graphs`. This module is the engine's thread and its public calls.

The engine's worker thread is the only one that touches the decoder; callers block in `decode`.
On a CPU it is also the only thread that runs torch's kernels on several cores (`threads`).
`close()` (also run at interpreter exit) stops it between two steps, so a process never exits
while the worker is inside a torch operation (which aborts the process).
"""

from __future__ import annotations

import atexit
import copy
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ShuttingDown
from .batch_state import BatchState
from .cuda_graphs import CudaGraphs, padded_rows
from .decoder import Decoder
from .delay_pattern import DelayPattern
from .invariance import find_min_rows
from .kv_cache import CROSS_BUCKET, KVCache, choose_cache_precision, round_up, rows_of
from .requests import (
    CachePrecision,
    DecodeRequest,
    EngineStats,
    FramesFn,
    GraphsStatus,
    StepFn,
    StepReport,
    WeightLayout,
)
from .sampler import Sampler
from .scheduler import Scheduler
from .threads import claim_cores

logger = logging.getLogger("musicgen_bento")

# Attention lengths are rounded up to these buckets so the cache slices (and, on CUDA, the
# captured graphs) take few distinct shapes.
_CPU_LENGTH_BUCKET = 64
_CUDA_LENGTH_BUCKET = 256

# How often a caller waiting in `decode` reports its request's steps (and so how soon it sees a
# cancel). Waking every caller at every step would have each request's thread compete with the
# engine's for the interpreter lock once per step, slowing every step of the batch.
_REPORT_INTERVAL_S = 0.05

# The graph check runs before any request: its place in the arrival order does not matter.
_CHECK_ORDER = (-1,)

_SHUTTING_DOWN = "the server is shutting down; retry on another replica or once it is back"


@dataclass(eq=False)
class _Job:
    """One request's life in the engine: waiting, then in a slot (rows 2i and 2i+1), then answered."""

    request: DecodeRequest
    order: tuple[int, ...]
    cv: threading.Condition = field(default_factory=threading.Condition)
    produced: int = 0
    done: bool = False
    cancel: bool = False
    error: BaseException | None = None
    codes: torch.Tensor | None = None
    # Set when it takes a slot:
    max_length: int = 0  # 1 (start token) + prompt frames + new frames + delay steps
    prefix: int = 0  # melody models: the conditioning prefix's length in the cache
    cross_len: int = 0  # text models: conditioning length
    prefill_ids: torch.Tensor | None = None  # the start token and the prompt, as prefilled
    prefill_logits: torch.Tensor | None = None  # the prefill's last logits, (2, codebooks, vocab) in float32
    next_token: int = 0  # index of the token the next step produces
    # Streaming (`DecodeRequest.stream_frames`): frames handed over so far (the prompt's count as
    # handed), and the completed ones waiting for the caller's next report.
    published: int = 0
    ready_frames: list[torch.Tensor] = field(default_factory=list)


class DecodeEngine:
    """Runs a MusicGen decoder over many concurrent requests with a static cache.

    Args:
        model: a loaded `MusicgenForConditionalGeneration` or `MusicgenMelodyForConditionalGeneration`.
        device: where the model lives (`cpu` or `cuda:N`).
        slots: how many requests decode together at most.
        use_cuda_graphs: capture each decoding step as a CUDA graph (CUDA devices only).
        cache_positions: (self-attention, cross-attention) positions to allocate the cache for
            now, as a memory plan sized it; without, it grows as requests need.
        pad_rows: compute each step for a power-of-two number of rows, the extra ones free slots,
            as captured graphs do (default: when graphs are used). On a CPU this checks that free
            rows change no request's tokens.
        pack_weights: let the decoder pack its weights for oneDNN where that is checked to give the
            same values (CPUs in bfloat16; see `weights`); False keeps them dense (comparisons).
        attention: the attention caches' precision, as the memory plan reserved them; without, the
            engine chooses it (`kv_cache.choose_cache_precision`).
        quantize: quantize the decoder's linear weights to int8 (CPUs; `weights`), where PyTorch's
            int8 kernel checks out here.
        weights: how to hold the decoder's linear weights, as the memory plan counted them (chosen
            with `weights.choose_layout`); without, the decoder chooses as `pack_weights` and
            `quantize` say.
    """

    def __init__(
        self,
        model: Any,
        device: str,
        slots: int,
        use_cuda_graphs: bool = True,
        pad_rows: bool | None = None,
        graphs: Callable[[Callable[[int, int, int], torch.Tensor], torch.device, int], CudaGraphs] = CudaGraphs,
        cache_positions: tuple[int, int] | None = None,
        pack_weights: bool = True,
        attention: CachePrecision | None = None,
        quantize: bool = False,
        weights: WeightLayout | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.scheduler: Scheduler[_Job] = Scheduler(slots)
        self.slots = slots
        self.decoder = Decoder(model, pack_weights, quantize, weights)
        logger.info("decoding engine: weights %s", self.decoder.layout.reason)
        self.is_melody = self.decoder.is_melody
        self.pattern = DelayPattern(model, int(model.generation_config.decoder_start_token_id))
        self.codebooks, self.vocab = self.decoder.codebooks, self.decoder.vocab
        self.delay_steps = self.pattern.delay_steps
        self.attention = attention or choose_cache_precision(
            self.decoder.dtype, self.device, self.decoder.heads, self.decoder.head_dim, 2 * slots
        )
        logger.info("decoding engine: attention caches in %s", self.attention.reason)
        self.cache = KVCache(
            self.decoder.layers,
            2 * slots,
            self.decoder.heads,
            self.decoder.head_dim,
            self.attention.dtype,
            self.device,
            cross=not self.is_melody,
        )
        self.state = BatchState(slots, self.codebooks, self.vocab, self.pattern.start_token, self.device)
        self.sampler = Sampler(self.state)
        self.graphs = graphs(self._forward, self.device, 2 * slots)
        # Batching must not change a request's tokens; on some machines that needs each step to
        # compute a few rows more than a lone request has (see `invariance`).
        self.invariance = find_min_rows(self.decoder.row_probes(self.cache.dtype), 2 * slots)
        if not use_cuda_graphs:
            self.graphs.turn_off("turned off (use_cuda_graphs=False)")
        # None: pad while graphs are on (and during their check), as replayed steps are.
        self._pad_rows = pad_rows
        self._length_bucket = _CUDA_LENGTH_BUCKET if self.device.type == "cuda" else _CPU_LENGTH_BUCKET

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._stats = EngineStats()
        self._admitted_since_report: list[tuple[int, ...]] = []
        # Called on the engine's thread after every step (metrics); must be quick and must not raise.
        self.observer: Callable[[StepReport], None] | None = None
        self._closed = False
        # A daemon thread still inside a torch operation when the interpreter finalises takes the
        # process down with "terminate called without an active exception" (exit status 134).
        atexit.register(_close_if_alive, weakref.ref(self))
        if cache_positions is not None:
            # The memory plan's cache, allocated now: a node's memory does not grow with its load.
            self._reserve(*cache_positions)
        # Started now, not with the first request: on a CPU it claims the cores (`threads`) before
        # any request's thread computes, which would otherwise keep its own team of threads.
        self._running = threading.Event()
        with self._lock:
            self._ensure_worker()
        self._running.wait()

    # -- the public calls ------------------------------------------------------------------------

    def encode_conditioning(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two conditioning rows (conditional, unconditional) of one request (see `Decoder`);
        runs on the calling thread."""
        return self.decoder.encode_conditioning(inputs)

    def decode(
        self,
        request: DecodeRequest,
        order: tuple[int, ...],
        on_step: StepFn | None = None,
        on_frames: FramesFn | None = None,
    ) -> torch.Tensor:
        """Decodes one window; blocks until done and returns its codes, (codebooks, frames) on the CPU.

        The codes are the prompt's followed by the new ones, with the delay pattern undone.
        `order` ranks waiting requests (smaller first: arrival order). `on_step` runs on the
        calling thread once per decoding step, in order, for the steps done since its last report
        (reports come every `_REPORT_INTERVAL_S` and at the end); an exception from it (such as
        `GenerationCanceled`) takes the request out of the batch at the next step and is raised.
        With `request.stream_frames`, `on_frames` runs at those reports too, with the new frames
        completed since the last (undelayed: a frame is complete once its last codebook is); the
        frames it has not had by the end are in the returned codes only.
        """
        if request.new_frames < 1 or request.prompt_frames + request.new_frames < self.delay_steps:
            # transformers skips the delay pattern for such short sequences (and returns garbage).
            raise ValueError(
                f"a window needs at least 1 new frame and {self.delay_steps} frames in all; "
                f"got {request.prompt_frames} + {request.new_frames}"
            )
        job = _Job(request, order)
        with self._lock:
            if self._closed:
                raise ShuttingDown(_SHUTTING_DOWN)
            self.scheduler.submit(job, order)
            self._ensure_worker()
            self._wake.notify()
        try:
            self._follow(job, on_step, on_frames)
        except BaseException:
            job.cancel = True
            raise
        if job.error is not None:
            raise job.error
        assert job.codes is not None
        return job.codes

    def check_graphs(self, request: DecodeRequest) -> GraphsStatus:
        """The start-up check of CUDA graphs: decodes `request` (greedy) once eagerly and once
        through captured graphs and compares the codes. A failed capture or any difference turns
        graphs off for the life of the engine (logged, and in the returned status); the engine
        then decodes eagerly. Run it while nothing else decodes, as the warm-up does. Without
        graphs (CPUs, turned off) it decodes nothing."""
        if not request.sampling.greedy:
            raise ValueError("the graph check compares greedy decodes: give it temperature 0")
        if not self.graphs.enabled:
            return self.graphs.status()
        self.graphs.paused = True
        try:
            eager = self.decode(request, _CHECK_ORDER)
        finally:
            self.graphs.paused = False
        replayed = self.decode(request, _CHECK_ORDER)
        if not self.graphs.enabled:  # the capture failed; the graphs said why
            return self.graphs.status()
        if not torch.equal(eager, replayed):
            differs = (eager != replayed).any(dim=0).nonzero()
            frame = int(differs[0]) if len(differs) else -1
            self.graphs.turn_off(
                f"replayed steps gave other codes than eager ones at start-up (first at frame {frame} "
                f"of {eager.shape[1]})"
            )
        else:
            self.graphs.reason = f"on: replayed steps gave the eager steps' codes at start-up ({eager.shape[1]} frames)"
            logger.info("CUDA graphs checked: %s", self.graphs.reason)
        return self.graphs.status()

    def stats(self) -> EngineStats:
        """A copy of the engine's counters."""
        with self._lock:
            stats = copy.copy(self._stats)
            stats.steps_by_batch = dict(stats.steps_by_batch)
            stats.decoding, stats.waiting = len(self.scheduler.running), self.scheduler.waiting
            stats.graphs = self.graphs.status()
            stats.invariance = self.invariance
            stats.weights = self.decoder.layout
            stats.attention = self.attention
            return stats

    @property
    def steps_run(self) -> int:
        """Batched decoding steps since start."""
        return self._stats.steps

    @property
    def alive(self) -> bool:
        """Whether the engine's worker thread runs (it starts with the engine, ends at `close`)."""
        return self._worker is not None and self._worker.is_alive()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stops the worker between two steps; waiting and running requests fail with `ShuttingDown`.

        Waits up to `timeout_s` for the step in progress. Safe to call more than once.
        """
        with self._lock:
            self._closed = True
            self._wake.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)

    def _follow(self, job: _Job, on_step: StepFn | None, on_frames: FramesFn | None) -> None:
        """Waits for `job`, reporting its steps to `on_step` and its frames to `on_frames` as they come."""
        reported = 0
        while True:
            with job.cv:
                if not job.done:
                    job.cv.wait(_REPORT_INTERVAL_S)
                produced, done = job.produced, job.done
                ready, job.ready_frames = job.ready_frames, []
            for _ in range(reported, produced):
                if on_step is not None:
                    on_step()
            reported = produced
            if on_frames is not None:
                for frames in ready:
                    on_frames(frames)
            if done:
                return

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="musicgen-decode-engine", daemon=True)
            self._worker.start()

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.device.type == "cuda":
                # CUDA graph capture and the side streams use the thread's current device, which is
                # cuda:0 unless set: a service on --gpu-id 1 would capture on the wrong GPU.
                torch.cuda.set_device(self.device)
                self._stats.threads = torch.get_num_threads()
            else:
                # On a CPU, other threads' parallel kernels would slow each of the engine's (`threads`).
                self._stats.threads = claim_cores()
        finally:
            self._running.set()  # the constructor waits for this, even if the thread failed to start
        with torch.inference_mode():
            while True:
                with self._lock:
                    while self.scheduler.idle and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        break
                    admitted = self.scheduler.admit()
                self._between_steps(admitted)
            self._shut_down()

    def _between_steps(self, admitted: list[_Job]) -> None:
        """Admits the new requests, lets the canceled ones go and runs one step."""
        try:
            for job in admitted:
                self._admit(job)
            for job in [job for job in self.scheduler.running if job.cancel]:
                self._finish(job, None)  # its caller has gone: leave before the next step
            if self.scheduler.running:
                self._step()
            if not self.scheduler.running:
                self._count_step(0)  # idle now: the gauges go back to zero
        except Exception as error:  # a failed step fails the running requests, not the engine
            logger.exception("decoding step failed")
            for job in list(self.scheduler.running):
                self._finish(job, error)

    def _shut_down(self) -> None:
        closed = ShuttingDown(_SHUTTING_DOWN)
        with self._lock:
            abandoned = self.scheduler.drain()
        for job in abandoned:
            self._complete(job, closed)
        for job in list(self.scheduler.running):
            self._finish(job, closed)

    def _admit(self, job: _Job) -> None:
        if job.cancel:
            self._stats.canceled += 1
            self._complete(job, error=None)
            return
        self._stats.admitted += 1
        self._admitted_since_report.append(job.order)
        try:
            self._prefill(job)
        except Exception as error:
            logger.exception("prefill failed")
            if job in self.scheduler.running:
                self._finish(job, error)
            else:
                self._complete(job, error)

    def _complete(self, job: _Job, error: BaseException | None, codes: torch.Tensor | None = None) -> None:
        with job.cv:
            job.error = error
            job.codes = codes
            job.done = True
            job.cv.notify_all()

    def _reserve(self, positions: int, cross_positions: int) -> None:
        """Grows the caches and the per-slot buffers to hold `positions` (and `cross_positions`)."""
        if self.cache.reserve(positions, cross_positions):
            self.graphs.clear()
        self.state.reserve(self.cache.positions)
        self.decoder.ensure_positions(self.cache.positions)

    # -- admission: prefill one request into a free slot ------------------------------------------

    def _prefill(self, job: _Job) -> None:
        request = job.request
        job.max_length = self.pattern.length(request.prompt_frames + request.new_frames)
        job.prefix = int(request.conditioning.shape[1]) if self.is_melody else 0
        job.cross_len = 0 if self.is_melody else int(request.conditioning.shape[1])
        self._reserve(job.prefix + job.max_length, job.cross_len)
        index = self.scheduler.place(job)
        rows = rows_of(index)
        device = self.device

        # The start token, the prompt and the delay pattern, built as transformers builds them.
        ids, pattern = self.pattern.build(request.prompt_codes, job.max_length, device)
        first = ids.shape[1]  # tokens known before decoding: the start token and the prompt
        self.state.start(index, ids, pattern, request.sampling)
        job.prefill_ids = ids

        twin = self._twin_of(job)
        if twin is not None:
            # The takes of one request (and repeats of one) start from the same conditioning and
            # prompt: the prefill, the costliest part of a continuation on a CPU, would compute
            # the same keys, values and logits again. Those prefill positions are never written
            # again while the twin decodes, so its rows are copied.
            assert twin.prefill_logits is not None
            self.cache.copy_rows(rows_of(self.scheduler.slot_of(twin)), rows, job.prefix + first)
            logits = twin.prefill_logits
            self._stats.prefills_shared += 1
        else:
            logits = self._compute_prefill(job, ids, rows)
        job.prefill_logits = logits
        self.state.logits[rows] = logits
        tokens = self._choose(self.state.logits[rows].view(1, 2, self.codebooks, self.vocab), [job], index)
        self.state.next_token[index] = first
        self.state.row_positions[rows] = job.prefix + first - 1
        job.next_token = first
        job.published = request.prompt_frames
        self._accept(tokens, [job], index)

    def _compute_prefill(self, job: _Job, ids: torch.Tensor, rows: slice) -> torch.Tensor:
        """Runs the decoder over the request's start into its cache rows; its last logits."""
        request, device = job.request, self.device
        hidden = self.decoder.embed(ids.T).unsqueeze(0).expand(2, -1, -1)
        if self.is_melody:
            hidden = torch.cat([request.conditioning.to(device, self.decoder.dtype), hidden], dim=1)
        else:
            assert request.conditioning_mask is not None
            states = request.conditioning.to(device, self.decoder.dtype)
            self.decoder.fill_cross(self.cache, rows, states, request.conditioning_mask.to(device))
        length = hidden.shape[1]
        hidden = hidden + self.decoder.stack.embed_positions.weights[:length]
        return self.decoder.prefill(self.cache, hidden, rows, job.cross_len)

    def _twin_of(self, job: _Job) -> _Job | None:
        """A decoding request whose prefill was exactly this one's: the same conditioning (text
        states and mask, or melody prefix) and the same start tokens."""
        request = job.request
        for other in self.scheduler.running:
            if other is job or other.prefill_logits is None or other.prefix != job.prefix:
                continue
            theirs = other.request
            if (
                other.cross_len == job.cross_len
                and _same(other.prefill_ids, job.prefill_ids)
                and _same(theirs.conditioning, request.conditioning)
                and _same(theirs.conditioning_mask, request.conditioning_mask)
            ):
                return other
        return None

    # -- one batched decoding step ----------------------------------------------------------------

    def _step(self) -> None:
        running = self.scheduler.running
        count = len(running)
        rows = 2 * count
        longest = max(job.prefix + job.next_token for job in running)
        length = min(round_up(longest, self._length_bucket), self.cache.positions)
        cross = 0 if self.is_melody else round_up(max(job.cross_len for job in running), CROSS_BUCKET)
        cross = min(cross, self.cache.cross_positions)
        computed = max(rows, self.invariance.min_rows)
        if self.graphs.active:
            logits = self.graphs.run(computed, length, cross)
            self._stats.graph_steps += 1
        else:
            if self.graphs.enabled if self._pad_rows is None else self._pad_rows:
                computed = padded_rows(computed, 2 * self.slots)
            self._stats.padded_rows += computed - rows
            logits = self._forward(computed, length, cross)
        tokens = self._choose(logits[:rows].view(count, 2, self.codebooks, self.vocab), running, 0)
        self._accept(tokens, list(running), 0)
        self._count_step(count)

    def _forward(self, rows: int, length: int, cross: int) -> torch.Tensor:
        return self.decoder.step(self.cache, self.state, rows, length, cross)

    def _choose(self, logits: torch.Tensor, jobs: list[_Job], first: int) -> torch.Tensor:
        samplings = [job.request.sampling for job in jobs]
        generators = [job.request.generator for job in jobs]
        return self.sampler.choose(logits, first, samplings, generators)

    def _count_step(self, batch: int) -> None:
        with self._lock:
            if batch:
                self._stats.count_step(batch)
            admitted, self._admitted_since_report = tuple(self._admitted_since_report), []
            report = StepReport(
                batch, len(self.scheduler.running), self.scheduler.waiting, self._stats.canceled, admitted
            )
        if self.observer is not None:
            self.observer(report)

    def _accept(self, tokens: torch.Tensor, jobs: list[_Job], first: int) -> None:
        """Applies the delay pattern to new tokens, feeds them back and counts the step for each caller."""
        state = self.state
        count = len(jobs)
        span = slice(first, first + count)
        where = state.next_token[span].view(count, 1, 1).expand(-1, self.codebooks, 1)
        tokens = self.pattern.force(tokens, state.patterns[span], where)
        state.codes[span].scatter_(2, where, tokens.unsqueeze(2))
        rows = slice(2 * first, 2 * (first + count))
        state.row_tokens[rows] = tokens.repeat_interleave(2, dim=0)
        state.row_positions[rows] += 1
        state.next_token[span] += 1
        finished: list[_Job] = []
        for offset, job in enumerate(jobs):
            job.next_token += 1
            job.produced += 1  # read by its caller at its next report, without waking it
            if job.request.stream_frames:
                self._publish(job, first + offset)
            if job.next_token == job.max_length or job.cancel:
                finished.append(job)
        for job in finished:
            self._finish(job, None)

    def _publish(self, job: _Job, index: int) -> None:
        """Hands a streaming request the frames completed since the last hand-over, once there are
        `stream_frames` of them (a copy to the host: not at every step)."""
        complete = job.next_token - 1 - self.delay_steps  # frames whose last codebook is decoded
        if complete - job.published < job.request.stream_frames:
            return
        length = complete - job.published + 1 + self.delay_steps
        # Seen from position `published`, the slice is laid out as a window of its own.
        delayed = self.state.codes[index, :, job.published : job.published + length].cpu()
        frames = self.pattern.revert(delayed, length)
        job.published = complete
        with job.cv:
            job.ready_frames.append(frames)

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        """Takes a request out of the batch (the last slot moves into its place) and answers its caller."""
        index = self.scheduler.slot_of(job)
        codes = None
        if error is None and job.cancel:
            self._stats.canceled += 1
        elif error is None:
            codes = self.pattern.revert(self.state.codes[index, :, : job.max_length].cpu(), job.max_length)
        last = len(self.scheduler.running) - 1
        move = self.scheduler.remove(job)
        if move is not None:
            moved = self.scheduler.running[move.target]
            self.cache.move(move, used=moved.prefix + moved.next_token)
            self.state.move(move)
        self.state.free(last)
        self._complete(job, error, codes)


def _same(mine: torch.Tensor | None, theirs: torch.Tensor | None) -> bool:
    """Both absent, or the same values (the same tensor, often: takes share their conditioning)."""
    if mine is None or theirs is None:
        return mine is theirs
    return mine is theirs or (mine.device == theirs.device and torch.equal(mine, theirs))


def _close_if_alive(engine: weakref.ref[DecodeEngine]) -> None:
    alive = engine()
    if alive is not None:
        alive.close()
