"""MusicGen generation: one blocking, thread-safe call per request on a lazily loaded model.

Generation parameters travel with each call as a frozen value; nothing about a request is
stored on the shared model. Requests longer than the model's window are generated in
overlapping windows, each prompted with the end of what exists so far (audiocraft's
extend-stride approach). Decoding runs on the static-cache, step-batched engine of `engine.py`
(concurrent requests share the device step by step), or on transformers' `generate()` one
request at a time, in arrival order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from .audio import AudioClip, smooth_join
from .engine import DecodeEngine, DecodeRequest, EngineStats, Sampling, StepReport
from .errors import GenerationCanceled, ModelStoreError
from .model_store import ModelInfo, load

logger = logging.getLogger("musicgen_bento")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
ENGINES: tuple[str, ...] = ("static", "transformers")


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one request: text, length and sampling settings."""

    prompt: str = ""
    duration_s: float = 10.0
    cfg_coef: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    seed: int | None = None


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
class Window:
    """One pass of the model: how many frames of prompt it takes and how many it adds."""

    prompt_frames: int
    new_frames: int


def plan_windows(prompt_frames: int, new_frames: int, window_frames: int, stride_frames: int) -> list[Window]:
    """Splits a generation into windows no longer than `window_frames` (prompt included).

    The first window takes the caller's prompt; each later one takes the last
    `window_frames - stride_frames` frames of what exists so far and adds up to
    `stride_frames` new ones.
    """
    if not 0 <= prompt_frames < window_frames:
        raise ValueError(f"the prompt ({prompt_frames} frames) must be shorter than the window ({window_frames})")
    if not 0 < stride_frames < window_frames:
        raise ValueError("the stride must be positive and shorter than the window")
    first = min(new_frames, window_frames - prompt_frames)
    windows = [Window(prompt_frames, first)]
    remaining = new_frames - first
    while remaining > 0:
        step = min(remaining, stride_frames)
        windows.append(Window(window_frames - stride_frames, step))
        remaining -= step
    return windows


def pick_device(gpu_id: int) -> str:
    """`cuda:<gpu_id>` when CUDA is available, `cpu` otherwise."""
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        raise ModelStoreError(f"--gpu-id {gpu_id} names no CUDA device; {count} visible (ids 0..{count - 1})")
    return f"cuda:{gpu_id}"


def pick_dtype(device: str, requested: str) -> torch.dtype:
    """float16 on CUDA and float32 on CPU for `auto`; otherwise what was asked."""
    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]


class _StepWatcher:
    """Counts decoding steps for progress reports and stops generation when asked to cancel."""

    def __init__(self, total: int, progress: ProgressFn | None, should_cancel: CancelFn | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._should_cancel = should_cancel

    def criterion(self) -> Any:
        from transformers import StoppingCriteria

        watcher = self

        class Criterion(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                watcher.step()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return Criterion()

    def step(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress(min(self.done, self.total), self.total)
        # Raising out of the decoding loop stops it at once; a stopping criterion that merely
        # returns True would leave transformers to decode a sequence cut short by the delay pattern.
        if self._should_cancel is not None and self._should_cancel():
            raise GenerationCanceled("generation was canceled")


class _CodesReady(Exception):
    """Carries the codes transformers' `generate()` was about to decode, out of it."""

    def __init__(self, codes: torch.Tensor) -> None:
        super().__init__("codes ready")
        self.codes = codes


class _CodesOfGenerate:
    """Stops transformers' `generate()` when its codes are complete, before it decodes them to audio.

    After sampling, `generate()` undoes the delay pattern with its decoder's
    `apply_delay_pattern_mask` and hands the result to the codec. Generation in token space needs
    those codes, not the audio: on the thread that is `capturing()`, the hook installed by `install`
    finishes undoing the pattern exactly as `generate()` does and raises `_CodesReady` with the
    codes. Other threads (and other callers of the method) see the original, untouched.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def install(self, model: Any) -> None:
        """Installs the hook on `model` (once; later calls change nothing)."""
        decoder = model.decoder
        if "apply_delay_pattern_mask" in vars(decoder):
            return
        original = type(decoder).apply_delay_pattern_mask
        pad_token = int(model.generation_config.pad_token_id)

        def apply_delay_pattern_mask(input_ids: torch.Tensor, pattern_mask: torch.Tensor) -> torch.Tensor:
            masked = original(input_ids, pattern_mask)
            # generate() also calls it before every step, on the sequence so far; the last call
            # comes after sampling, on the whole sequence, as long as the pattern.
            if getattr(self._local, "active", False) and input_ids.shape[-1] == pattern_mask.shape[-1]:
                codebooks = decoder.num_codebooks
                codes = masked[masked != pad_token].reshape(1, codebooks, -1)[0]
                raise _CodesReady(codes.cpu())
            return masked  # type: ignore[no-any-return]

        decoder.apply_delay_pattern_mask = apply_delay_pattern_mask

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False


_codes_of_generate = _CodesOfGenerate()


class _FairLock:
    """A lock granted in arrival order (`threading.Lock` promises no order)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cv:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cv.wait()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


class MusicGenGenerator:
    """Generates with one stored MusicGen checkpoint on one device.

    The model loads on first use (or when `load()` is called). `generate` may be called from
    many threads at once. With the `static` engine (the default) up to `batch_slots` requests
    decode together, joining and leaving the batch between steps, admitted in arrival order;
    with `transformers` generations run one at a time, in arrival order.
    """

    def __init__(
        self,
        info: ModelInfo,
        device: str,
        dtype: torch.dtype,
        window_s: float,
        extend_stride_s: float,
        engine: str = "static",
        batch_slots: int = 8,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.info = info
        self.device = device
        self.dtype = dtype
        self.window_s = window_s
        self.extend_stride_s = extend_stride_s
        self.engine = engine
        self.batch_slots = batch_slots
        self._model: Any = None
        self._processor: Any = None
        self._engine: DecodeEngine | None = None
        self._load_lock = threading.Lock()
        self._device_lock = _FairLock()
        # Fast tokenizers are not safe to call from several threads at once.
        self._processor_lock = threading.Lock()
        self._arrivals = itertools.count()

    @property
    def name(self) -> str:
        return self.info.tag

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def channels(self) -> int:
        return self.info.channels

    @property
    def is_melody(self) -> bool:
        return self.info.kind == "melody"

    @property
    def concurrency(self) -> int:
        """How many requests decode at once: the engine's slots, or 1 with transformers' `generate()`."""
        return self.batch_slots if self.engine == "static" else 1

    def engine_stats(self) -> EngineStats | None:
        """The decoding engine's counters (None with transformers' `generate()` or before loading)."""
        return None if self._engine is None else self._engine.stats()

    def observe_steps(self, observer: Callable[[StepReport], None]) -> None:
        """Calls `observer` after every decoding step of the engine (once loaded); for metrics."""
        self.load()
        if self._engine is not None:
            self._engine.observer = observer

    @property
    def frame_samples(self) -> int:
        """Samples per codec frame (640 at MusicGen's 32 kHz and 50 Hz)."""
        self.load()
        return round(self.sample_rate / self._model.config.audio_encoder.frame_rate)

    def load(self) -> None:
        with self._load_lock:
            if self._model is None:
                started = time.perf_counter()
                model, self._processor = load(self.info, self.device, self.dtype)
                if self.engine == "static":
                    self._engine = DecodeEngine(model, self.device, self.batch_slots)
                self._model = model
                logger.info(
                    "loaded %s on %s in %.1f s (%s engine)",
                    self.info.tag,
                    self.device,
                    time.perf_counter() - started,
                    self.engine,
                )

    def close(self) -> None:
        """Stops the decoding engine between two steps; later and unfinished generations raise
        `ShuttingDown`. Called when the service stops."""
        engine = self._engine
        if engine is not None:
            engine.close()

    def next_arrival(self) -> int:
        """A ticket that ranks a request among all others on this generator (smaller is served first).

        Callers that wait before calling `generate` (an HTTP request queued for a thread) take it
        when the request arrives, so waiting does not cost them their place.
        """
        return next(self._arrivals)

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        arrival: int | None = None,
    ) -> GenerationResult:
        """Generates `request.params.duration_s` seconds of new music.

        Args:
            request: what to generate; its audio prompt must be at the model's rate and channels.
            progress: called after each decoding step with (steps done, total steps).
            should_cancel: polled after each step; returning True stops generation and raises
                `GenerationCanceled`.
            arrival: the request's ticket from `next_arrival()`; taken now when not given.
        """
        arrival = self.next_arrival() if arrival is None else arrival
        self.load()
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        hop = self.frame_samples
        frame_rate = self.sample_rate / hop
        new_frames = math.ceil(params.duration_s * self.sample_rate / hop)
        prompt = request.audio_prompt.samples if request.audio_prompt is not None else None
        prompt_frames = 0 if prompt is None else prompt.shape[1] // hop
        windows = plan_windows(
            prompt_frames, new_frames, int(self.window_s * frame_rate), int(self.extend_stride_s * frame_rate)
        )
        watcher = _StepWatcher(sum(w.new_frames + self._delay_steps for w in windows), progress, should_cancel)
        melody = request.melody.samples if request.melody is not None and self.is_melody else None

        prompt_audio = None
        if prompt is not None and prompt_frames:
            prompt_audio = prompt[:, prompt.shape[1] - prompt_frames * hop :]
        with torch.inference_mode():
            prompt_codes = None if prompt_audio is None else self._encode_prompt(prompt_audio)
            if self._engine is None:
                with self._device_lock:
                    # Seeding the global generators is safe only because the device lock serialises
                    # generations; every request starts from its own seed.
                    torch.manual_seed(seed)
                    codes = self._run_windows(params, prompt_codes, melody, windows, watcher, None, arrival)
            else:
                # The engine draws from each request's own generator, seeded as transformers' global
                # one would be, so both engines give the same tokens on the CPU.
                rng = torch.Generator(device=self.device)
                rng.manual_seed(seed)
                codes = self._run_windows(params, prompt_codes, melody, windows, watcher, rng, arrival)
            # One pass of the codec over the prompt and every window: no seams between windows.
            decoded = self._decode_codes(codes)
        prompt_samples = prompt_frames * hop
        new_audio = decoded[:, prompt_samples : prompt_samples + round(params.duration_s * self.sample_rate)]
        if prompt_audio is not None:
            new_audio = smooth_join(prompt_audio, new_audio, decoded[:, prompt_samples - 1], self.sample_rate)
        return GenerationResult(new_audio, self.sample_rate, seed)

    def _run_windows(
        self,
        params: GenerationParams,
        prompt_codes: torch.Tensor | None,
        melody: torch.Tensor | None,
        windows: list[Window],
        watcher: _StepWatcher,
        rng: torch.Generator | None,
        arrival: int,
    ) -> torch.Tensor:
        """Every window's tokens after the prompt's: (codebooks, prompt + new frames).

        Long generation stays in token space, as audiocraft's does: a further window's prompt is
        the tail of the tokens that exist so far, never audio decoded and encoded again. Melody
        models condition a further window on the melody at the window's place in time, looped when
        it is shorter (audiocraft's rule); the first window takes the melody as it is.
        """
        hop = self.frame_samples
        codes = prompt_codes
        start_frame = 0  # where the window's prompt starts, in frames from the start of `codes`
        for index, window in enumerate(windows):
            window_prompt = None
            if codes is not None and window.prompt_frames:
                start_frame = codes.shape[1] - window.prompt_frames
                window_prompt = codes[:, start_frame:]
            window_melody = melody
            if melody is not None and index > 0:
                span = (window.prompt_frames + window.new_frames) * hop
                positions = torch.arange(start_frame * hop, start_frame * hop + span) % melody.shape[1]
                window_melody = melody[:, positions]
            new_codes = self._generate_window(
                params, window_prompt, window_melody, window.new_frames, watcher, rng, (arrival, index)
            )
            codes = new_codes if codes is None else torch.cat([codes, new_codes], dim=1)
        assert codes is not None  # there is always at least one window
        return codes

    @property
    def _delay_steps(self) -> int:
        # MusicGen's delay pattern offsets codebook k by k steps, so the last codebook of the
        # last frame arrives codebooks-1 steps after the first.
        self.load()
        decoder = self._model.config.decoder
        return decoder.num_codebooks // decoder.audio_channels - 1  # type: ignore[no-any-return]

    def _processor_inputs(self, params: GenerationParams, melody: torch.Tensor | None) -> dict[str, torch.Tensor]:
        processor_args: dict[str, Any] = {"text": [params.prompt], "padding": True, "return_tensors": "pt"}
        if melody is not None:
            processor_args.update(audio=melody.mean(dim=0).numpy(), sampling_rate=self.sample_rate)
        with self._processor_lock:
            processed = self._processor(**processor_args)
        inputs = {key: value.to(self.device) for key, value in processed.items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return inputs

    def _generate_window(
        self,
        params: GenerationParams,
        prompt_codes: torch.Tensor | None,
        melody: torch.Tensor | None,
        new_frames: int,
        watcher: _StepWatcher,
        rng: torch.Generator | None = None,
        order: tuple[int, ...] = (0,),
    ) -> torch.Tensor:
        """Runs the model once; returns the window's new codes, (codebooks, new_frames), on the CPU."""
        inputs = self._processor_inputs(params, melody)
        if self._engine is None:
            codes = self._generate_with_transformers(params, inputs, prompt_codes, new_frames, watcher)
        else:
            codes = self._generate_with_engine(params, inputs, prompt_codes, new_frames, watcher, rng, order)
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[1]
        new_codes = codes[:, prompt_frames : prompt_frames + new_frames]
        if new_codes.shape[1] < new_frames:
            raise RuntimeError(f"the model returned {new_codes.shape[1]} frames; {new_frames} were expected")
        return new_codes

    def _generate_with_transformers(
        self,
        params: GenerationParams,
        inputs: dict[str, torch.Tensor],
        prompt_codes: torch.Tensor | None,
        new_frames: int,
        watcher: _StepWatcher,
    ) -> torch.Tensor:
        """transformers' `generate()`, stopped where it hands its codes to the codec: (codebooks, frames)."""
        if prompt_codes is not None:
            inputs = {**inputs, "decoder_input_ids": prompt_codes.to(self.device)}
        sampling = params.temperature > 0
        _codes_of_generate.install(self._model)
        try:
            with _codes_of_generate.capturing():
                self._model.generate(
                    **inputs,
                    max_new_tokens=new_frames + self._delay_steps,
                    do_sample=sampling,
                    temperature=params.temperature if sampling else None,
                    top_k=params.top_k if sampling and params.top_k > 0 else None,
                    top_p=params.top_p if sampling and params.top_p > 0 else None,
                    guidance_scale=params.cfg_coef if params.cfg_coef > 1 else None,
                    stopping_criteria=[watcher.criterion()],
                )
        except _CodesReady as ready:
            return ready.codes
        raise RuntimeError("transformers' generate() returned without handing its codes to the codec")

    def _generate_with_engine(
        self,
        params: GenerationParams,
        inputs: dict[str, torch.Tensor],
        prompt_codes: torch.Tensor | None,
        new_frames: int,
        watcher: _StepWatcher,
        rng: torch.Generator | None,
        order: tuple[int, ...],
    ) -> torch.Tensor:
        engine = self._engine
        assert engine is not None
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[1]
        # The delay pattern needs at least codebooks-1 frames in all; shorter windows decode a
        # few extra frames, which are cut off by the caller.
        frames = max(new_frames, engine.delay_steps - prompt_frames)
        states, mask = engine.encode_conditioning(inputs)
        sampling = Sampling(params.cfg_coef, params.temperature, params.top_k, params.top_p)
        request = DecodeRequest(states, mask, prompt_codes, frames, sampling, rng)
        return engine.decode(request, order, on_step=watcher.step)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio (channels, samples) on the CPU from codes (codebooks, frames), as `generate()` decodes."""
        decoder = self._model.audio_encoder
        batch = codes.to(self.device)[None, None]  # (frames of the codec = 1, batch = 1, codebooks, steps)
        if self._model.decoder.config.audio_channels == 1:
            audio = decoder.decode(batch, audio_scales=[None]).audio_values
        else:
            left = decoder.decode(batch[:, :, ::2, :], audio_scales=[None]).audio_values
            right = decoder.decode(batch[:, :, 1::2, :], audio_scales=[None]).audio_values
            audio = torch.cat([left, right], dim=1)
        return audio[0].to(torch.float32).cpu()  # type: ignore[no-any-return]

    def _encode_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt's codec tokens as decoder input ids, shaped (codebooks, frames).

        Stereo models encode each channel separately and interleave the codebooks
        (left 0, right 0, left 1, ...), as transformers does for its own audio prompts.
        """
        encoder = self._model.audio_encoder
        values = prompt.to(self.device, self.dtype).unsqueeze(0)
        per_channel = [encoder.encode(values[:, c : c + 1, :]).audio_codes[0] for c in range(values.shape[1])]
        # (batch, codebooks * channels, frames), channels alternating within each codebook
        codes = per_channel[0] if len(per_channel) == 1 else torch.stack(per_channel, dim=2).flatten(1, 2)
        return codes.reshape(-1, codes.shape[-1]).cpu()
