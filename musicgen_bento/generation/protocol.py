"""What the layers above ask of a generator: the `Generator` protocol, which the real generator
(`generator.MusicGenGenerator`) and the stand-in of mock mode (`mock.MockMusicGenGenerator`) both
implement."""

from __future__ import annotations

from typing import Protocol

from ..engine import EngineStats
from .params import AudioFn, CancelFn, GenerationRequest, GenerationResult, ProgressFn


class Generator(Protocol):
    """A ready model that turns a `GenerationRequest` into audio; safe to call from many threads."""

    @property
    def name(self) -> str:
        """The served model, as the model store tags it."""

    @property
    def licence(self) -> str:
        """The licence of the served weights."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def is_melody(self) -> bool:
        """Whether it follows a melody (`GenerationRequest.melody`)."""

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

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        arrival: int | None = None,
        on_audio: AudioFn | None = None,
    ) -> GenerationResult:
        """Generates the request's new music (see `MusicGenGenerator.generate`)."""

    def close(self) -> None:
        """Stops decoding; later and unfinished generations raise `ShuttingDown`."""
