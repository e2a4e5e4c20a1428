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

The engine's worker thread is the only one that touches the decoder; callers block in `decode`.
`close()` (also run at interpreter exit) stops it between two steps, so a process never exits
while the worker is inside a torch operation (which aborts the process).
"""

from __future__ import annotations

import atexit
import copy
import heapq
import itertools
import logging
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ShuttingDown

logger = logging.getLogger("musicgen_bento")

StepFn = Callable[[], None]


@dataclass(frozen=True)
class StepReport:
    """What the engine did in one decoding step, for metrics: handed to `DecodeEngine.observer`.

    The engine also reports when it goes idle, with `batch` 0.
    """

    batch: int  # requests decoded together in this step
    decoding: int  # requests holding a slot after it
    waiting: int  # requests queued for a free slot after it
    canceled: int  # requests canceled since the engine started


@dataclass
class EngineStats:
    """Counters the engine keeps since it started (read them with `DecodeEngine.stats()`)."""

    steps: int = 0  # batched decoding steps
    request_steps: int = 0  # requests decoded in those steps, summed
    steps_by_batch: dict[int, int] = field(default_factory=dict)  # batch size -> steps at that size
    admitted: int = 0
    canceled: int = 0  # requests that left before their end because their caller gave up
    decoding: int = 0  # requests in a slot now
    waiting: int = 0  # requests queued for a slot now


# Attention lengths are rounded up to these buckets so the cache slices (and, on CUDA, the
# captured graphs) take few distinct shapes.
_CPU_LENGTH_BUCKET = 64
_CUDA_LENGTH_BUCKET = 256
_CROSS_BUCKET = 16
_CAPACITY_STEP = 256

# How often a caller waiting in `decode` reports its request's steps (and so how soon it sees a
# cancel). Waking every caller at every step would have each request's thread compete with the
# engine's for the interpreter lock once per step, slowing every step of the batch.
_REPORT_INTERVAL_S = 0.05

_SHUTTING_DOWN = "the server is shutting down; retry on another replica or once it is back"


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


@dataclass(frozen=True)
class DecodeRequest:
    """One window of decoding for one request.

    `conditioning` holds two rows, conditional then unconditional: cross-attention states shaped
    (2, S, hidden) with `conditioning_mask` (2, S) for text models, or the decoder prefix shaped
    (2, P, hidden) for melody models (mask None). `prompt_codes` (codebooks, frames) are the audio
    prompt's tokens; `new_frames` frames follow them.
    """

    conditioning: torch.Tensor
    conditioning_mask: torch.Tensor | None
    prompt_codes: torch.Tensor | None
    new_frames: int
    sampling: Sampling
    generator: torch.Generator | None


@dataclass(eq=False)
class _Job:
    request: DecodeRequest
    order: tuple[int, ...]
    cv: threading.Condition = field(default_factory=threading.Condition)
    produced: int = 0
    done: bool = False
    cancel: bool = False
    error: BaseException | None = None
    codes: torch.Tensor | None = None


@dataclass(eq=False)
class _Slot:
    """Host-side state of one running request (rows 2i and 2i+1 of the batch)."""

    job: _Job
    max_length: int  # 1 (start token) + prompt frames + new frames + delay steps
    prefix: int  # melody models: the conditioning prefix's length in the cache
    cross_len: int  # text models: conditioning length
    next_token: int  # index of the token the next step produces


class DecodeEngine:
    """Runs a MusicGen decoder over many concurrent requests with a static cache.

    Args:
        model: a loaded `MusicgenForConditionalGeneration` or `MusicgenMelodyForConditionalGeneration`.
        device: where the model lives (`cpu` or `cuda:N`).
        slots: how many requests decode together at most.
        use_cuda_graphs: capture each decoding step as a CUDA graph (CUDA devices only).
    """

    def __init__(self, model: Any, device: str, slots: int, use_cuda_graphs: bool = True) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.model = model
        self.device = torch.device(device)
        self.slots = slots
        causal_lm = model.decoder
        self._decoder = causal_lm.model.decoder
        self._heads = causal_lm.lm_heads
        config = causal_lm.config
        self.is_melody = not hasattr(self._decoder.layers[0], "encoder_attn")
        self.codebooks = int(config.num_codebooks)
        self.vocab = int(config.vocab_size)
        self.audio_channels = int(config.audio_channels)
        self.delay_steps = self.codebooks // self.audio_channels - 1
        self.start_token = int(model.generation_config.decoder_start_token_id)
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.layers = len(self._decoder.layers)
        self.dtype = next(causal_lm.parameters()).dtype
        self._graphs_on = use_cuda_graphs and self.device.type == "cuda"
        self._length_bucket = _CUDA_LENGTH_BUCKET if self.device.type == "cuda" else _CPU_LENGTH_BUCKET
        # Joint weights, for fewer operations per step (see the module's docstring); the model's
        # own modules keep working on views of them.
        self._qkv = [
            _joint_weight([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
            for layer in self._decoder.layers
        ]
        self._head_weight = _joint_weight(list(self._heads))
        self._embedding = _joint_weight(list(self._decoder.embed_tokens))
        table_rows = self._decoder.embed_tokens[0].weight.shape[0]
        self._embedding_offsets = torch.arange(self.codebooks, device=self.device) * table_rows

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[tuple[tuple[int, ...], int, _Job]] = []
        self._sequence = itertools.count()
        self._active: list[_Slot] = []
        self._worker: threading.Thread | None = None
        self._positions = 0  # self-attention cache capacity
        self._cross_positions = 0  # cross-attention cache capacity
        self._graphs: dict[tuple[int, int, int], tuple[Any, torch.Tensor]] = {}
        empty = torch.empty(0)
        self._cache, self._patterns, self._codes = empty, empty, empty
        self._cross_keys, self._cross_values, self._cross_bias = empty, empty, empty
        self._graph_pool: Any = None
        self._stats = EngineStats()
        # Called on the engine's thread after every step (metrics); must be quick and must not raise.
        self.observer: Callable[[StepReport], None] | None = None
        self._closed = False
        # A daemon thread still inside a torch operation when the interpreter finalises takes the
        # process down with "terminate called without an active exception" (exit status 134).
        atexit.register(_close_if_alive, weakref.ref(self))

    # -- conditioning (called on the requesting thread) ------------------------------------------

    def encode_conditioning(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two conditioning rows (conditional, unconditional) of one request.

        Uses the model's own helpers, exactly as `generate()` with guidance does, so the decoder
        sees the same states: text models get cross-attention states and mask, melody models the
        prefix of projected chroma and text states.
        """
        config = copy.copy(self.model.generation_config)
        config.guidance_scale = 3.0  # any value > 1: both rows are always built
        kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
        if self.is_melody:
            kwargs = self.model._prepare_encoder_hidden_states_kwargs_for_generation(
                inputs["input_ids"], kwargs, "input_ids", config
            )
            return kwargs["encoder_hidden_states"].to(self.dtype), None
        kwargs = self.model._prepare_text_encoder_kwargs_for_generation(
            inputs["input_ids"], kwargs, "input_ids", config
        )
        states = kwargs["encoder_outputs"].last_hidden_state
        mask = kwargs["attention_mask"]
        model_config = self.model.config
        if (
            model_config.text_encoder.hidden_size != model_config.decoder.hidden_size
            and model_config.decoder.cross_attention_hidden_size is None
        ):
            states = self.model.enc_to_dec_proj(states)
        states = states * mask[..., None]
        return states.to(self.dtype), mask.bool()

    # -- the public call -------------------------------------------------------------------------

    def decode(self, request: DecodeRequest, order: tuple[int, ...], on_step: StepFn | None = None) -> torch.Tensor:
        """Decodes one window; blocks until done and returns its codes, (codebooks, frames) on the CPU.

        The codes are the prompt's followed by the new ones, with the delay pattern undone.
        `order` ranks waiting requests (smaller first: arrival order). `on_step` runs on the
        calling thread once per decoding step, in order, for the steps done since its last report
        (reports come every `_REPORT_INTERVAL_S` and at the end); an exception from it (such as
        `GenerationCanceled`) takes the request out of the batch at the next step and is raised.
        """
        prompt_frames = 0 if request.prompt_codes is None else int(request.prompt_codes.shape[1])
        if request.new_frames < 1 or prompt_frames + request.new_frames < self.delay_steps:
            # transformers skips the delay pattern for such short sequences (and returns garbage).
            raise ValueError(
                f"a window needs at least 1 new frame and {self.delay_steps} frames in all; "
                f"got {prompt_frames} + {request.new_frames}"
            )
        job = _Job(request, order)
        with self._lock:
            if self._closed:
                raise ShuttingDown(_SHUTTING_DOWN)
            heapq.heappush(self._waiting, (order, next(self._sequence), job))
            self._ensure_worker()
            self._wake.notify()
        reported = 0
        try:
            while True:
                with job.cv:
                    if not job.done:
                        job.cv.wait(_REPORT_INTERVAL_S)
                    produced, done = job.produced, job.done
                for _ in range(reported, produced):
                    if on_step is not None:
                        on_step()
                reported = produced
                if done:
                    break
        except BaseException:
            job.cancel = True
            raise
        if job.error is not None:
            raise job.error
        assert job.codes is not None
        return job.codes

    def stats(self) -> EngineStats:
        """A copy of the engine's counters."""
        with self._lock:
            stats = copy.copy(self._stats)
            stats.steps_by_batch = dict(stats.steps_by_batch)
            stats.decoding, stats.waiting = len(self._active), len(self._waiting)
            return stats

    @property
    def steps_run(self) -> int:
        """Batched decoding steps since start."""
        return self._stats.steps

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

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        if self.device.type == "cuda":
            # CUDA graph capture and the side streams use the thread's current device, which is
            # cuda:0 unless set: a service on --gpu-id 1 would capture on the wrong GPU.
            torch.cuda.set_device(self.device)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._waiting and not self._active and not self._closed:
                        self._wake.wait()
                    if self._closed:
                        abandoned = [entry[2] for entry in self._waiting]
                        self._waiting.clear()
                        break
                    admitted: list[_Job] = []
                    while self._waiting and len(self._active) + len(admitted) < self.slots:
                        admitted.append(heapq.heappop(self._waiting)[2])
                try:
                    for job in admitted:
                        self._admit(job)
                    for slot in [slot for slot in self._active if slot.job.cancel]:
                        self._finish(slot, None)  # its caller has gone: leave before the next step
                    if self._active:
                        self._step()
                    if not self._active:
                        self._count_step(0)  # idle now: the gauges go back to zero
                except Exception as error:  # a failed step fails the running requests, not the engine
                    logger.exception("decoding step failed")
                    for slot in list(self._active):
                        self._finish(slot, error)
            closed = ShuttingDown(_SHUTTING_DOWN)
            for job in abandoned:
                self._complete(job, closed)
            for slot in list(self._active):
                self._finish(slot, closed)

    def _admit(self, job: _Job) -> None:
        if job.cancel:
            self._stats.canceled += 1
            self._complete(job, error=None)
            return
        self._stats.admitted += 1
        try:
            self._prefill(job)
        except Exception as error:
            logger.exception("prefill failed")
            slot = next((slot for slot in self._active if slot.job is job), None)
            if slot is None:
                self._complete(job, error)
            else:
                self._finish(slot, error)

    def _complete(self, job: _Job, error: BaseException | None, codes: torch.Tensor | None = None) -> None:
        with job.cv:
            job.error = error
            job.codes = codes
            job.done = True
            job.cv.notify_all()

    # -- buffers ---------------------------------------------------------------------------------

    def _reserve(self, positions: int, cross_positions: int) -> None:
        """Grows the caches to hold `positions` (and `cross_positions`), keeping their contents."""
        positions = _round_up(max(positions, self._positions), _CAPACITY_STEP)
        cross_positions = _round_up(max(cross_positions, self._cross_positions, 1), _CROSS_BUCKET)
        rows, device = 2 * self.slots, self.device
        if positions > self._positions:
            # Keys and values side by side (index 0 and 1 of the third dimension), so that a step
            # writes both with one operation per layer.
            cache = torch.zeros(
                (self.layers, rows, 2, self.heads, positions, self.head_dim), dtype=self.dtype, device=device
            )
            if self._positions:
                cache[..., : self._positions, :] = self._cache
            self._cache = cache
            patterns = torch.full((self.slots, self.codebooks, positions), -1, dtype=torch.long, device=device)
            codes = torch.full_like(patterns, self.start_token)
            if self._positions:
                patterns[..., : self._positions] = self._patterns
                codes[..., : self._positions] = self._codes
            self._patterns, self._codes = patterns, codes
            if self._decoder.embed_positions.weights.shape[0] < positions:
                self._decoder.embed_positions.make_weights(positions, self.hidden)
            if not self._positions:
                self._init_row_state()
            self._positions = positions
            self._graphs.clear()
        if not self.is_melody and cross_positions > self._cross_positions:
            shape = (self.layers, rows, self.heads, cross_positions, self.head_dim)
            cross_keys = torch.zeros(shape, dtype=self.dtype, device=device)
            cross_values = torch.zeros(shape, dtype=self.dtype, device=device)
            # Additive (0 or -inf), in the weights' precision: attention kernels take a boolean mask
            # by converting it to this on every call, once per layer per step. New positions are
            # masked: requests already decoding must not attend to them.
            cross_bias = torch.full((rows, cross_positions), -math.inf, dtype=self.dtype, device=device)
            if self._cross_positions:
                cross_keys[..., : self._cross_positions, :] = self._cross_keys
                cross_values[..., : self._cross_positions, :] = self._cross_values
                cross_bias[:, : self._cross_positions] = self._cross_bias
            self._cross_keys, self._cross_values, self._cross_bias = cross_keys, cross_values, cross_bias
            self._cross_positions = cross_positions
            self._graphs.clear()

    def _init_row_state(self) -> None:
        rows, slots, device = 2 * self.slots, self.slots, self.device
        self._row_tokens = torch.full((rows, self.codebooks), self.start_token, dtype=torch.long, device=device)
        self._row_positions = torch.zeros(rows, dtype=torch.long, device=device)
        self._row_index = torch.arange(rows, device=device)
        self._next_token = torch.zeros(slots, dtype=torch.long, device=device)
        self._cfg = torch.ones(slots, dtype=torch.float32, device=device)
        self._guided = torch.zeros(slots, dtype=torch.bool, device=device)
        self._temperature = torch.ones(slots, dtype=torch.float32, device=device)
        self._top_k = torch.ones(slots, dtype=torch.long, device=device)
        self._top_k_on = torch.zeros(slots, dtype=torch.bool, device=device)
        self._top_p_limit = torch.full((slots,), -1.0, dtype=torch.float32, device=device)
        self._greedy = torch.ones(slots, dtype=torch.bool, device=device)
        self._noise = torch.ones((slots, self.codebooks, self.vocab), dtype=torch.float32, device=device)
        self._logits = torch.zeros((rows, self.codebooks, self.vocab), dtype=torch.float32, device=device)

    # -- admission: prefill one request into a free slot ------------------------------------------

    def _prefill(self, job: _Job) -> None:
        request = job.request
        prompt_frames = 0 if request.prompt_codes is None else int(request.prompt_codes.shape[1])
        max_length = 1 + prompt_frames + request.new_frames + self.delay_steps
        prefix = int(request.conditioning.shape[1]) if self.is_melody else 0
        cross_len = 0 if self.is_melody else int(request.conditioning.shape[1])
        self._reserve(prefix + max_length, cross_len)
        index = len(self._active)
        slot = _Slot(job, max_length, prefix, cross_len, next_token=0)
        self._active.append(slot)
        rows = slice(2 * index, 2 * index + 2)
        device = self.device

        # The start token, the prompt and the delay pattern, built as transformers builds them.
        start = torch.full((self.codebooks, 1), self.start_token, dtype=torch.long, device=device)
        ids = start if request.prompt_codes is None else torch.cat([start, request.prompt_codes.to(device)], dim=1)
        ids, pattern = self.model.decoder.build_delay_pattern_mask(ids, self.start_token, max_length=max_length)
        first = ids.shape[1]  # tokens known before decoding: the start token and the prompt
        self._patterns[index].fill_(-1)
        self._patterns[index, :, :max_length] = pattern
        self._codes[index, :, :first] = ids
        self._set_sampling(index, request)

        hidden = self._embed(ids.T).unsqueeze(0).expand(2, -1, -1)
        if self.is_melody:
            hidden = torch.cat([request.conditioning.to(device, self.dtype), hidden], dim=1)
        else:
            states = request.conditioning.to(device, self.dtype)
            assert request.conditioning_mask is not None
            mask = request.conditioning_mask.to(device).clone()
            # The unconditional row's states are zeros (so are its keys and values); letting it
            # attend to them gives the zero output transformers gets from a fully masked row,
            # without relying on how a kernel treats fully masked rows.
            mask[1, :cross_len] = True
            self._cross_bias[rows] = -math.inf
            self._cross_bias[rows, :cross_len] = _additive(mask, self.dtype)
            for layer_index, layer in enumerate(self._decoder.layers):
                attention = layer.encoder_attn
                self._cross_keys[layer_index, rows, :, :cross_len] = self._split_heads(attention.k_proj(states))
                self._cross_values[layer_index, rows, :, :cross_len] = self._split_heads(attention.v_proj(states))
        length = hidden.shape[1]
        hidden = hidden + self._decoder.embed_positions.weights[:length]
        logits = self._prefill_forward(hidden, rows, cross_len)
        self._logits[rows] = logits
        tokens = self._choose(self._logits[rows].view(1, 2, self.codebooks, self.vocab), [slot])
        self._next_token[index] = first
        self._row_positions[rows] = prefix + first - 1
        slot.next_token = first
        self._accept(tokens, [slot], index)

    def _set_sampling(self, index: int, request: DecodeRequest) -> None:
        sampling = request.sampling
        self._cfg[index] = sampling.cfg_coef if sampling.guided else 1.0
        self._guided[index] = sampling.guided
        self._greedy[index] = sampling.greedy
        self._temperature[index] = sampling.temperature if not sampling.greedy else 1.0
        top_k = min(sampling.top_k, self.vocab) if sampling.top_k > 0 else self.vocab
        self._top_k[index] = top_k
        self._top_k_on[index] = sampling.top_k > 0
        # transformers compares cumulative probabilities with the float32 value of (1 - top_p).
        self._top_p_limit[index] = 1.0 - sampling.top_p if 0 < sampling.top_p < 1 else -1.0

    def _prefill_forward(self, hidden: torch.Tensor, rows: slice, cross_len: int) -> torch.Tensor:
        """Runs the decoder over a request's whole start (prefix, start token, prompt), filling its
        cache rows; returns the last position's logits, (2, codebooks, vocab) in float32."""
        length = hidden.shape[1]
        for layer_index, layer in enumerate(self._decoder.layers):
            attention = layer.self_attn
            query, key, value = (
                self._split_heads(part)
                for part in F.linear(layer.self_attn_layer_norm(hidden), self._qkv[layer_index]).chunk(3, dim=-1)
            )
            self._cache[layer_index, rows, 0, :, :length] = key
            self._cache[layer_index, rows, 1, :, :length] = value
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=attention.scaling)
            hidden = hidden + attention.out_proj(self._merge_heads(out))
            if not self.is_melody:
                hidden = hidden + self._cross_attention(
                    layer,
                    hidden,
                    self._cross_keys[layer_index, rows, :, :cross_len],
                    self._cross_values[layer_index, rows, :, :cross_len],
                    self._cross_bias[rows, None, None, :cross_len],
                )
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        return self._head_logits(self._decoder.layer_norm(hidden[:, -1])).float()

    # -- one batched decoding step ----------------------------------------------------------------

    def _step(self) -> None:
        active = self._active
        count = len(active)
        rows = 2 * count
        longest = max(slot.prefix + slot.next_token for slot in active)
        length = min(_round_up(longest, self._length_bucket), self._positions)
        cross = 0 if self.is_melody else _round_up(max(slot.cross_len for slot in active), _CROSS_BUCKET)
        cross = min(cross, self._cross_positions)
        if self._graphs_on:
            logits = self._graph_forward(rows, length, cross)
        else:
            logits = self._decode_forward(rows, length, cross)
        tokens = self._choose(logits[:rows].view(count, 2, self.codebooks, self.vocab), active)
        self._accept(tokens, active, 0)
        self._count_step(count)

    def _count_step(self, batch: int) -> None:
        with self._lock:
            stats = self._stats
            if batch:
                stats.steps += 1
                stats.request_steps += batch
                stats.steps_by_batch[batch] = stats.steps_by_batch.get(batch, 0) + 1
            report = StepReport(batch, len(self._active), len(self._waiting), stats.canceled)
        if self.observer is not None:
            self.observer(report)

    def _decode_forward(self, rows: int, length: int, cross: int) -> torch.Tensor:
        """One token for each of the first `rows` rows; writes and returns `self._logits`."""
        tokens = self._row_tokens[:rows]
        positions = self._row_positions[:rows]
        hidden = (self._embed(tokens) + self._decoder.embed_positions.weights[positions]).unsqueeze(1)
        index = self._row_index[:rows]
        key_value_of_row = (rows, 2, self.heads, self.head_dim)
        visible = torch.arange(length, device=self.device).view(1, 1, 1, length) <= positions.view(rows, 1, 1, 1)
        bias = _additive(visible, self.dtype)
        for layer_index, layer in enumerate(self._decoder.layers):
            attention = layer.self_attn
            projected = F.linear(layer.self_attn_layer_norm(hidden), self._qkv[layer_index])
            query, key_value = projected.split([self.hidden, 2 * self.hidden], dim=-1)
            cache = self._cache[layer_index]
            cache[index, :, :, positions] = key_value.view(key_value_of_row)
            out = F.scaled_dot_product_attention(
                self._split_heads(query),
                cache[:rows, 0, :, :length],
                cache[:rows, 1, :, :length],
                attn_mask=bias,
                scale=attention.scaling,
            )
            hidden = hidden + attention.out_proj(self._merge_heads(out))
            if not self.is_melody:
                hidden = hidden + self._cross_attention(
                    layer,
                    hidden,
                    self._cross_keys[layer_index, :rows, :, :cross],
                    self._cross_values[layer_index, :rows, :, :cross],
                    self._cross_bias[:rows, None, None, :cross],
                )
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        hidden = self._decoder.layer_norm(hidden)
        self._logits[:rows] = self._head_logits(hidden[:, 0])
        return self._logits

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The summed embeddings of every codebook's token: tokens (N, codebooks) → (N, hidden)."""
        return F.embedding(tokens + self._embedding_offsets, self._embedding).sum(dim=1)

    def _head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every codebook's logits: hidden (N, hidden) → (N, codebooks, vocab)."""
        return F.linear(hidden, self._head_weight).view(hidden.shape[0], self.codebooks, self.vocab)

    def _cross_attention(
        self, layer: Any, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        attention = layer.encoder_attn
        query = self._split_heads(attention.q_proj(layer.encoder_attn_layer_norm(hidden)))
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=attention.scaling)
        return attention.out_proj(self._merge_heads(out))  # type: ignore[no-any-return]

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.hidden)

    def _graph_forward(self, rows: int, length: int, cross: int) -> torch.Tensor:
        """The decoding forward as a CUDA graph captured for this (rows, length, cross) bucket.

        Rows are padded to a power of two; padding rows are free slots (position 0), whose
        results are ignored. Falls back to the eager forward if capture fails.
        """
        padded = self._graph_rows(rows)
        key = (padded, length, cross)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm-up outside the capture, as CUDA graphs require
                        self._decode_forward(padded, length, cross)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                if self._graph_pool is None:
                    self._graph_pool = torch.cuda.graph_pool_handle()
                # thread_local: request threads keep using the GPU (text encoder, codec) while
                # this thread captures; the default ("global") would fail their allocations.
                with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                    output = self._decode_forward(padded, length, cross)
                entry = (graph, output)
                self._graphs[key] = entry
            except Exception:  # capture is an optimisation: decode eagerly rather than fail
                logger.exception("CUDA graph capture failed; decoding eagerly from now on")
                self._graphs_on = False
                return self._decode_forward(rows, length, cross)
        # The warm-up and capture above wrote the cache at the current positions with the same
        # inputs, so replaying now is the step itself.
        entry[0].replay()
        return entry[1]

    def _graph_rows(self, rows: int) -> int:
        """The rows a captured graph computes for `rows` active ones: the next power of two."""
        return min(1 << (rows - 1).bit_length(), 2 * self.slots)

    # -- sampling ---------------------------------------------------------------------------------

    def _choose(self, logits: torch.Tensor, slots: list[_Slot]) -> torch.Tensor:
        """Picks each slot's next codes from its (conditional, unconditional) logits.

        `logits` is (slots, 2, codebooks, vocab) in float32. Follows transformers' processors in
        their order: guidance mix, temperature, top-k, top-p, softmax, then a multinomial draw.
        """
        count = len(slots)
        first = self._slot_index(slots[0])
        span = slice(first, first + count)
        cond, uncond = logits[:, 0], logits[:, 1]
        mixed = torch.where(
            self._guided[span, None, None], uncond + (cond - uncond) * self._cfg[span, None, None], cond
        )
        greedy_choice = mixed.argmax(dim=-1)
        sampling = [slot for slot in slots if not slot.job.request.sampling.greedy]
        if not sampling:
            return greedy_choice
        scores = mixed / self._temperature[span, None, None]
        if any(slot.job.request.sampling.top_k > 0 for slot in sampling):
            largest = max(min(slot.job.request.sampling.top_k, self.vocab) for slot in sampling)
            top_values = torch.topk(scores, largest, dim=-1).values
            kth = top_values.gather(
                -1, (self._top_k[span] - 1).clamp(max=largest - 1).view(count, 1, 1).expand(-1, self.codebooks, 1)
            )
            scores = scores.masked_fill(self._top_k_on[span, None, None] & (scores < kth), -math.inf)
        if any(0 < slot.job.request.sampling.top_p < 1 for slot in sampling):
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= self._top_p_limit[span, None, None]
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)
        probs = scores.softmax(dim=-1)
        noise = self._noise[span]
        for offset, slot in enumerate(slots):
            if not slot.job.request.sampling.greedy:
                noise[offset].exponential_(1, generator=slot.job.request.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(self._greedy[span, None], greedy_choice, sampled)

    def _slot_index(self, slot: _Slot) -> int:
        return next(index for index, candidate in enumerate(self._active) if candidate is slot)

    def _accept(self, tokens: torch.Tensor, slots: list[_Slot], first: int) -> None:
        """Applies the delay pattern to new tokens, feeds them back and counts the step for each caller."""
        count = len(slots)
        span = slice(first, first + count)
        where = self._next_token[span].view(count, 1, 1).expand(-1, self.codebooks, 1)
        forced = self._patterns[span].gather(2, where).squeeze(2)
        tokens = torch.where(forced == -1, tokens, forced)
        self._codes[span].scatter_(2, where, tokens.unsqueeze(2))
        rows = slice(2 * first, 2 * (first + count))
        self._row_tokens[rows] = tokens.repeat_interleave(2, dim=0)
        self._row_positions[rows] += 1
        self._next_token[span] += 1
        finished: list[_Slot] = []
        for slot in slots:
            slot.next_token += 1
            job = slot.job
            job.produced += 1  # read by its caller at its next report, without waking it
            if slot.next_token == slot.max_length or job.cancel:
                finished.append(slot)
        for slot in finished:
            self._finish(slot, None)

    def _finish(self, slot: _Slot, error: BaseException | None) -> None:
        """Takes a slot out of the batch (moving the last slot into its place) and answers its caller."""
        index = self._slot_index(slot)
        codes = None
        if error is None and slot.job.cancel:
            self._stats.canceled += 1
        elif error is None:
            codes = self._undelay(self._codes[index, :, : slot.max_length].cpu(), slot.max_length)
        last = len(self._active) - 1
        if index != last:
            self._move(last, index)
        self._active[index] = self._active[last]
        self._active.pop()
        self._row_positions[2 * last : 2 * last + 2] = 0
        self._row_tokens[2 * last : 2 * last + 2] = self.start_token
        self._complete(slot.job, error, codes)

    def _move(self, source: int, target: int) -> None:
        moved = self._active[source]
        used = moved.prefix + moved.next_token
        src, dst = slice(2 * source, 2 * source + 2), slice(2 * target, 2 * target + 2)
        self._cache[:, dst, :, :, :used] = self._cache[:, src, :, :, :used]
        if not self.is_melody:
            self._cross_keys[:, dst] = self._cross_keys[:, src]
            self._cross_values[:, dst] = self._cross_values[:, src]
            self._cross_bias[dst] = self._cross_bias[src]
        self._row_tokens[dst] = self._row_tokens[src]
        self._row_positions[dst] = self._row_positions[src]
        for buffer in (
            self._patterns,
            self._codes,
            self._next_token,
            self._cfg,
            self._guided,
            self._temperature,
            self._top_k,
            self._top_k_on,
            self._top_p_limit,
            self._greedy,
        ):
            buffer[target] = buffer[source]

    def _undelay(self, codes: torch.Tensor, max_length: int) -> torch.Tensor:
        """Undoes the delay pattern: codebook k's frames start k steps late (k // 2 for stereo)."""
        frames = max_length - 1 - self.delay_steps
        rows = [
            codes[k, 1 + k // self.audio_channels : 1 + k // self.audio_channels + frames]
            for k in range(self.codebooks)
        ]
        return torch.stack(rows)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True: attend) as the additive one attention kernels use: 0 or -inf."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)


def _joint_weight(modules: list[Any]) -> torch.Tensor:
    """One weight for several linear or embedding `modules`, their weights stacked along the first
    dimension; each module's weight becomes a view of it, so the model keeps a single copy and
    works as before. Modules already sharing one such weight (another engine on the same model)
    are left as they are."""
    weights = [module.weight for module in modules]
    first, width = weights[0], weights[0].shape[1:]
    rows = sum(weight.shape[0] for weight in weights)
    offsets = itertools.accumulate((weight.shape[0] * weight[0].numel() for weight in weights), initial=0)
    if all(
        weight.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and weight.storage_offset() == first.storage_offset() + offset
        and weight.is_contiguous()
        for weight, offset in zip(weights, offsets, strict=False)  # offsets has one more
    ):
        return first.detach().new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, *width))
    joint = torch.cat([weight.detach() for weight in weights])
    start = 0
    for module, weight in zip(modules, weights, strict=True):
        module.weight = torch.nn.Parameter(joint[start : start + weight.shape[0]], requires_grad=False)
        start += weight.shape[0]
    return joint


def _close_if_alive(engine: weakref.ref[DecodeEngine]) -> None:
    alive = engine()
    if alive is not None:
        alive.close()


def _round_up(value: int, step: int) -> int:
    return int(math.ceil(value / step) * step)
