"""The running batch's per-request tensors, reached by slot index: each request's tokens so far
and delay pattern, its next position, its sampling parameters (handed to the sampler per step),
and its two rows' inputs to the next step. Every per-slot tensor is registered in one place, so
moving a request to another slot (`move`) and adding a sampling option touch one list."""

from __future__ import annotations

import torch

from .requests import Sampling
from .sampler import SamplingParams
from .scheduler import Move


class BatchState:
    """Tensors for `slots` requests; slot i owns rows 2i (conditional) and 2i+1 (unconditional)."""

    def __init__(self, slots: int, codebooks: int, vocab: int, start_token: int, device: torch.device) -> None:
        rows = 2 * slots
        self.slots, self.codebooks, self.vocab, self.start_token, self.device = (
            slots,
            codebooks,
            vocab,
            start_token,
            device,
        )
        # Per row: the tokens the next step embeds and the positions it writes.
        self.row_tokens = torch.full((rows, codebooks), start_token, dtype=torch.long, device=device)
        self.row_positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.row_index = torch.arange(rows, device=device)
        # Per slot: where its next token goes, and how it samples (see `Sampler`).
        self.next_token = torch.zeros(slots, dtype=torch.long, device=device)
        self.cfg = torch.ones(slots, dtype=torch.float32, device=device)
        self.guided = torch.zeros(slots, dtype=torch.bool, device=device)
        self.temperature = torch.ones(slots, dtype=torch.float32, device=device)
        self.top_k = torch.ones(slots, dtype=torch.long, device=device)
        self.top_k_on = torch.zeros(slots, dtype=torch.bool, device=device)
        self.top_p_limit = torch.full((slots,), -1.0, dtype=torch.float32, device=device)
        self.greedy = torch.ones(slots, dtype=torch.bool, device=device)
        # Per slot, growing with the cache: the delay pattern and the tokens so far.
        self.patterns = torch.empty(0)
        self.codes = torch.empty(0)
        self.positions = 0
        # Scratch, never moved: the step's logits and the sampler's noise.
        self.logits = torch.zeros((rows, codebooks, vocab), dtype=torch.float32, device=device)
        self.noise = torch.ones((slots, codebooks, vocab), dtype=torch.float32, device=device)

    def _per_slot(self) -> list[torch.Tensor]:
        """Every tensor indexed by slot that belongs to the request in it."""
        return [
            self.patterns,
            self.codes,
            self.next_token,
            self.cfg,
            self.guided,
            self.temperature,
            self.top_k,
            self.top_k_on,
            self.top_p_limit,
            self.greedy,
        ]

    def reserve(self, positions: int) -> None:
        """Grows the per-slot pattern and token buffers to `positions`, keeping their contents."""
        if positions <= self.positions:
            return
        patterns = torch.full((self.slots, self.codebooks, positions), -1, dtype=torch.long, device=self.device)
        codes = torch.full_like(patterns, self.start_token)
        if self.positions:
            patterns[..., : self.positions] = self.patterns
            codes[..., : self.positions] = self.codes
        self.patterns, self.codes, self.positions = patterns, codes, positions

    def start(self, slot: int, ids: torch.Tensor, pattern: torch.Tensor, sampling: Sampling) -> None:
        """Sets a new request's known tokens `ids` (codebooks, known), its pattern and its sampling."""
        self.patterns[slot].fill_(-1)
        self.patterns[slot, :, : pattern.shape[1]] = pattern
        self.codes[slot, :, : ids.shape[1]] = ids
        self.cfg[slot] = sampling.cfg_coef if sampling.guided else 1.0
        self.guided[slot] = sampling.guided
        self.greedy[slot] = sampling.greedy
        self.temperature[slot] = sampling.temperature if not sampling.greedy else 1.0
        self.top_k[slot] = min(sampling.top_k, self.vocab) if sampling.top_k_limit is not None else self.vocab
        self.top_k_on[slot] = sampling.top_k_limit is not None
        # transformers compares cumulative probabilities with the float32 value of (1 - top_p).
        self.top_p_limit[slot] = 1.0 - sampling.top_p if sampling.top_p_limit is not None else -1.0

    def sampling(
        self, first: int, samplings: list[Sampling], generators: list[torch.Generator | None]
    ) -> SamplingParams:
        """The sampling parameters of the slots from `first` on, one per entry of `samplings`."""
        span = slice(first, first + len(samplings))
        return SamplingParams(
            cfg=self.cfg[span],
            guided=self.guided[span],
            greedy=self.greedy[span],
            temperature=self.temperature[span],
            top_k=self.top_k[span],
            top_k_on=self.top_k_on[span],
            top_p_limit=self.top_p_limit[span],
            noise=self.noise[span],
            samplings=tuple(samplings),
            generators=tuple(generators),
        )

    def move(self, move: Move) -> None:
        """The request in slot `move.source` now lives in slot `move.target`: its tensors follow it."""
        source, target = slice(2 * move.source, 2 * move.source + 2), slice(2 * move.target, 2 * move.target + 2)
        self.row_tokens[target] = self.row_tokens[source]
        self.row_positions[target] = self.row_positions[source]
        for tensor in self._per_slot():
            tensor[move.target] = tensor[move.source]

    def free(self, slot: int) -> None:
        """Resets a slot's rows as a free slot's: the start token at position 0."""
        self.row_positions[2 * slot : 2 * slot + 2] = 0
        self.row_tokens[2 * slot : 2 * slot + 2] = self.start_token
