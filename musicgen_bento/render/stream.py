"""`/continue` streamed: the same checks, inputs and audio as `render`, handed to the client chunk
by chunk as the codec decodes them, and written to a file at the same time.

A stream is a WAV file whose header, sent first, already holds the final length (the request's
duration decides it) and the file's rate and sample format. It carries one take and levels nothing
that needs the whole piece (peak, RMS or loudness normalization); those stay with `/continue`, and
asking a stream for them is refused before anything is sent. At another rate than the model's, the
chunks are resampled as they come (`audio.resample.StreamingResampler`), to what resampling the
whole file gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..audio.files import StreamedWav
from ..audio.resample import OutputForm, StreamingResampler, to_channels
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
            f"a stream is a WAV file; leave it out or give 'wav' (POST /continue writes "
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
    source: torch.Tensor | None  # what include_source puts first, in the file's form; None without it
    form: OutputForm
    wav: StreamedWav
    provenance: Provenance
    prompt_span_s: tuple[float, float] | None  # (start, duration) of the audio prompt in the source

    @property
    def sample_rate(self) -> int:
        return self.form.sample_rate

    @property
    def rendered(self) -> Rendered:
        """What the stream writes once it is complete: its file's name, length and provenance are
        known before any music is made."""
        duration_s = round(self.wav.frames / self.sample_rate, 6)
        take = RenderedTake(self.wav.path, duration_s, self.form.channels, self.provenance.seed, self.provenance)
        start, length = (None, None) if self.prompt_span_s is None else (round(v, 6) for v in self.prompt_span_s)
        return Rendered([take], self.sample_rate, self.generator.name, start, length)

    @property
    def content_length(self) -> int:
        """The stream's size in bytes, header included."""
        return len(self.wav.header) + self.wav.frames * self.wav.frame_bytes

    def run(self, send: Callable[[bytes], None], should_cancel: CancelFn | None, arrival: int | None) -> RenderedTake:
        """Generates, handing `send` each chunk of the file after the header (on this thread) and
        writing it; the complete file is put in place at the end, or nothing on any failure.

        The chunk that completes the file is handed over only once the file is in place, so a
        client holding every byte finds it at its announced name."""
        completing: list[bytes] = []
        model_rate = self.generator.sample_rate
        resampler = StreamingResampler(model_rate, self.sample_rate) if model_rate != self.sample_rate else None

        def write(samples: torch.Tensor) -> None:
            # The file's length is the request's: what resampling adds past it is cut off.
            samples = samples[:, : self.wav.frames - self.wav.written]
            if not samples.shape[1]:
                return
            data = self.wav.write(to_channels(samples, self.form.channels))
            if self.wav.written < self.wav.frames:
                send(data)
            else:
                completing.append(data)

        def new_audio(samples: torch.Tensor) -> None:
            write(samples if resampler is None else resampler.push(samples))

        try:
            if self.source is not None:
                write(self.source)
            self.generator.generate(
                self.request, GenerationHooks(should_cancel=should_cancel, arrival=arrival, on_audio=new_audio)
            )
            if resampler is not None:
                write(resampler.finish())
            missing = self.wav.frames - self.wav.written  # a resampled length may fall one frame short
            if missing > 0:
                write(torch.zeros(self.form.channels, missing))
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
    inputs = read_inputs(plan, generator, settings)
    form = inputs.form
    params = takes_of(GenerationParams.from_options(plan.options, plan.duration_s), 1)[0]
    assert params.seed is not None  # takes_of resolves it: the file's tags name it before it is made
    provenance = provenance_of(plan, generator, settings, params.seed, inputs.prompt_span_s, form)
    source = inputs.source_in_form() if plan.include_source and inputs.source is not None else None
    frames = round(plan.duration_s * form.sample_rate) + (source.shape[1] if source is not None else 0)
    tags = tags_of(provenance)
    wav = StreamedWav(settings.output_dir, frames, form.sample_rate, form.channels, tags, form.sample_format)
    request = GenerationRequest(params, audio_prompt=inputs.prompt, melody=inputs.melody)
    return StreamedRender(generator, request, source, form, wav, provenance, inputs.prompt_span_s)
