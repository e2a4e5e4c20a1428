"""What one generation is asked to do: its parameters (one frozen record, converted here and
nowhere else), its audio prompt and melody, its result, and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..audio.clip import AudioClip
from ..engine import Sampling
from ..errors import GenerationCanceled

if TYPE_CHECKING:
    from ..schemas import GenerationOptions

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
# Receives a streamed generation's audio, chunk by chunk: (channels, samples) float32 on the CPU.
AudioFn = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one request: text, length and sampling settings (0 turns top-k/top-p off)."""

    prompt: str = ""
    duration_s: float = 10.0
    cfg_coef: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    seed: int | None = None

    @classmethod
    def from_options(cls, options: GenerationOptions, duration_s: float) -> GenerationParams:
        """The parameters of a validated API request; `duration_s` is its duration resolved
        against the server's limit (the request may leave it out)."""
        return cls(
            prompt=options.prompt,
            duration_s=duration_s,
            cfg_coef=options.cfg_coef,
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            seed=options.seed,
        )

    @property
    def sampling(self) -> Sampling:
        """The token-picking part, as both decoding backends read it."""
        return Sampling(self.cfg_coef, self.temperature, self.top_k, self.top_p)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: its parameters, an optional audio prompt and an optional melody.

    `audio_prompt` is at the model's rate and channel count; the new music continues from its
    end. `melody` (melody models only) conditions generation on its chroma.
    """

    params: GenerationParams
    audio_prompt: AudioClip | None = None
    melody: AudioClip | None = None


@dataclass(frozen=True)
class GenerationResult:
    """New music only, shaped (channels, frames), exactly `params.duration_s` long."""

    audio: torch.Tensor
    sample_rate: int
    seed: int


@dataclass(frozen=True)
class GenerationHooks:
    """How a caller follows one generation; each is optional.

    Attributes:
        progress: called after each decoding step with (steps done, total steps).
        should_cancel: polled after each step; returning True stops the generation, which raises
            `GenerationCanceled`.
        arrival: the request's ticket from `Generator.next_arrival()`; taken when it starts if absent.
        on_audio: streams the new music: called with each chunk (channels, samples) as the codec
            decodes it from the frames decoded so far; the result's audio is the chunks joined.
    """

    progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    arrival: int | None = None
    on_audio: AudioFn | None = None


NO_HOOKS = GenerationHooks()


class StepWatcher:
    """Counts one generation's decoding steps for its progress reports, and stops it when its
    caller asks to cancel."""

    def __init__(self, total: int, hooks: GenerationHooks) -> None:
        self.total = total
        self.done = 0
        self._progress = hooks.progress
        self._should_cancel = hooks.should_cancel

    def step(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress(min(self.done, self.total), self.total)
        # Raising out of the decoding loop stops it at once; a stopping criterion that merely
        # returns True would leave transformers to decode a sequence cut short by the delay pattern.
        if self._should_cancel is not None and self._should_cancel():
            raise GenerationCanceled("generation was canceled")
