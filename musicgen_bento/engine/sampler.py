"""Sampling on the device, as an ordered pipeline of small steps that follows transformers'
logits processors: guidance mix, temperature, top-k, top-p, then a multinomial draw. Each step
reads the per-slot parameters `BatchState.start` set, so requests with different settings share
one batched operation."""

from __future__ import annotations

import math

import torch

from .batch_state import BatchState
from .requests import Sampling


class Sampler:
    """Picks the next codes of a span of consecutive slots from their logits."""

    def __init__(self, state: BatchState) -> None:
        self.state = state

    def choose(
        self, logits: torch.Tensor, first: int, samplings: list[Sampling], generators: list[torch.Generator | None]
    ) -> torch.Tensor:
        """Each slot's next codes, (slots, codebooks), for slots `first`.. (one per `samplings` entry).

        `logits` is (slots, 2, codebooks, vocab) in float32: the conditional and unconditional
        row of each slot. Noise is drawn from each request's own generator.
        """
        span = slice(first, first + len(samplings))
        mixed = self._guidance(logits, span)
        greedy_choice = mixed.argmax(dim=-1)
        drawing = [not sampling.greedy for sampling in samplings]
        if not any(drawing):
            return greedy_choice
        scores = mixed / self.state.temperature[span, None, None]
        sampled_settings = [sampling for sampling, draws in zip(samplings, drawing, strict=True) if draws]
        if any(sampling.top_k_limit is not None for sampling in sampled_settings):
            scores = self._top_k(scores, span, max(min(s.top_k, self.state.vocab) for s in sampled_settings))
        if any(sampling.top_p_limit is not None for sampling in sampled_settings):
            scores = self._top_p(scores, span)
        sampled = self._draw(scores.softmax(dim=-1), span, drawing, generators)
        return torch.where(self.state.greedy[span, None], greedy_choice, sampled)

    def _guidance(self, logits: torch.Tensor, span: slice) -> torch.Tensor:
        """Classifier-free guidance: uncond + (cond - uncond) * cfg, for the guided slots."""
        state = self.state
        cond, uncond = logits[:, 0], logits[:, 1]
        return torch.where(state.guided[span, None, None], uncond + (cond - uncond) * state.cfg[span, None, None], cond)

    def _top_k(self, scores: torch.Tensor, span: slice, largest: int) -> torch.Tensor:
        """Keeps each slot's k best scores (slots with top-k off keep all)."""
        state = self.state
        count = scores.shape[0]
        top_values = torch.topk(scores, largest, dim=-1).values
        kth = top_values.gather(
            -1, (state.top_k[span] - 1).clamp(max=largest - 1).view(count, 1, 1).expand(-1, state.codebooks, 1)
        )
        return scores.masked_fill(state.top_k_on[span, None, None] & (scores < kth), -math.inf)

    def _top_p(self, scores: torch.Tensor, span: slice) -> torch.Tensor:
        """Keeps the smallest set of best scores whose probability reaches each slot's top-p."""
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= self.state.top_p_limit[span, None, None]
        remove[..., -1:] = False
        return scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)

    def _draw(
        self, probs: torch.Tensor, span: slice, drawing: list[bool], generators: list[torch.Generator | None]
    ) -> torch.Tensor:
        """argmax(probs / exponential noise): on the CPU exactly what `torch.multinomial` draws, so a
        request reproduces transformers' tokens with the same seed."""
        noise = self.state.noise[span]
        for offset, (draws, generator) in enumerate(zip(drawing, generators, strict=True)):
            if draws:
                noise[offset].exponential_(1, generator=generator)
        return (probs / noise).argmax(dim=-1)
