"""Sampling on the device, as an ordered pipeline of small steps that follows transformers'
logits processors: guidance mix, temperature, top-k, top-p, then a multinomial draw. Each step
reads per-slot parameters handed to it with the logits, so requests with different settings
share one batched operation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .requests import Sampling


@dataclass(frozen=True)
class SamplingParams:
    """How each of a span of consecutive slots samples, as tensors on the device (one entry per
    slot, views of the batch state's), with each request's settings and random generator."""

    cfg: torch.Tensor
    guided: torch.Tensor
    greedy: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_k_on: torch.Tensor
    top_p_limit: torch.Tensor  # transformers' (1 - top_p); -1 where top-p is off
    noise: torch.Tensor  # scratch for the draw, (slots, codebooks, vocab)
    samplings: tuple[Sampling, ...]
    generators: tuple[torch.Generator | None, ...]

    @property
    def vocab(self) -> int:
        return int(self.noise.shape[-1])


class Sampler:
    """Picks the next codes of a span of slots from their logits and sampling parameters."""

    def choose(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """Each slot's next codes, (slots, codebooks).

        `logits` is (slots, 2, codebooks, vocab) in float32: the conditional and unconditional
        row of each slot. Noise is drawn from each request's own generator.
        """
        mixed = _guidance(logits, params)
        greedy_choice = mixed.argmax(dim=-1)
        drawing = [not sampling.greedy for sampling in params.samplings]
        if not any(drawing):
            return greedy_choice
        scores = mixed / params.temperature[:, None, None]
        sampled_settings = [sampling for sampling, draws in zip(params.samplings, drawing, strict=True) if draws]
        if any(sampling.top_k_limit is not None for sampling in sampled_settings):
            scores = _top_k(scores, params, max(min(s.top_k, params.vocab) for s in sampled_settings))
        if any(sampling.top_p_limit is not None for sampling in sampled_settings):
            scores = _top_p(scores, params)
        sampled = _draw(scores.softmax(dim=-1), params, drawing)
        return torch.where(params.greedy[:, None], greedy_choice, sampled)


def _guidance(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Classifier-free guidance: uncond + (cond - uncond) * cfg, for the guided slots."""
    cond, uncond = logits[:, 0], logits[:, 1]
    return torch.where(params.guided[:, None, None], uncond + (cond - uncond) * params.cfg[:, None, None], cond)


def _top_k(scores: torch.Tensor, params: SamplingParams, largest: int) -> torch.Tensor:
    """Keeps each slot's k best scores (slots with top-k off keep all)."""
    count, codebooks = scores.shape[0], scores.shape[1]
    top_values = torch.topk(scores, largest, dim=-1).values
    kth = top_values.gather(-1, (params.top_k - 1).clamp(max=largest - 1).view(count, 1, 1).expand(-1, codebooks, 1))
    return scores.masked_fill(params.top_k_on[:, None, None] & (scores < kth), -math.inf)


def _top_p(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Keeps the smallest set of best scores whose probability reaches each slot's top-p."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= params.top_p_limit[:, None, None]
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)


def _draw(probs: torch.Tensor, params: SamplingParams, drawing: list[bool]) -> torch.Tensor:
    """argmax(probs / exponential noise): on the CPU exactly what `torch.multinomial` draws, so a
    request reproduces transformers' tokens with the same seed."""
    noise = params.noise
    for offset, (draws, generator) in enumerate(zip(drawing, params.generators, strict=True)):
        if draws:
            noise[offset].exponential_(1, generator=generator)
    return (probs / noise).argmax(dim=-1)
