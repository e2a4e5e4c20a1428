"""`/continue` streamed: the same checks, inputs and audio as `render`, handed to the client chunk
by chunk as the codec decodes them, and written to a file at the same time.

A stream is a 16-bit PCM WAV file whose header, sent first, already holds the final length (the
request's duration decides it). It carries one take and levels nothing that needs the whole
piece (peak, RMS or loudness normalization); those stay with `/continue`, and asking a stream
for them is refused before anything is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..audio.clip import AudioClip
from ..audio.files import StreamedWav
from ..errors import InvalidParameter
from ..generation.params import CancelFn, GenerationHooks, GenerationParams, GenerationRequest
from ..generation.protocol import Generator
from ..schemas import Provenance
from ..settings import Settings
from .pipeline import (
    Rendered,
    RenderedTake,
    RenderPlan,
    check_model,
    check_plan,
    provenance_of,
    read_inputs,
    tags_of,
    takes_of,
)

# What a stream can carry, narrower than /continue's body: checked by `check_stream`, and written
# into the stream's request schema in the API's document. Its levelling applies chunk by chunk:
# both keep the music as generated, within full scale.
STREAM_FORMATS = ("wav",)
STREAMABLE_NORMALIZATION = ("clip", "none")
STREAM_TAKES = 1


def check_stream(plan: RenderPlan) -> None:
    """Refuses what a stream cannot carry (reads no file)."""
    options = plan.options
    if plan.output_format not in STREAM_FORMATS:
        raise InvalidParameter(
            f"a stream is a WAV file (16-bit PCM); leave it out or give 'wav' (POST /continue writes "
            f"{plan.output_format}); got {plan.output_format!r}",
            field="output_format",
        )
    if options.normalization not in STREAMABLE_NORMALIZATION:
        raise InvalidParameter(
            "a stream plays the music as it is made, before the level of the whole piece is known: give 'clip' "
            f"or 'none' (POST /continue levels by peak, rms or loudness); got {options.normalization!r}",
            field="normalization",
        )
    if options.takes != STREAM_TAKES:
        raise InvalidParameter(
            f"a stream carries one take; leave it out or give 1 (POST /continue makes several); got {options.takes}",
            field="takes",
        )


@dataclass
class StreamedRender:
    """A checked streaming request, its inputs read, ready to run: its file's name and header
    are known before any music is made."""

    generator: Generator
    request: GenerationRequest
    source: AudioClip | None  # what include_source puts first; None without it
    wav: StreamedWav
    provenance: Provenance
    prompt_span_s: tuple[float, float] | None  # (start, duration) of the audio prompt in the source

    @property
    def sample_rate(self) -> int:
        return self.generator.sample_rate

    @property
    def rendered(self) -> Rendered:
        """What the stream writes once it is complete: its file's name, length and provenance are
        known before any music is made."""
        duration_s = round(self.wav.frames / self.sample_rate, 6)
        take = RenderedTake(self.wav.path, duration_s, self.generator.channels, self.provenance.seed, self.provenance)
        start, length = (None, None) if self.prompt_span_s is None else (round(v, 6) for v in self.prompt_span_s)
        return Rendered([take], self.sample_rate, self.generator.name, start, length)

    @property
    def content_length(self) -> int:
        """The stream's size in bytes, header included."""
        return len(self.wav.header) + self.wav.frames * self.generator.channels * 2

    def run(self, send: Callable[[bytes], None], should_cancel: CancelFn | None, arrival: int | None) -> RenderedTake:
        """Generates, handing `send` each chunk of the file after the header (on this thread) and
        writing it; the complete file is put in place at the end, or nothing on any failure.

        The chunk that completes the file is handed over only once the file is in place, so a
        client holding every byte finds it at its announced name."""
        completing: list[bytes] = []

        def write(samples: torch.Tensor) -> None:
            data = self.wav.write(samples)
            if self.wav.written < self.wav.frames:
                send(data)
            else:
                completing.append(data)

        try:
            if self.source is not None:
                write(self.source.samples)
            self.generator.generate(
                self.request, GenerationHooks(should_cancel=should_cancel, arrival=arrival, on_audio=write)
            )
            path = self.wav.commit()
        except BaseException:
            self.wav.discard()
            raise
        for data in completing:
            send(data)
        return dataclasses.replace(self.rendered.first, path=path)


def prepare_stream(plan: RenderPlan, generator: Generator, settings: Settings) -> StreamedRender:
    """Checks the request and reads its inputs, raising every refusal before a byte is sent."""
    check_plan(plan, settings)
    check_model(plan, generator)
    check_stream(plan)
    whole_source, prompt, melody = read_inputs(plan, generator, settings)
    params = takes_of(GenerationParams.from_options(plan.options, plan.duration_s), 1)[0]
    assert params.seed is not None  # takes_of resolves it: the file's tags name it before it is made
    span = None
    if prompt is not None and whole_source is not None:
        span = (whole_source.duration_s - prompt.duration_s, prompt.duration_s)
    provenance = provenance_of(plan, generator, settings, params.seed, span)
    source = whole_source if plan.include_source else None
    frames = round(plan.duration_s * generator.sample_rate) + (source.frames if source is not None else 0)
    wav = StreamedWav(settings.output_dir, frames, generator.sample_rate, generator.channels, tags_of(provenance))
    request = GenerationRequest(params, audio_prompt=prompt, melody=melody)
    return StreamedRender(generator, request, source, wav, provenance, span)
