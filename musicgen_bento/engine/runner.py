"""The engine's model runner: it carries out the scheduler's plan on the batch's tensors, on the
engine's thread. Requests leave (their codes go to their callers, the last slot moves into the
freed one), admitted ones are prefilled into their slots, and one batched step decodes a token
for every running request, whose new frames are handed to streaming callers.

It holds what a step touches: the decoder over the model's weights, the KV cache, the batch state,
the sampler, the delay pattern and, on CUDA, the captured graphs. It never waits and knows no
threads, so it is tested by driving it with a scheduler's plans directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .batch_state import BatchState
from .cuda_graphs import StepOutput, padded_rows
from .decoder import Decoder
from .delay_pattern import DelayPattern
from .finite import FiniteCheck, NonFiniteOutput, finite_slots, non_finite
from .invariance import find_min_rows
from .kv_cache import CROSS_BUCKET, KVCache, choose_cache_precision, round_up, rows_of
from .options import DEFAULT_OPTIONS, EngineOptions
from .request_state import RequestState
from .requests import DecodeRequest
from .sampler import Sampler
from .scheduler import Leave, StepPlan

logger = logging.getLogger("musicgen_bento")

# Attention lengths are rounded up to these buckets so the cache slices (and, on CUDA, the
# captured graphs) take few distinct shapes.
_CPU_LENGTH_BUCKET = 64
_CUDA_LENGTH_BUCKET = 256


@dataclass
class RunnerCounters:
    """What the runner counts since it started (part of `EngineStats`)."""

    prefills_shared: int = 0  # prefills copied from a twin's instead of computed
    canceled: int = 0  # requests that left before their end because their caller gave up
    nonfinite: int = 0  # requests failed because their logits turned to NaN or infinity
    graph_steps: int = 0  # steps replayed from a captured CUDA graph
    padded_rows: int = 0  # rows computed for free slots alongside the running ones


class ModelRunner:
    """Prefill, step, token acceptance, stream hand-off and a request's end, over `slots` slots.

    The arguments are `DecodeEngine`'s (see there).
    """

    def __init__(self, model: Any, device: torch.device, slots: int, options: EngineOptions = DEFAULT_OPTIONS) -> None:
        self.device = device
        self.slots = slots
        self.decoder = Decoder(model, options.pack_weights, options.quantize, options.weights)
        logger.info("decoding engine: weights %s", self.decoder.layout.reason)
        self.is_melody = self.decoder.is_melody
        self.pattern = DelayPattern(model, int(model.generation_config.decoder_start_token_id))
        self.codebooks, self.vocab = self.decoder.codebooks, self.decoder.vocab
        self.attention = options.attention or choose_cache_precision(
            self.decoder.dtype, device, self.decoder.heads, self.decoder.head_dim, 2 * slots
        )
        logger.info("decoding engine: attention caches in %s", self.attention.reason)
        self.cache = KVCache(
            self.decoder.layers,
            2 * slots,
            self.decoder.heads,
            self.decoder.head_dim,
            self.attention.dtype,
            device,
            cross=not self.is_melody,
        )
        self.state = BatchState(slots, self.codebooks, self.vocab, self.pattern.start_token, device)
        self.sampler = Sampler()
        self.graphs = options.graphs(self._forward, device, 2 * slots)
        # Batching must not change a request's tokens; on some machines that needs each step to
        # compute a few rows more than a lone request has (see `invariance`).
        self.invariance = find_min_rows(self.decoder.row_probes(self.cache.dtype), 2 * slots)
        # None: pad while graphs are on (and during their check), as replayed steps are.
        self._pad_rows = options.pad_rows
        self._length_bucket = _CUDA_LENGTH_BUCKET if device.type == "cuda" else _CPU_LENGTH_BUCKET
        self.counters = RunnerCounters()
        self._finite: FiniteCheck[RequestState] = FiniteCheck(device, slots)
        self._logits_hook = options.logits_hook

    def request_state(self, request: DecodeRequest, order: tuple[int, ...]) -> RequestState:
        """A new request's decoding state: its length in the cache follows from its request."""
        conditioned = int(request.conditioning.shape[1])
        return RequestState(
            request,
            order,
            max_length=self.pattern.length(request.prompt_frames + request.new_frames),
            prefix=conditioned if self.is_melody else 0,
            cross_positions=0 if self.is_melody else conditioned,
        )

    def reserve(self, positions: int, cross_positions: int) -> None:
        """Grows the caches and the per-slot buffers to hold `positions` (and `cross_positions`)."""
        if self.cache.reserve(positions, cross_positions):
            self.graphs.clear()
        self.state.reserve(self.cache.positions)
        self.decoder.ensure_positions(self.cache.positions)

    def carry_out(self, plan: StepPlan[RequestState]) -> int:
        """Carries out `plan`; returns how many requests its step decoded (0: no step ran).

        A failed prefill fails its request; a failed step, every request of the batch. Either
        way the request leaves at the next plan, and the runner goes on.
        """
        for failed in self._finite.collect():  # a GPU's flags of the step before: before anyone leaves
            self._fail_non_finite(failed)
        for leave in plan.leaving:
            self.leave(leave)
        for req_state, slot in plan.admitted:
            self._prefill_or_fail(req_state, slot, plan.decoding)
        if not plan.decoding:
            return 0
        try:
            self.step(plan.decoding, plan.positions, plan.cross_positions)
        except Exception as error:
            logger.exception("decoding step failed")
            for req_state in plan.decoding:
                req_state.error = error
        return len(plan.decoding)

    # -- a request's end ----------------------------------------------------------------------------

    def leave(self, leave: Leave[RequestState]) -> None:
        """Answers a leaving request's caller and hands its slot over as the plan says."""
        req_state, slot = leave.request, leave.slot
        codes = None
        if req_state.error is None and req_state.channel.canceled:
            self.counters.canceled += 1
        elif req_state.error is None and slot is not None:
            length = req_state.max_length
            codes = self.pattern.revert(self.state.codes[slot, :, :length].cpu(), length)
        if leave.move is not None and leave.moving is not None:
            self.cache.move(leave.move, used=leave.moving.used)
            self.state.move(leave.move)
        if leave.freed is not None:
            self.state.free(leave.freed)
        req_state.channel.finish(codes, req_state.error)

    # -- admission: prefill one request into its slot -----------------------------------------------

    def _prefill_or_fail(self, req_state: RequestState, slot: int, decoding: Sequence[RequestState]) -> None:
        try:
            self.prefill(req_state, slot, decoding)
        except NonFiniteOutput as error:
            self.counters.nonfinite += 1
            logger.warning("a request failed: %s", error.message)
            req_state.error = error
            self.state.free(slot)
        except Exception as error:
            logger.exception("prefill failed")
            req_state.error = error
            self.state.free(slot)  # its rows compute as a free slot's until it leaves

    def prefill(self, req_state: RequestState, slot: int, decoding: Sequence[RequestState]) -> None:
        """Fills `slot` with the request's start (its cache rows, its known tokens, its sampling)
        and chooses its first token; `decoding` is every request by slot, to find a twin."""
        request = req_state.request
        self.reserve(req_state.prefix + req_state.max_length, req_state.cross_positions)
        rows = rows_of(slot)
        # The start token, the prompt and the delay pattern, built as transformers builds them.
        ids, pattern = self.pattern.build(request.prompt_codes, req_state.max_length, self.device)
        first = ids.shape[1]
        if first != req_state.known:
            raise RuntimeError(f"the delay pattern holds {first} known tokens; the request has {req_state.known}")
        self.state.start(slot, ids, pattern, request.sampling)
        req_state.prefill_ids = ids
        twin = _twin_of(req_state, decoding)
        if twin is not None:
            # The takes of one request (and repeats of one) start from the same conditioning and
            # prompt: the prefill, the costliest part of a continuation on a CPU, would compute
            # the same keys, values and logits again. Those prefill positions are never written
            # again while the twin decodes, so its rows are copied.
            assert twin.prefill_logits is not None
            self.cache.copy_rows(rows_of(decoding.index(twin)), rows, req_state.prefix + first)
            logits = twin.prefill_logits
            self.counters.prefills_shared += 1
        else:
            logits = self._compute_prefill(req_state, ids, rows)
            if not bool(torch.isfinite(logits).all()):
                raise non_finite(self.decoder.dtype, "in the prompt's prefill")
        req_state.prefill_logits = logits
        self.state.logits[rows] = logits
        tokens = self._choose(self.state.logits[rows].view(1, 2, self.codebooks, self.vocab), [req_state], slot)
        self.state.next_token[slot] = first
        self.state.row_positions[rows] = req_state.prefix + first - 1
        req_state.next_token = first
        req_state.published = request.prompt_frames
        self._accept(tokens, [req_state], slot)

    def _compute_prefill(self, req_state: RequestState, ids: torch.Tensor, rows: slice) -> torch.Tensor:
        """Runs the decoder over the request's start into its cache rows; its last logits."""
        request, decoder = req_state.request, self.decoder
        hidden = decoder.embed(ids.T).unsqueeze(0).expand(2, -1, -1)
        if self.is_melody:
            hidden = torch.cat([request.conditioning.to(self.device, decoder.dtype), hidden], dim=1)
        else:
            assert request.conditioning_mask is not None
            req_states = request.conditioning.to(self.device, decoder.dtype)
            decoder.fill_cross(self.cache, rows, req_states, request.conditioning_mask.to(self.device))
        length = hidden.shape[1]
        hidden = hidden + decoder.stack.embed_positions.weights[:length]
        return decoder.prefill(self.cache, hidden, rows, req_state.cross_positions)

    # -- one batched decoding step ------------------------------------------------------------------

    def step(self, decoding: Sequence[RequestState], positions: int, cross_positions: int) -> None:
        """One token for every request in `decoding` (slots 0..n-1), attending over `positions`
        cached positions and `cross_positions` cross-attention ones (rounded up to buckets)."""
        count = len(decoding)
        rows = 2 * count
        length = min(round_up(positions, self._length_bucket), self.cache.positions)
        cross = 0 if self.is_melody else min(round_up(cross_positions, CROSS_BUCKET), self.cache.cross_positions)
        computed = max(rows, self.invariance.min_rows)
        if self.graphs.active:
            logits, finite = self.graphs.run(computed, length, cross)
            self.counters.graph_steps += 1
        else:
            if self.graphs.enabled if self._pad_rows is None else self._pad_rows:
                computed = padded_rows(computed, 2 * self.slots)
            self.counters.padded_rows += computed - rows
            logits, finite = self._forward(computed, length, cross)
        if self._logits_hook is not None:
            self._logits_hook(logits[:rows], tuple(req_state.request for req_state in decoding))
            finite = finite_slots(logits[:rows])  # as the hook left them
        for failed in self._finite.check(finite, decoding):
            self._fail_non_finite(failed)
        tokens = self._choose(logits[:rows].view(count, 2, self.codebooks, self.vocab), decoding, 0)
        self._accept(tokens, decoding, 0)

    def _fail_non_finite(self, req_state: RequestState) -> None:
        """Fails a request whose logits are not finite; it leaves at the next plan, the batch goes on."""
        if req_state.error is None:
            step = req_state.next_token - req_state.known
            req_state.error = non_finite(self.decoder.dtype, f"at decoding step {step}")
            self.counters.nonfinite += 1
            logger.warning("a request failed: %s", req_state.error)

    def _forward(self, rows: int, length: int, cross: int) -> StepOutput:
        """A step's logits and the guard's flags, computed together (captured together on a GPU)."""
        logits = self.decoder.step(self.cache, self.state, rows, length, cross)
        return logits, finite_slots(logits)

    def _choose(self, logits: torch.Tensor, req_states: Sequence[RequestState], first: int) -> torch.Tensor:
        requests = [req_state.request for req_state in req_states]
        params = self.state.sampling(first, [r.sampling for r in requests], [r.generator for r in requests])
        return self.sampler.choose(logits, params)

    def _accept(self, tokens: torch.Tensor, req_states: Sequence[RequestState], first: int) -> None:
        """Applies the delay pattern to new tokens and feeds them back; counts the step for each
        caller and hands streaming callers their completed frames."""
        state = self.state
        count = len(req_states)
        span = slice(first, first + count)
        where = state.next_token[span].view(count, 1, 1).expand(-1, self.codebooks, 1)
        tokens = self.pattern.force(tokens, state.patterns[span], where)
        state.codes[span].scatter_(2, where, tokens.unsqueeze(2))
        rows = slice(2 * first, 2 * (first + count))
        state.row_tokens[rows] = tokens.repeat_interleave(2, dim=0)
        state.row_positions[rows] += 1
        state.next_token[span] += 1
        for offset, req_state in enumerate(req_states):
            if req_state.error is not None:  # a failed prefill's slot decodes as a free one until it leaves
                continue
            req_state.next_token += 1
            req_state.channel.stepped()
            if req_state.request.stream_frames:
                self._hand_over(req_state, first + offset)

    def _hand_over(self, req_state: RequestState, slot: int) -> None:
        """Hands a streaming request the frames completed since the last hand-over, once there are
        `stream_frames` of them (a copy to the host: not at every step)."""
        complete = req_state.next_token - 1 - self.pattern.delay_steps  # frames whose last codebook is decoded
        if complete - req_state.published < req_state.request.stream_frames:
            return
        length = complete - req_state.published + 1 + self.pattern.delay_steps
        # Seen from position `published`, the slice is laid out as a window of its own.
        delayed = self.state.codes[slot, :, req_state.published : req_state.published + length].cpu()
        req_state.published = complete
        req_state.channel.hand_over(self.pattern.revert(delayed, length))


def _twin_of(req_state: RequestState, decoding: Sequence[RequestState]) -> RequestState | None:
    """A decoding request whose prefill was exactly this one's: the same conditioning (text req_states
    and mask, or melody prefix) and the same start tokens."""
    request = req_state.request
    for other in decoding:
        if other is req_state or other.prefill_logits is None or other.error is not None:
            continue
        theirs = other.request
        if (
            other.prefix == req_state.prefix
            and other.cross_positions == req_state.cross_positions
            and _same(other.prefill_ids, req_state.prefill_ids)
            and _same(theirs.conditioning, request.conditioning)
            and _same(theirs.conditioning_mask, request.conditioning_mask)
        ):
            return other
    return None


def _same(mine: torch.Tensor | None, theirs: torch.Tensor | None) -> bool:
    """Both absent, or the same values (the same tensor, often: takes share their conditioning)."""
    if mine is None or theirs is None:
        return mine is theirs
    return mine is theirs or (mine.device == theirs.device and torch.equal(mine, theirs))
