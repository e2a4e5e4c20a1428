"""One pipeline from a validated request to a written file, used by `/continue` and by jobs.

A request becomes a `RenderPlan`: the generation options, the source to continue (if any), the
melody, the output format and the duration limit that applies to it. The same checks, the same
source handling and the same write then serve both entry points, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import torch

from ..audio.clip import AudioClip, fit_length, to_model_format
from ..audio.files import FileTags, audio_file_duration_s, check_output_form, read_audio, write_audio
from ..audio.loudness import normalize
from ..audio.paths import InputLimits, resolve_input_path
from ..audio.resample import OutputForm
from ..engine import PLANNED_TEXT_TOKENS
from ..errors import InvalidInput, InvalidParameter
from ..generation.params import (
    CancelFn,
    GenerationHooks,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    ProgressFn,
)
from ..generation.protocol import Generator
from ..schemas import (
    DEFAULT_DURATION_S,
    MIN_DURATION_S,
    ContinueRequest,
    GenerateRequest,
    GenerationOptions,
    Provenance,
    RenderResult,
    Take,
)
from ..settings import Settings

_VERSION = version("musicgen-bento")
_SEEDS = 2**31  # seeds run from 0 to 2**31 - 1
_PROMPT_CHARACTERS = 200  # of the prompt kept in provenance and metadata


@dataclass(frozen=True)
class DurationLimit:
    """The longest a duration may be on this server, the setting that says so, and what an omitted
    one means: the default, or the limit where that is lower."""

    maximum: float
    setting: str

    @property
    def default(self) -> float:
        return min(DEFAULT_DURATION_S, self.maximum)

    def resolve(self, value: float | None) -> float:
        return self.default if value is None else value


def duration_limits(request: type[GenerationOptions], settings: Settings) -> dict[str, DurationLimit]:
    """The limits of a request body's durations on this server, by field (the API's document shows
    them): `/continue` and a job each have their own longest `duration_s`; a prompt must leave the
    window room for new music."""
    if issubclass(request, ContinueRequest):
        duration = DurationLimit(settings.max_duration_s, "MUSICGEN_MAX_DURATION_S")
    elif issubclass(request, GenerateRequest):
        duration = DurationLimit(settings.max_job_duration_s, "MUSICGEN_MAX_JOB_DURATION_S")
    else:
        return {}
    return {"duration_s": duration, "prompt_duration_s": DurationLimit(settings.max_prompt_s, "MUSICGEN_WINDOW_S")}


@dataclass(frozen=True)
class RenderPlan:
    """What to render, whichever route asked for it."""

    options: GenerationOptions
    output_format: str
    duration_s: float  # the request's, or what an omitted one means on this server
    duration_limit: DurationLimit
    prompt_duration_s: float
    prompt_start_s: float | None = None  # None: the prompt is the end of the source
    source_field: str | None = None  # the request field naming the file to continue
    source_path: str | None = None
    melody_path: str | None = None
    include_source: bool = False
    sample_rate: int | None = None  # None: the model's, or the source's with match_source
    sample_format: str = "pcm16"
    match_source: bool = False

    @classmethod
    def of(cls, request: ContinueRequest | GenerateRequest, settings: Settings) -> RenderPlan:
        """The plan of a `/continue` request (a stream's too), or of a job's."""
        limits = duration_limits(type(request), settings)
        source_field: str | None
        source_path: str | None
        melody_path: str | None
        if isinstance(request, ContinueRequest):
            source_field, source_path, melody_path = "audio_path", request.audio_path, None
        else:
            source_field = "continue_from" if request.continue_from else None
            source_path, melody_path = request.continue_from, request.melody_path
        return cls(
            options=request,
            output_format=request.output_format,
            duration_s=limits["duration_s"].resolve(request.duration_s),
            duration_limit=limits["duration_s"],
            prompt_duration_s=limits["prompt_duration_s"].resolve(request.prompt_duration_s),
            prompt_start_s=request.prompt_start_s,
            source_field=source_field,
            source_path=source_path,
            melody_path=melody_path,
            include_source=isinstance(request, ContinueRequest) and request.include_source,
            sample_rate=request.sample_rate,
            sample_format=request.sample_format,
            match_source=request.match_source,
        )

    @property
    def audio_s(self) -> float:
        """Seconds of audio it asks for, each take counted (what an API key's hour is charged)."""
        return self.duration_s * self.options.takes

    def input_fields(self) -> dict[str, str]:
        """The request's input files by field name."""
        inputs = {}
        if self.source_field and self.source_path:
            inputs[self.source_field] = self.source_path
        if self.melody_path:
            inputs["melody_path"] = self.melody_path
        return inputs


@dataclass(frozen=True)
class RenderedTake:
    """One written file and what it holds."""

    path: Path
    duration_s: float
    channels: int
    seed: int
    provenance: Provenance


@dataclass(frozen=True)
class Rendered:
    """What a request produced: its takes' files (the first is the request's answer) and how."""

    takes: list[RenderedTake]
    sample_rate: int
    model: str
    prompt_start_s: float | None  # where the audio prompt starts in the source; None without one
    prompt_duration_s: float | None  # the audio prompt taken from the source; None without one

    @property
    def first(self) -> RenderedTake:
        return self.takes[0]


def result_of(rendered: Rendered) -> RenderResult:
    """What a render wrote, as every route answers it: `/continue`'s body, a job's stored result, a
    stream's headers."""
    first = rendered.first
    return RenderResult(
        audio_path=str(first.path),
        duration_s=first.duration_s,
        sample_rate=rendered.sample_rate,
        channels=first.channels,
        seed=first.seed,
        model=rendered.model,
        provenance=first.provenance,
        takes=[Take(audio_path=str(take.path), seed=take.seed, duration_s=take.duration_s) for take in rendered.takes],
        prompt_start_s=rendered.prompt_start_s,
        prompt_duration_s=rendered.prompt_duration_s,
    )


def check_plan(plan: RenderPlan, settings: Settings) -> None:
    """Refuses what the settings don't allow (the fixed limits live in the schema). Reads no file."""
    options = plan.options
    if not options.prompt.strip() and not plan.input_fields():
        raise InvalidParameter("give a text prompt, a melody_path or a continue_from file", field="prompt")
    limit = plan.duration_limit
    if plan.duration_s > limit.maximum:
        raise InvalidParameter(
            f"must be at most {limit.maximum:g} seconds ({limit.setting}); got {plan.duration_s:g}",
            field="duration_s",
        )
    if plan.prompt_start_s is not None and not plan.source_path:
        raise InvalidParameter("takes a source to continue: give continue_from too", field="prompt_start_s")
    if plan.match_source and not plan.source_path:
        raise InvalidParameter("matches a source: give continue_from too (or leave it out)", field="match_source")
    if plan.match_source and plan.sample_rate is not None:
        raise InvalidParameter(
            f"match_source takes the source's rate: give one or the other; got {plan.sample_rate}", field="sample_rate"
        )
    check_output_form(plan.output_format, plan.sample_format, plan.sample_rate, "sample_rate")
    if plan.source_path and plan.prompt_duration_s > settings.max_prompt_s:
        raise InvalidParameter(
            f"must be at most {settings.max_prompt_s:g} seconds so the {settings.window_s:g} s window keeps room "
            f"for new music; got {plan.prompt_duration_s:g}",
            field="prompt_duration_s",
        )


def check_model(plan: RenderPlan, generator: Generator | None) -> None:
    """Refuses what the served model can't do; `generator` is None while the model loads."""
    if generator is None:
        return
    if plan.melody_path and not generator.is_melody:
        raise InvalidParameter(
            f"the served model {generator.name} is not a melody model; melody_path needs one "
            "(e.g. facebook/musicgen-melody)",
            field="melody_path",
        )
    # The engine's cache is allocated at start-up for prompts up to this length (the memory plan):
    # a longer one would grow it, for every slot, past the node's memory budget.
    tokens = generator.text_tokens(plan.options.prompt)
    if tokens > PLANNED_TEXT_TOKENS:
        raise InvalidParameter(
            f"is {tokens} text tokens long (the model's tokenizer); at most {PLANNED_TEXT_TOKENS} fit the cache "
            "this server planned: shorten the prompt (a sentence or two describes the music)",
            field="prompt",
        )


def check_inputs(plan: RenderPlan, settings: Settings) -> dict[str, Path]:
    """Refuses input files that could not be used, before any work is queued for them; returns
    them by field. Each is decoded once: the only sure check of its content."""
    limits = input_limits(settings)
    paths: dict[str, Path] = {}
    for field, raw_path in plan.input_fields().items():
        path = resolve_input_path(raw_path, limits, field=field)
        clip = read_audio(path, limits, field=field)
        if field == plan.source_field:
            frame_samples = round(MIN_DURATION_S * clip.sample_rate)
            prompt_span(clip, plan.prompt_start_s, plan.prompt_duration_s, frame_samples, field)
            if plan.match_source:
                check_output_form(plan.output_format, plan.sample_format, clip.sample_rate, "match_source")
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
    """Checks, reads the inputs, generates and writes a file per take (all of them, or none).

    Args:
        progress: called after each decoding step with (steps done, total steps).
        should_cancel: polled after each step; True stops the generation (`GenerationCanceled`).
        arrival: the request's place among the generator's requests (`Generator.next_arrival`).
    """
    check_plan(plan, settings)
    check_model(plan, generator)
    inputs = read_inputs(plan, generator, settings)
    params = GenerationParams.from_options(plan.options, plan.duration_s)
    requests = [
        GenerationRequest(take, audio_prompt=inputs.prompt, melody=inputs.melody)
        for take in takes_of(params, plan.options.takes)
    ]
    results = _generate(generator, requests, progress, should_cancel, arrival)
    takes: list[RenderedTake] = []
    try:
        for result in results:
            takes.append(_write_take(plan, generator, settings, result, inputs))
    except BaseException:
        for written in takes:  # a request answers with all its takes or writes nothing
            written.path.unlink(missing_ok=True)
        raise
    span = inputs.prompt_span_s
    return Rendered(
        takes=takes,
        sample_rate=inputs.form.sample_rate,
        model=generator.name,
        prompt_start_s=None if span is None else round(span[0], 6),
        prompt_duration_s=None if span is None else round(span[1], 6),
    )


def _write_take(
    plan: RenderPlan, generator: Generator, settings: Settings, result: GenerationResult, inputs: RenderInputs
) -> RenderedTake:
    """Levels, puts in the file's form, joins to the source when asked, and writes one take with its
    provenance."""
    form = inputs.form
    # The new music only: the source part of include_source keeps its own level.
    audio = normalize(result.audio, result.sample_rate, plan.options.normalization, plan.options.loudness_lufs)
    audio = fit_length(form.conform(audio, result.sample_rate), round(plan.duration_s * form.sample_rate))
    if plan.include_source and inputs.source is not None:
        audio = torch.cat([inputs.source_in_form(), audio], dim=1)
    provenance = provenance_of(plan, generator, settings, result.seed, inputs.prompt_span_s, form)
    path = write_audio(
        audio, form.sample_rate, settings.output_dir, plan.output_format, tags_of(provenance), form.sample_format
    )
    return RenderedTake(path, round(audio_file_duration_s(path), 6), int(audio.shape[0]), result.seed, provenance)


@dataclass(frozen=True)
class RenderInputs:
    """A request's inputs, read: the audio prompt and the melody in the model's form, the source as
    it was read (up to the prompt's end: what include_source outputs and match_source matches), and
    the form of the file to write."""

    prompt: AudioClip | None
    melody: AudioClip | None
    source: AudioClip | None
    form: OutputForm
    prompt_span_s: tuple[float, float] | None  # (start, duration) of the audio prompt in the source

    def source_in_form(self) -> torch.Tensor:
        """The source resampled plainly to the file's rate and channels (itself, with match_source)."""
        assert self.source is not None
        return self.form.conform(self.source.samples, self.source.sample_rate)


def read_inputs(plan: RenderPlan, generator: Generator, settings: Settings) -> RenderInputs:
    """The source, the audio prompt and the melody, read and converted, and the file's form."""
    source = prompt = melody = span = None
    if plan.source_field and plan.source_path:
        original = _read(plan.source_path, plan.source_field, settings)
        whole = to_model_format(original, generator.sample_rate, generator.channels)
        start, end = prompt_span(
            whole, plan.prompt_start_s, plan.prompt_duration_s, generator.frame_samples, plan.source_field
        )
        prompt = AudioClip(whole.samples[:, start:end], whole.sample_rate)
        span = (start / whole.sample_rate, (end - start) / whole.sample_rate)
        end_in_original = min(original.frames, round(end / whole.sample_rate * original.sample_rate))
        source = AudioClip(original.samples[:, :end_in_original], original.sample_rate)
        melody = prompt if generator.is_melody else None
    if plan.melody_path:
        melody = to_model_format(
            _read(plan.melody_path, "melody_path", settings), generator.sample_rate, generator.channels
        )
    if plan.match_source and source is not None:
        check_output_form(plan.output_format, plan.sample_format, source.sample_rate, "match_source")
        form = OutputForm(source.sample_rate, source.channels, plan.sample_format)
    else:
        form = OutputForm(plan.sample_rate or generator.sample_rate, generator.channels, plan.sample_format)
    return RenderInputs(prompt, melody, source, form, span)


def takes_of(params: GenerationParams, count: int) -> list[GenerationParams]:
    """The parameters of each take: consecutive seeds from the request's (or a random one)."""
    seed = params.seed if params.seed is not None else secrets.randbelow(_SEEDS)
    return [dataclasses.replace(params, seed=(seed + take) % _SEEDS) for take in range(count)]


def _generate(
    generator: Generator,
    requests: list[GenerationRequest],
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    arrival: int | None,
) -> list[GenerationResult]:
    """Every take, generated at once so that they decode together (one after another with
    transformers' generate()); progress counts the steps of all of them."""
    if len(requests) == 1:
        return [generator.generate(requests[0], GenerationHooks(progress, should_cancel, arrival))]
    arrival = generator.next_arrival() if arrival is None else arrival
    steps = _TakesProgress(len(requests), progress)
    with ThreadPoolExecutor(len(requests), thread_name_prefix="musicgen-take") as pool:
        futures = [
            pool.submit(generator.generate, request, GenerationHooks(steps.reporter(index), should_cancel, arrival))
            for index, request in enumerate(requests)
        ]
        return [future.result() for future in futures]


class _TakesProgress:
    """Sums the steps of several takes into one progress report."""

    def __init__(self, takes: int, progress: ProgressFn | None) -> None:
        self._done, self._total = [0] * takes, [0] * takes
        self._progress = progress
        self._lock = threading.Lock()

    def reporter(self, take: int) -> ProgressFn:
        def report(done: int, total: int) -> None:
            with self._lock:
                self._done[take], self._total[take] = done, total
                done_all, total_all = sum(self._done), sum(self._total)
            if self._progress is not None and all(self._total):
                self._progress(done_all, total_all)

        return report


def prompt_span(
    source: AudioClip, start_s: float | None, duration_s: float, frame_samples: int, field: str
) -> tuple[int, int]:
    """Where the audio prompt lies in `source`, as (first sample, end sample), in whole codec frames.

    From `start_s` (None: the prompt ends where the source does) it lasts `duration_s`, or as much
    of that as the source holds, rounded down to whole frames: whole frames keep the join exact, the
    new music starts right where the prompt ends. A prompt of less than one frame is refused: there
    would be nothing to continue (`field` names the source; `prompt_start_s` when it is the start).
    """
    wanted = round(duration_s * source.sample_rate)
    if start_s is None:
        samples = (min(wanted, source.frames) // frame_samples) * frame_samples
        if samples == 0:
            raise _too_short(source, frame_samples / source.sample_rate, field)
        return source.frames - samples, source.frames
    # A start past the source's end is refused before it is counted in samples: a huge one (3.9e307)
    # would overflow the count.
    start = round(start_s * source.sample_rate) if start_s < source.duration_s else source.frames
    samples = (min(wanted, source.frames - start) // frame_samples) * frame_samples
    if samples <= 0:
        latest = max(0.0, (source.frames - frame_samples) / source.sample_rate)
        raise InvalidParameter(
            f"the source lasts {source.duration_s:.3f} s, so a prompt of at least one codec frame "
            f"({frame_samples / source.sample_rate * 1000:.0f} ms) must start by {latest:.3f} s; got {start_s:g}",
            field="prompt_start_s",
        )
    return start, start + samples


def input_limits(settings: Settings) -> InputLimits:
    return InputLimits(
        roots=settings.source_roots,
        max_bytes=int(settings.max_input_mb * 1024 * 1024),
        max_duration_s=settings.max_input_s,
    )


def provenance_of(
    plan: RenderPlan,
    generator: Generator,
    settings: Settings,
    seed: int,
    prompt_span_s: tuple[float, float] | None,
    form: OutputForm,
) -> Provenance:
    """Where the file comes from: model, licence, seed, this software, the prompt (unless the
    settings keep it out) and the parameters as resolved."""
    options = plan.options
    parameters: dict[str, object] = {
        "duration_s": plan.duration_s,
        "cfg_coef": options.cfg_coef,
        "temperature": options.temperature,
        "top_k": options.top_k,
        "top_p": options.top_p,
        "normalization": options.normalization,
        "sample_rate": form.sample_rate,
        "sample_format": form.sample_format,
    }
    if options.normalization == "loudness":
        parameters["loudness_lufs"] = options.loudness_lufs
    if prompt_span_s is not None:
        parameters["prompt_start_s"], parameters["prompt_duration_s"] = (round(v, 6) for v in prompt_span_s)
    if plan.melody_path:
        parameters["melody"] = True
    return Provenance(
        model=generator.name,
        licence=generator.licence,
        seed=seed,
        software=f"musicgen-bento {_VERSION}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        prompt=options.prompt[:_PROMPT_CHARACTERS] if settings.metadata_prompt else None,
        parameters=parameters,
    )


def tags_of(provenance: Provenance) -> FileTags:
    """The file's own metadata: the prompt as its title (when kept), the model as its artist, the rest
    as JSON in its comment."""
    title = f"MusicGen: {provenance.prompt[:100]}" if provenance.prompt else "MusicGen"
    comment = {"seed": provenance.seed, "model": provenance.model, "licence": provenance.licence}
    if provenance.prompt is not None:
        comment["prompt"] = provenance.prompt
    comment.update(provenance.parameters)
    return FileTags(
        title=title,
        artist=provenance.model,
        comment=json.dumps(comment, ensure_ascii=False),
        copyright=f"model weights: {provenance.licence}",
        licence=provenance.licence,
        software=provenance.software,
        date=provenance.created_at,
    )


def _read(raw_path: str, field: str, settings: Settings) -> AudioClip:
    """Checks and reads an input file, as it is."""
    limits = input_limits(settings)
    return read_audio(resolve_input_path(raw_path, limits, field=field), limits, field=field)


def _too_short(clip: AudioClip, frame_s: float, field: str) -> InvalidInput:
    return InvalidInput(
        f"the source lasts {clip.duration_s * 1000:.0f} ms; at least one codec frame ({frame_s * 1000:.0f} ms) "
        "is needed",
        field=field,
    )
