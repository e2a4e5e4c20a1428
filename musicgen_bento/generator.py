"""MusicGen generation: one blocking, thread-safe call per request on a lazily loaded model.

Generation parameters travel with each call as a frozen value; nothing about a request is
stored on the shared model. Requests longer than the model's window are generated in
overlapping windows, each prompted with the end of what exists so far (audiocraft's
extend-stride approach). Decoding runs on the static-cache, step-batched engine of `engine.py`
(concurrent requests share the device step by step), or on transformers' `generate()` one
request at a time, in arrival order.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import torch

from .audio import AudioClip, smooth_join
from .engine import DecodeEngine, DecodeRequest, Sampling
from .errors import GenerationCanceled, ModelStoreError
from .model_store import ModelInfo, load

logger = logging.getLogger("musicgen_bento")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
EngineKind = Literal["static", "transformers"]
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
    elapsed_s: float


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

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult:
        """Generates `request.params.duration_s` seconds of new music.

        Args:
            request: what to generate; its audio prompt must be at the model's rate and channels.
            progress: called after each decoding step with (steps done, total steps).
            should_cancel: polled after each step; returning True stops generation and raises
                `GenerationCanceled`.
        """
        arrival = next(self._arrivals)
        self.load()
        started = time.perf_counter()
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

        if self._engine is None:
            with self._device_lock, torch.inference_mode():
                # Seeding the global generators is safe only because the device lock serialises
                # generations; every request starts from its own seed.
                torch.manual_seed(seed)
                produced = self._run_windows(params, prompt, melody, windows, watcher, None, arrival)
        else:
            # The engine draws from each request's own generator, seeded as transformers' global
            # one would be, so both engines give the same tokens on the CPU.
            rng = torch.Generator(device=self.device)
            rng.manual_seed(seed)
            with torch.inference_mode():
                produced = self._run_windows(params, prompt, melody, windows, watcher, rng, arrival)
        audio = torch.cat(produced, dim=1)[:, : round(params.duration_s * self.sample_rate)]
        return GenerationResult(audio, self.sample_rate, seed, time.perf_counter() - started)

    def _run_windows(
        self,
        params: GenerationParams,
        prompt: torch.Tensor | None,
        melody: torch.Tensor | None,
        windows: list[Window],
        watcher: _StepWatcher,
        rng: torch.Generator | None,
        arrival: int,
    ) -> list[torch.Tensor]:
        hop = self.frame_samples
        prompt_frames = windows[0].prompt_frames
        history = prompt[:, prompt.shape[1] - prompt_frames * hop :] if prompt is not None else None
        produced: list[torch.Tensor] = []
        for index, window in enumerate(windows):
            if index == 0:
                window_prompt = history if prompt_frames else None
                window_melody = melody
            else:
                assert history is not None  # every window after the first has audio before it
                window_prompt = history[:, history.shape[1] - window.prompt_frames * hop :]
                window_melody = window_prompt if self.is_melody else None
            new_audio = self._generate_window(
                params, window_prompt, window_melody, window.new_frames, watcher, rng, (arrival, index)
            )
            produced.append(new_audio)
            history = new_audio if history is None else torch.cat([history, new_audio], dim=1)
        return produced

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
        prompt: torch.Tensor | None,
        melody: torch.Tensor | None,
        new_frames: int,
        watcher: _StepWatcher,
        rng: torch.Generator | None = None,
        order: tuple[int, ...] = (0,),
    ) -> torch.Tensor:
        """Runs the model once; returns the new audio (channels, new_frames * hop) on the CPU."""
        hop = self.frame_samples
        inputs = self._processor_inputs(params, melody)
        prompt_codes = self._encode_prompt(prompt) if prompt is not None else None
        if self._engine is None:
            decoded = self._generate_with_transformers(params, inputs, prompt_codes, new_frames, watcher)
        else:
            decoded = self._generate_with_engine(params, inputs, prompt_codes, new_frames, watcher, rng, order)
        prompt_samples = 0 if prompt is None else prompt.shape[1]
        new_audio = decoded[:, prompt_samples : prompt_samples + new_frames * hop]
        if new_audio.shape[1] < new_frames * hop:
            raise RuntimeError(f"the model returned {new_audio.shape[1]} samples; {new_frames * hop} were expected")
        if prompt is not None and prompt_samples > 0:
            new_audio = smooth_join(prompt, new_audio, decoded[:, prompt_samples - 1], self.sample_rate)
        return new_audio

    def _generate_with_transformers(
        self,
        params: GenerationParams,
        inputs: dict[str, torch.Tensor],
        prompt_codes: torch.Tensor | None,
        new_frames: int,
        watcher: _StepWatcher,
    ) -> torch.Tensor:
        if prompt_codes is not None:
            inputs = {**inputs, "decoder_input_ids": prompt_codes}
        sampling = params.temperature > 0
        output = self._model.generate(
            **inputs,
            max_new_tokens=new_frames + self._delay_steps,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_k=params.top_k if sampling and params.top_k > 0 else None,
            top_p=params.top_p if sampling and params.top_p > 0 else None,
            guidance_scale=params.cfg_coef if params.cfg_coef > 1 else None,
            stopping_criteria=[watcher.criterion()],
        )
        return output[0].to(torch.float32).cpu()  # type: ignore[no-any-return]

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
        # few extra frames, which are cut off below.
        frames = max(new_frames, engine.delay_steps - prompt_frames)
        states, mask = engine.encode_conditioning(inputs)
        sampling = Sampling(params.cfg_coef, params.temperature, params.top_k, params.top_p)
        request = DecodeRequest(states, mask, prompt_codes, frames, sampling, rng)
        codes = engine.decode(request, order, on_step=watcher.step)
        return self._decode_codes(codes)

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
        return codes.reshape(-1, codes.shape[-1])
