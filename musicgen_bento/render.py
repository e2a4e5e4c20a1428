"""One pipeline from a validated request to a written file, used by `/continue` and by jobs.

A request becomes a `RenderPlan`: the generation options, the source to continue (if any), the
melody, the output format and the duration limit that applies to it. The same checks, the same
source handling and the same write then serve both entry points, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .audio.clip import AudioClip, to_model_format
from .audio.files import audio_file_duration_s, read_audio, write_audio
from .audio.paths import InputLimits, resolve_input_path
from .errors import InvalidInput, InvalidParameter
from .generation.host import Generator
from .generation.params import CancelFn, GenerationParams, GenerationRequest, ProgressFn
from .schemas import DEFAULT_DURATION_S, MIN_DURATION_S, ContinueRequest, GenerateRequest, GenerationOptions
from .settings import Settings


@dataclass(frozen=True)
class RenderPlan:
    """What to render, whichever route asked for it."""

    options: GenerationOptions
    output_format: str
    duration_s: float  # the request's, or what an omitted one means on this server
    max_duration_s: float
    max_duration_setting: str  # the environment variable that sets `max_duration_s`, for messages
    prompt_duration_s: float
    source_field: str | None = None  # the request field naming the file to continue
    source_path: str | None = None
    melody_path: str | None = None
    include_source: bool = False

    @classmethod
    def of_continue(cls, request: ContinueRequest, settings: Settings) -> RenderPlan:
        return cls(
            options=request,
            output_format=request.output_format,
            duration_s=_or_default(request.duration_s, settings.max_duration_s),
            max_duration_s=settings.max_duration_s,
            max_duration_setting="MUSICGEN_MAX_DURATION_S",
            prompt_duration_s=_or_default(request.prompt_duration_s, settings.max_prompt_s),
            source_field="audio_path",
            source_path=request.audio_path,
            include_source=request.include_source,
        )

    @classmethod
    def of_job(cls, request: GenerateRequest, settings: Settings) -> RenderPlan:
        return cls(
            options=request,
            output_format=request.output_format,
            duration_s=_or_default(request.duration_s, settings.max_job_duration_s),
            max_duration_s=settings.max_job_duration_s,
            max_duration_setting="MUSICGEN_MAX_JOB_DURATION_S",
            prompt_duration_s=_or_default(request.prompt_duration_s, settings.max_prompt_s),
            source_field="continue_from" if request.continue_from else None,
            source_path=request.continue_from,
            melody_path=request.melody_path,
        )

    def input_fields(self) -> dict[str, str]:
        """The request's input files by field name."""
        inputs = {}
        if self.source_field and self.source_path:
            inputs[self.source_field] = self.source_path
        if self.melody_path:
            inputs["melody_path"] = self.melody_path
        return inputs


@dataclass(frozen=True)
class Rendered:
    """A written file and what it holds."""

    path: Path
    duration_s: float
    sample_rate: int
    channels: int
    seed: int
    model: str
    prompt_duration_s: float | None  # the audio prompt taken from the source; None without one


def check_plan(plan: RenderPlan, settings: Settings) -> None:
    """Refuses what the settings don't allow (the fixed limits live in the schema). Reads no file."""
    options = plan.options
    if not options.prompt.strip() and not plan.input_fields():
        raise InvalidParameter("give a text prompt, a melody_path or a continue_from file", field="prompt")
    if plan.duration_s > plan.max_duration_s:
        raise InvalidParameter(
            f"must be at most {plan.max_duration_s:g} seconds ({plan.max_duration_setting}); got {plan.duration_s:g}",
            field="duration_s",
        )
    if plan.source_path and plan.prompt_duration_s > settings.max_prompt_s:
        raise InvalidParameter(
            f"must be at most {settings.max_prompt_s:g} seconds so the {settings.window_s:g} s window keeps room "
            f"for new music; got {plan.prompt_duration_s:g}",
            field="prompt_duration_s",
        )


def check_model(plan: RenderPlan, generator: Generator | None) -> None:
    """Refuses what the served model can't do; `generator` is None while the model loads."""
    if plan.melody_path and generator is not None and not generator.is_melody:
        raise InvalidParameter(
            f"the served model {generator.name} is not a melody model; melody_path needs one "
            "(e.g. facebook/musicgen-melody)",
            field="melody_path",
        )


def check_inputs(plan: RenderPlan, settings: Settings) -> dict[str, Path]:
    """Refuses input files that could not be used, before any work is queued for them; returns
    them by field. Each is decoded once: the only sure check of its content."""
    limits = input_limits(settings)
    paths: dict[str, Path] = {}
    for field, raw_path in plan.input_fields().items():
        path = resolve_input_path(raw_path, limits, field=field)
        clip = read_audio(path, limits, field=field)
        if field == plan.source_field and clip.frames < round(MIN_DURATION_S * clip.sample_rate):
            raise _too_short(clip, MIN_DURATION_S, field)
        paths[field] = path
    return paths


def render(
    plan: RenderPlan,
    generator: Generator,
    settings: Settings,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    arrival: int | None = None,
) -> Rendered:
    """Checks, reads the inputs, generates and writes the file.

    Args:
        progress: called after each decoding step with (steps done, total steps).
        should_cancel: polled after each step; True stops the generation (`GenerationCanceled`).
        arrival: the request's place among the generator's requests (`Generator.next_arrival`).
    """
    check_plan(plan, settings)
    check_model(plan, generator)
    source = prompt = melody = None
    if plan.source_field and plan.source_path:
        source = _load(plan.source_path, plan.source_field, generator, settings)
        prompt = prompt_from_end(source, plan.prompt_duration_s, generator.frame_samples, plan.source_field)
        melody = prompt if generator.is_melody else None
    if plan.melody_path:
        melody = _load(plan.melody_path, "melody_path", generator, settings)
    params = GenerationParams.from_options(plan.options, plan.duration_s)
    request = GenerationRequest(params, audio_prompt=prompt, melody=melody)
    result = generator.generate(request, progress=progress, should_cancel=should_cancel, arrival=arrival)
    audio = result.audio
    if plan.include_source and source is not None:
        audio = torch.cat([source.samples, audio], dim=1)
    path = write_audio(audio, result.sample_rate, settings.output_dir, plan.output_format)
    return Rendered(
        path=path,
        duration_s=round(audio_file_duration_s(path), 6),
        sample_rate=result.sample_rate,
        channels=int(audio.shape[0]),
        seed=result.seed,
        model=generator.name,
        prompt_duration_s=None if prompt is None else round(prompt.duration_s, 6),
    )


def prompt_from_end(source: AudioClip, prompt_duration_s: float, frame_samples: int, field: str) -> AudioClip:
    """The last `prompt_duration_s` seconds of `source`, rounded down to whole codec frames.

    Whole frames keep the join exact: the new music starts right where the prompt ends.
    A source shorter than that is used whole (rounded down likewise). A source shorter than one
    frame is refused (`field` names it): there would be nothing to continue.
    """
    wanted = min(round(prompt_duration_s * source.sample_rate), source.frames)
    samples = (wanted // frame_samples) * frame_samples
    if samples == 0:
        raise _too_short(source, frame_samples / source.sample_rate, field)
    return AudioClip(source.samples[:, source.frames - samples :], source.sample_rate)


def input_limits(settings: Settings) -> InputLimits:
    return InputLimits(
        roots=settings.input_roots,
        max_bytes=int(settings.max_input_mb * 1024 * 1024),
        max_duration_s=settings.max_input_s,
    )


def _or_default(value: float | None, limit: float) -> float:
    """A duration as given, or what an omitted one means: the default, or the limit where it is lower."""
    return min(DEFAULT_DURATION_S, limit) if value is None else value


def _load(raw_path: str, field: str, generator: Generator, settings: Settings) -> AudioClip:
    """Checks, reads and converts an input file to the model's rate and channel count."""
    limits = input_limits(settings)
    path = resolve_input_path(raw_path, limits, field=field)
    return to_model_format(read_audio(path, limits, field=field), generator.sample_rate, generator.channels)


def _too_short(clip: AudioClip, frame_s: float, field: str) -> InvalidInput:
    return InvalidInput(
        f"the source lasts {clip.duration_s * 1000:.0f} ms; at least one codec frame ({frame_s * 1000:.0f} ms) "
        "is needed",
        field=field,
    )
