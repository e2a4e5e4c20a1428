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
  reproduces transformers' `generate()` token for token with the same seed (see docs/engine.md).
- **CUDA graphs.** On CUDA each step's forward is captured once per (rows, length, text length)
  bucket and replayed; everywhere else it runs eagerly.

It is split as vLLM splits its engine: this module is the engine's core (its thread, the queue and
the callers), `scheduler` decides each step in a frozen plan (plain Python), and `runner` carries
the plan out on the model: prefill, step, token acceptance, stream hand-off, a request's end. The
runner's parts, one file each: `batch_state` (per-request tensors by slot), `kv_cache`, `decoder`
(one layer function for prefill and step), `sampler`, `delay_pattern` and `cuda_graphs`; a
request's state is a `request_state`, and its caller's line to the engine a `channel`.

The engine's worker thread is the only one that touches the decoder; callers block in `decode`.
On a CPU it is also the only thread that runs torch's kernels on several cores (`threads`).
`close()` (also run at interpreter exit) stops it between two steps, so a process never exits
while the worker is inside a torch operation (which aborts the process).
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ShuttingDown
from .cuda_graphs import GraphsStatus
from .options import DEFAULT_OPTIONS, EngineOptions
from .request_state import RequestState
from .requests import DecodeRequest, FramesFn, StepFn
from .runner import ModelRunner
from .scheduler import Scheduler
from .stats import EngineStats, StepReport
from .threads import claim_cores

logger = logging.getLogger("musicgen_bento")

# The graph check runs before any request: its place in the arrival order does not matter.
_CHECK_ORDER = (-1,)

_SHUTTING_DOWN = "the server is shutting down; retry on another replica or once it is back"


class DecodeEngine:
    """Runs a MusicGen decoder over many concurrent requests with a static cache.

    Args:
        model: a loaded `MusicgenForConditionalGeneration` or `MusicgenMelodyForConditionalGeneration`.
        device: where the model lives (`cpu` or `cuda:N`).
        slots: how many requests decode together at most.
        options: how it holds and runs the model (`EngineOptions`).
    """

    def __init__(self, model: Any, device: str, slots: int, options: EngineOptions = DEFAULT_OPTIONS) -> None:
        self.model = model
        self.device = torch.device(device)
        self.slots = slots
        self.runner = ModelRunner(model, self.device, slots, options)
        self.delay_steps = self.runner.pattern.delay_steps
        if not options.use_cuda_graphs:
            self.runner.graphs.turn_off("turned off (use_cuda_graphs=False)")
        self.scheduler: Scheduler[RequestState] = Scheduler(slots)
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
        if options.cache_positions is not None:
            # The memory plan's cache, allocated now: a node's memory does not grow with its load.
            self.runner.reserve(*options.cache_positions)
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
        return self.runner.decoder.encode_conditioning(inputs)

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
        (see `channel`); an exception from it (such as `GenerationCanceled`) takes the request out
        of the batch at the next step and is raised. With `request.stream_frames`, `on_frames`
        runs at those reports too, with the new frames completed since the last (undelayed: a
        frame is complete once its last codebook is); the frames it has not had by the end are in
        the returned codes only.
        """
        if request.new_frames < 1 or request.prompt_frames + request.new_frames < self.delay_steps:
            # transformers skips the delay pattern for such short sequences (and returns garbage).
            raise ValueError(
                f"a window needs at least 1 new frame and {self.delay_steps} frames in all; "
                f"got {request.prompt_frames} + {request.new_frames}"
            )
        req_state = self.runner.request_state(request, order)
        with self._lock:
            if self._closed:
                raise ShuttingDown(_SHUTTING_DOWN)
            self.scheduler.submit(req_state, order)
            self._ensure_worker()
            self._wake.notify()
        return req_state.channel.follow(on_step, on_frames)

    def check_graphs(self, request: DecodeRequest) -> GraphsStatus:
        """The start-up check of CUDA graphs: decodes `request` (greedy) once eagerly and once
        through captured graphs and compares the codes. A failed capture or any difference turns
        graphs off for the life of the engine (logged, and in the returned status); the engine
        then decodes eagerly. Run it while nothing else decodes, as the warm-up does. Without
        graphs (CPUs, turned off) it decodes nothing."""
        if not request.sampling.greedy:
            raise ValueError("the graph check compares greedy decodes: give it temperature 0")
        graphs = self.runner.graphs
        if not graphs.enabled:
            return graphs.status()
        graphs.paused = True
        try:
            eager = self.decode(request, _CHECK_ORDER)
        finally:
            graphs.paused = False
        replayed = self.decode(request, _CHECK_ORDER)
        if not graphs.enabled:  # the capture failed; the graphs said why
            return graphs.status()
        if not torch.equal(eager, replayed):
            differs = (eager != replayed).any(dim=0).nonzero()
            frame = int(differs[0]) if len(differs) else -1
            graphs.turn_off(
                f"replayed steps gave other codes than eager ones at start-up (first at frame {frame} "
                f"of {eager.shape[1]})"
            )
        else:
            graphs.reason = f"on: replayed steps gave the eager steps' codes at start-up ({eager.shape[1]} frames)"
            logger.info("CUDA graphs checked: %s", graphs.reason)
        return graphs.status()

    def stats(self) -> EngineStats:
        """A copy of the engine's counters."""
        runner = self.runner
        with self._lock:
            counters = runner.counters
            return EngineStats(
                steps=self._stats.steps,
                request_steps=self._stats.request_steps,
                steps_by_batch=dict(self._stats.steps_by_batch),
                admitted=self._stats.admitted,
                prefills_shared=counters.prefills_shared,
                canceled=counters.canceled,
                nonfinite=counters.nonfinite,
                decoding=len(self.scheduler.running),
                waiting=self.scheduler.waiting,
                graph_steps=counters.graph_steps,
                padded_rows=counters.padded_rows,
                threads=self._stats.threads,
                graphs=runner.graphs.status(),
                invariance=runner.invariance,
                weights=runner.decoder.layout,
                attention=runner.attention,
            )

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

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="musicgen-decode-engine", daemon=True)
            self._worker.start()

    # -- the engine's thread ---------------------------------------------------------------------

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
                    plan = self.scheduler.schedule()
                self._admitted_since_report += [req_state.order for req_state, _ in plan.admitted]
                self._stats.admitted += len(plan.admitted)
                try:
                    batch = self.runner.carry_out(plan)
                except Exception as error:  # the runner failed outside a step: the batch fails, not the engine
                    logger.exception("the engine's runner failed")
                    for req_state in plan.decoding:
                        req_state.error = error
                    batch = 0
                self._count_step(batch)
            self._shut_down()

    def _count_step(self, batch: int) -> None:
        """Counts a step of `batch` requests (0: none ran, the engine is idle) and reports it."""
        with self._lock:
            if batch:
                self._stats.count_step(batch)
            admitted, self._admitted_since_report = tuple(self._admitted_since_report), []
            counters = self.runner.counters
            waiting = self.scheduler.waiting
            report = StepReport(
                batch, len(self.scheduler.running), waiting, counters.canceled, admitted, counters.nonfinite
            )
        if self.observer is not None:
            self.observer(report)

    def _shut_down(self) -> None:
        """Answers every caller: the finished get their codes, the others `ShuttingDown`."""
        closed = ShuttingDown(_SHUTTING_DOWN)
        with self._lock:
            abandoned = self.scheduler.drain()
            for req_state in self.scheduler.running:
                if not req_state.leaving:
                    req_state.error = closed
            plan = self.scheduler.schedule(admit=False)
        for leave in plan.leaving:
            self.runner.leave(leave)
        for req_state in abandoned:
            req_state.channel.finish(error=closed)


def _close_if_alive(engine: weakref.ref[DecodeEngine]) -> None:
    alive = engine()
    if alive is not None:
        alive.close()
