"""A stand-in generator for client development without a GPU (CF_MUSICGEN_MOCK=1).

It loads no model and returns audio of exactly the shape a real generation would have: the
audio prompt (the end of the source) at MusicGen's rate and channel count, cut or padded with
silence to the requested length. It is never music, and never presented as such.
"""

from __future__ import annotations

import itertools
import secrets

import torch

from ..audio.clip import fit_length
from .params import NO_HOOKS, GenerationHooks, GenerationRequest, GenerationResult

MOCK_SAMPLE_RATE = 32000
MOCK_CHANNELS = 1


class MockMusicGenGenerator:
    """Same interface as `MusicGenGenerator`; generation is a copy of the prompt."""

    name = "mock"
    licence = "MIT (mock: no model)"
    sample_rate = MOCK_SAMPLE_RATE
    channels = MOCK_CHANNELS
    is_melody = False
    frame_samples = 640
    device = "cpu"
    # Generation is a copy: nothing limits how many run at once but the threads given to them.
    concurrency = 8
    engine_name = "mock"

    def __init__(self) -> None:
        self._arrivals = itertools.count()

    def next_arrival(self) -> int:
        return next(self._arrivals)

    def engine_stats(self) -> None:
        """No decoding engine."""
        return None

    def close(self) -> None:
        """Nothing to stop."""

    def text_tokens(self, prompt: str) -> int:
        """No text encoder: a token per word and the end token, about what T5's tokenizer gives."""
        return len(prompt.split()) + 1

    def generate(self, request: GenerationRequest, hooks: GenerationHooks = NO_HOOKS) -> GenerationResult:
        params = request.params
        frames = round(params.duration_s * self.sample_rate)
        source = request.audio_prompt.samples if request.audio_prompt is not None else torch.zeros(self.channels, 0)
        audio = fit_length(source, frames)
        if hooks.progress is not None:
            hooks.progress(1, 1)
        if hooks.on_audio is not None:
            for start in range(0, frames, self.sample_rate):  # one-second chunks, as a stream would come
                hooks.on_audio(audio[:, start : start + self.sample_rate])
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        return GenerationResult(audio, self.sample_rate, seed)
