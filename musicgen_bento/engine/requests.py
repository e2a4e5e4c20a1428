"""What a caller asks the engine for: one window of decoding (`DecodeRequest`) and how its tokens
are picked (`Sampling`), and the callbacks that follow it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
