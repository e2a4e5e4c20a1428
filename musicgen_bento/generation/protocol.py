"""What the layers above ask of a generator: the `Generator` protocol, which the real generator
(`generator.MusicGenGenerator`) and the stand-in of mock mode (`mock.MockMusicGenGenerator`) both
implement."""

from __future__ import annotations

from typing import Protocol

from ..engine import EngineStats
from .params import NO_HOOKS, GenerationHooks, GenerationRequest, GenerationResult


class Generator(Protocol):
    """A ready model that turns a `GenerationRequest` into audio; safe to call from many threads."""

    name: str  # the served model, as the model store tags it
    licence: str  # of the served weights
    sample_rate: int
    channels: int
    is_melody: bool  # whether it follows a melody (`GenerationRequest.melody`)

    @property
    def frame_samples(self) -> int:
        """Samples per codec frame: prompts are cut to whole frames."""

    @property
    def concurrency(self) -> int:
        """How many generations decode at once."""

    @property
    def engine_name(self) -> str:
        """The decoding loop, as `/health` names it: static, transformers or mock."""

    def engine_stats(self) -> EngineStats | None:
        """The step-batched engine's counters; None without one."""

    def next_arrival(self) -> int:
        """A ticket that ranks a request among all others (smaller is served first)."""

    def text_tokens(self, prompt: str) -> int:
        """How many tokens the text encoder reads for `prompt`."""

    def generate(self, request: GenerationRequest, hooks: GenerationHooks = NO_HOOKS) -> GenerationResult:
        """Generates the request's new music (see `MusicGenGenerator.generate`)."""

    def close(self) -> None:
        """Stops decoding; later and unfinished generations raise `ShuttingDown`."""
