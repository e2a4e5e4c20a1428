"""Continuing a piece of music: from a source file on disk and a text prompt to a new file."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .audio import (
    AudioClip,
    InputLimits,
    audio_file_duration_s,
    read_audio,
    resolve_input_path,
    to_model_format,
    write_audio,
)
from .errors import InvalidInput, InvalidParameter
from .generator import CancelFn, GenerationParams, GenerationRequest, ProgressFn
from .lifecycle import Generator
from .schemas import MIN_DURATION_S, ContinueRequest, ContinueResponse, GenerationOptions
from .settings import Settings


def input_limits(settings: Settings) -> InputLimits:
    return InputLimits(
        roots=settings.input_roots,
        max_bytes=int(settings.max_input_mb * 1024 * 1024),
        max_duration_s=settings.max_input_s,
    )


def check_options(options: GenerationOptions, settings: Settings) -> None:
    """Checks the limits that depend on settings (the fixed ones live in the schema)."""
    if options.duration_s > settings.max_duration_s:
        raise InvalidParameter(
            f"must be at most {settings.max_duration_s:g} seconds (MUSICGEN_MAX_DURATION_S); "
            f"got {options.duration_s:g}",
            field="duration_s",
        )


def params_of(options: GenerationOptions) -> GenerationParams:
    return GenerationParams(
        prompt=options.prompt,
        duration_s=options.duration_s,
        cfg_coef=options.cfg_coef,
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        seed=options.seed,
    )


def load_source(raw_path: str, settings: Settings, sample_rate: int, channels: int, field: str) -> AudioClip:
    """Checks, reads and converts a source file to the model's rate and channel count."""
    limits = input_limits(settings)
    path = resolve_input_path(raw_path, limits, field=field)
    return to_model_format(read_audio(path, limits, field=field), sample_rate, channels)


def check_source(raw_path: str, settings: Settings, field: str, to_continue: bool = False) -> Path:
    """Refuses a source file that could not be used, before any work is queued for it; a source
    `to_continue` must also hold at least one codec frame, as `prompt_from_end` will require."""
    limits = input_limits(settings)
    path = resolve_input_path(raw_path, limits, field=field)
    clip = read_audio(path, limits, field=field)  # decoding once is the only sure check of the content
    if to_continue and clip.frames < round(MIN_DURATION_S * clip.sample_rate):
        raise InvalidInput(
            f"the source lasts {clip.duration_s * 1000:.0f} ms; at least one codec frame "
            f"({MIN_DURATION_S * 1000:.0f} ms) is needed",
            field=field,
        )
    return path


def prompt_from_end(source: AudioClip, prompt_duration_s: float, frame_samples: int, field: str) -> AudioClip:
    """The last `prompt_duration_s` seconds of `source`, rounded down to whole codec frames.

    Whole frames keep the join exact: the new music starts right where the prompt ends.
    A source shorter than that is used whole (rounded down likewise). A source shorter than one
    frame is refused (`field` names it): there would be nothing to continue.
    """
    wanted = min(round(prompt_duration_s * source.sample_rate), source.frames)
    samples = (wanted // frame_samples) * frame_samples
    if samples == 0:
        raise InvalidInput(
            f"the source lasts {source.duration_s * 1000:.0f} ms; at least one codec frame "
            f"({frame_samples / source.sample_rate * 1000:.0f} ms) is needed",
            field=field,
        )
    return AudioClip(source.samples[:, source.frames - samples :], source.sample_rate)


def continue_music(
    request: ContinueRequest,
    generator: Generator,
    settings: Settings,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    arrival: int | None = None,
) -> ContinueResponse:
    """Runs one /continue request end to end and returns its response."""
    started = time.perf_counter()
    check_options(request, settings)
    if request.prompt_duration_s > settings.max_prompt_s:
        raise InvalidParameter(
            f"must be at most {settings.max_prompt_s:g} seconds so the {settings.window_s:g} s window keeps room "
            f"for new music; got {request.prompt_duration_s:g}",
            field="prompt_duration_s",
        )
    source = load_source(request.audio_path, settings, generator.sample_rate, generator.channels, "audio_path")
    prompt = prompt_from_end(source, request.prompt_duration_s, generator.frame_samples, "audio_path")
    generation = GenerationRequest(
        params_of(request), audio_prompt=prompt, melody=prompt if generator.is_melody else None
    )
    result = generator.generate(generation, progress=progress, should_cancel=should_cancel, arrival=arrival)
    audio = torch.cat([source.samples, result.audio], dim=1) if request.include_source else result.audio
    path = write_audio(audio, result.sample_rate, settings.output_dir, request.output_format)
    return ContinueResponse(
        audio_path=str(path),
        duration_s=round(audio_file_duration_s(path), 6),
        sample_rate=result.sample_rate,
        channels=int(audio.shape[0]),
        prompt_duration_s=round(prompt.duration_s, 6),
        seed=result.seed,
        model=generator.name,
        elapsed_s=round(time.perf_counter() - started, 3),
    )
