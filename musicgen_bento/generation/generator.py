"""MusicGen generation: one blocking, thread-safe call per request on a lazily loaded model.

Generation parameters travel with each call as a frozen value; nothing about a request is
stored on the shared model. Requests longer than the model's window are generated in windows
in token space (see `windows`), and the codec decodes all of it once at the end. Tokens come
from one of two backends (see `backends`): the step-batched engine or transformers' `generate()`.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..audio.clip import AudioClip, smooth_join
from ..engine import DecodeEngine, EngineStats, FramesFn, GraphsStatus, StepReport
from ..models.store import ModelInfo, load
from .backends import DecodeBackend, EngineBackend, WindowCall, WindowInputs
from .codec import LEFT_CONTEXT_FRAMES, Codec, StreamingDecoder
from .params import (
    NO_HOOKS,
    AudioFn,
    GenerationHooks,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    StepWatcher,
)
from .windows import Window, melody_of_window, plan_windows

logger = logging.getLogger("musicgen_bento")


class MusicGenGenerator:
    """Generates with one stored MusicGen checkpoint on one device.

    The model loads on first use (or when `load()` is called). `generate` may be called from
    many threads at once. With the static engine (the default backend) up to its slots' worth of
    requests decode together, joining and leaving the batch between steps, admitted in arrival
    order; with transformers' `generate()` generations run one at a time, in arrival order.

    Args:
        backend: how tokens are decoded (`backends.backend_named`), planned or not; the static
            engine with 8 slots when omitted.
    """

    def __init__(
        self,
        info: ModelInfo,
        device: str,
        dtype: torch.dtype,
        window_s: float,
        extend_stride_s: float,
        backend: DecodeBackend | None = None,
    ) -> None:
        self.info = info
        # What the served checkpoint is, as the model store describes it.
        self.name, self.licence = info.tag, info.licence
        self.sample_rate, self.channels = info.sample_rate, info.channels
        self.is_melody = info.kind == "melody"
        self.device = device
        self.dtype = dtype
        self.window_s = window_s
        self.extend_stride_s = extend_stride_s
        self.backend = backend if backend is not None else EngineBackend()
        self._model: Any = None
        self._processor: Any = None
        self._codec: Codec | None = None
        self._load_lock = threading.Lock()
        # Fast tokenizers are not safe to call from several threads at once.
        self._processor_lock = threading.Lock()
        self._arrivals = itertools.count()
        self._prompt_codes = SharedEncodings()

    @property
    def concurrency(self) -> int:
        """How many requests decode at once: the engine's slots, or 1 with transformers' `generate()`."""
        return self.backend.concurrency

    @property
    def engine_name(self) -> str:
        return self.backend.name

    def engine_stats(self) -> EngineStats | None:
        """The decoding engine's counters (None with transformers' `generate()` or before loading)."""
        return self.backend.stats() if self._model is not None else None

    def check_graphs(self, duration_s: float) -> GraphsStatus:
        """The start-up check of the engine's CUDA graphs (see `DecodeEngine.check_graphs`) on a
        greedy text-only generation of `duration_s` seconds; decodes nothing where no graphs run."""
        params = GenerationParams(prompt="warm-up", duration_s=duration_s, seed=0, temperature=0.0)
        melody = torch.zeros(self.channels, self.sample_rate) if self.is_melody else None
        frames = max(1, round(duration_s * self.sample_rate / self.frame_samples))
        window = WindowInputs(params, self.conditioning_inputs(params, melody), None, frames)
        return self._loaded_backend().check_graphs(window)

    def observe_steps(self, observer: Callable[[StepReport], None]) -> None:
        """Calls `observer` after every decoding step of the engine (once loaded); for metrics."""
        self._loaded_backend().observe(observer)

    @property
    def frame_samples(self) -> int:
        """Samples per codec frame (640 at MusicGen's 32 kHz and 50 Hz)."""
        return self._loaded_codec().frame_samples

    @property
    def codec(self) -> Codec:
        """The loaded model's codec."""
        return self._loaded_codec()

    @property
    def decode_engine(self) -> DecodeEngine | None:
        """The step-batched engine (None with transformers' `generate()`)."""
        backend = self._loaded_backend()
        return backend.engine if isinstance(backend, EngineBackend) else None

    def use_model(self, model: Any, processor: Any) -> None:
        """Serves a model already built in memory (and on its device) instead of loading one from
        the store: for benchmarks of shapes no store holds."""
        with self._load_lock:
            self._install(model, processor)

    def load(self) -> None:
        with self._load_lock:
            if self._model is None:
                started = time.perf_counter()
                self._install(*load(self.info, self.device, self.dtype))
                logger.info(
                    "loaded %s on %s in %.1f s (%s engine)",
                    self.info.tag,
                    self.device,
                    time.perf_counter() - started,
                    self.backend.name,
                )

    def _install(self, model: Any, processor: Any) -> None:
        self._processor = processor
        codec_dtype = self.dtype
        if not self.device.startswith("cuda") and self.dtype != torch.float32:
            # The codec decodes in float32 on a CPU: in bfloat16 it adds audible noise to the music
            # (the benchmarks page has the measurement), and it is a small part of a request's time.
            model.audio_encoder.to(torch.float32)
            codec_dtype = torch.float32
        self._codec = Codec(model, self.device, codec_dtype)
        self.backend.start(model, self.device)
        self._model = model

    def close(self) -> None:
        """Stops the decoding engine between two steps; later and unfinished generations raise
        `ShuttingDown`. Called when the service stops."""
        self.backend.close()

    def next_arrival(self) -> int:
        """A ticket that ranks a request among all others on this generator (smaller is served first).

        Callers that wait before calling `generate` (an HTTP request queued for a thread) take it
        when the request arrives, so waiting does not cost them their place.
        """
        return next(self._arrivals)

    def generate(self, request: GenerationRequest, hooks: GenerationHooks = NO_HOOKS) -> GenerationResult:
        """Generates `request.params.duration_s` seconds of new music; its audio prompt must be at
        the model's rate and channels. A stream (`hooks.on_audio`) has its chunks decoded by the
        codec as the frames come (`codec.StreamingDecoder`)."""
        arrival = self.next_arrival() if hooks.arrival is None else hooks.arrival
        backend, codec = self._loaded_backend(), self._loaded_codec()
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        hop = codec.frame_samples
        frame_rate = self.sample_rate / hop
        new_frames = math.ceil(params.duration_s * self.sample_rate / hop)
        prompt = request.audio_prompt.samples if request.audio_prompt is not None else None
        prompt_frames = 0 if prompt is None else prompt.shape[1] // hop
        windows = plan_windows(
            prompt_frames, new_frames, int(self.window_s * frame_rate), int(self.extend_stride_s * frame_rate)
        )
        watcher = StepWatcher(sum(w.new_frames + backend.delay_steps for w in windows), hooks)
        melody = request.melody.samples if request.melody is not None and self.is_melody else None

        prompt_audio = None
        if prompt is not None and prompt_frames:
            prompt_audio = prompt[:, prompt.shape[1] - prompt_frames * hop :]
        total_samples = round(params.duration_s * self.sample_rate)
        with torch.inference_mode():
            prompt_codes = None
            if prompt_audio is not None and request.audio_prompt is not None:
                prompt_codes = self._prompt_codes.encode(request.audio_prompt, partial(codec.encode, prompt_audio))
            with backend.seeded(seed) as rng:
                if hooks.on_audio is not None:
                    streamed = _Streamed(self, prompt_codes, prompt_audio, total_samples, hooks.on_audio)
                    self._run_windows(params, prompt_codes, melody, windows, watcher, rng, arrival, streamed.push)
                    return GenerationResult(streamed.finish(), self.sample_rate, seed)
                codes = self._run_windows(params, prompt_codes, melody, windows, watcher, rng, arrival)
            # One pass of the codec over every window: no seams between windows. Of the prompt it
            # decodes only the frames the new music's audio depends on (its left context, as the
            # streamed decode does), whose last sample the join needs: the prompt's own audio is
            # not returned, and a 10 s prompt made two thirds of a 5 s continuation's decode.
            context = min(prompt_frames, LEFT_CONTEXT_FRAMES)
            decoded = codec.decode(codes[:, prompt_frames - context :])
        context_samples = context * hop
        new_audio = decoded[:, context_samples : context_samples + total_samples]
        if prompt_audio is not None:
            new_audio = smooth_join(prompt_audio, new_audio, decoded[:, context_samples - 1], self.sample_rate)
        return GenerationResult(new_audio, self.sample_rate, seed)

    def _run_windows(
        self,
        params: GenerationParams,
        prompt_codes: torch.Tensor | None,
        melody: torch.Tensor | None,
        windows: list[Window],
        watcher: StepWatcher,
        rng: torch.Generator | None,
        arrival: int,
        on_new_frames: FramesFn | None = None,
    ) -> torch.Tensor:
        """Every window's tokens after the prompt's: (codebooks, prompt + new frames).

        Long generation stays in token space, as audiocraft's does: a further window's prompt is
        the tail of the tokens that exist so far, never audio decoded and encoded again. Melody
        models condition a generation of one window on the melody as it is and, as audiocraft does,
        every window of a longer one (the first included) on a window's worth of melody from the
        window's place in time, looped (`melody_of_window`).
        `on_new_frames` receives every new frame once, in order, as soon as the backend has it.
        """
        backend = self._loaded_backend()
        codes = prompt_codes
        start_frame = 0  # where the window's prompt starts, in frames from the start of `codes`
        window_frames = int(self.window_s * self.sample_rate / self.frame_samples)
        for index, window in enumerate(windows):
            window_prompt = None
            if codes is not None and window.prompt_frames:
                start_frame = codes.shape[1] - window.prompt_frames
                window_prompt = codes[:, start_frame:]
            window_melody = melody
            if melody is not None and len(windows) > 1:
                window_melody = melody_of_window(melody, start_frame, window_frames, self.frame_samples)
            inputs = WindowInputs(
                params, self.conditioning_inputs(params, window_melody), window_prompt, window.new_frames
            )
            handed = _FramesHandedOn(window.new_frames, on_new_frames)
            call = WindowCall(watcher, rng, (arrival, index), handed.take if on_new_frames is not None else None)
            window_codes = backend.decode_window(inputs, call)
            prompt_length = 0 if window_prompt is None else window_prompt.shape[1]
            new_codes = window_codes[:, prompt_length : prompt_length + window.new_frames]
            if new_codes.shape[1] < window.new_frames:
                raise RuntimeError(f"the model returned {new_codes.shape[1]} frames; {window.new_frames} were expected")
            handed.take(new_codes[:, handed.count :])  # what the backend did not hand on while decoding
            codes = new_codes if codes is None else torch.cat([codes, new_codes], dim=1)
        assert codes is not None  # there is always at least one window
        return codes

    def _loaded_backend(self) -> DecodeBackend:
        self.load()
        return self.backend

    def _loaded_processor(self) -> Any:
        self.load()
        return self._processor

    def _loaded_codec(self) -> Codec:
        self.load()
        assert self._codec is not None
        return self._codec

    def text_tokens(self, prompt: str) -> int:
        """How many tokens the text encoder reads for `prompt` (its end token included)."""
        with self._processor_lock:
            return len(self._loaded_processor().tokenizer(prompt)["input_ids"])  # type: ignore[no-any-return]

    def conditioning_inputs(self, params: GenerationParams, melody: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The processor's tensors for a text prompt and a melody (melody models), on the device."""
        processor_args: dict[str, Any] = {"text": [params.prompt], "padding": True, "return_tensors": "pt"}
        if melody is not None:
            processor_args.update(audio=melody.mean(dim=0).numpy(), sampling_rate=self.sample_rate)
        with self._processor_lock:
            processed = self._processor(**processor_args)
        inputs = {key: value.to(self.device) for key, value in null_text_when_empty(processed, params.prompt).items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return inputs


def null_text_when_empty(inputs: Mapping[str, torch.Tensor], prompt: str) -> dict[str, torch.Tensor]:
    """The processor's tensors for `prompt`, with no text conditioning when it is empty: the null
    conditioning of the unconditional row (text states of zeros), as audiocraft's T5Conditioner
    gives an empty description (it zeroes its mask) and as transformers' unconditional inputs are.
    Tokenized as it stands, "" would condition on the end-of-sequence token's states."""
    inputs = dict(inputs)
    if prompt == "":
        inputs["attention_mask"] = torch.zeros_like(inputs["attention_mask"])
    return inputs


class _FramesHandedOn:
    """Passes a window's new frames on once each, in order, and none past the window's length
    (short windows decode a few frames more, which the generator cuts off)."""

    def __init__(self, frames: int, receiver: FramesFn | None) -> None:
        self.count = 0
        self._frames = frames
        self._receiver = receiver

    def take(self, frames: torch.Tensor) -> None:
        if self._receiver is None:
            return
        wanted = frames[:, : self._frames - self.count]
        if wanted.shape[1]:
            self.count += int(wanted.shape[1])
            self._receiver(wanted)


class _Streamed:
    """One streamed generation's audio: the codec decodes the frames as they come
    (`codec.StreamingDecoder`), each chunk goes to the caller and is kept for the result."""

    def __init__(
        self,
        generator: MusicGenGenerator,
        prompt_codes: torch.Tensor | None,
        prompt_audio: torch.Tensor | None,
        total_samples: int,
        on_audio: AudioFn,
    ) -> None:
        self._chunks: list[torch.Tensor] = []
        self._on_audio = on_audio
        self._prompt_audio = prompt_audio
        self._sample_rate = generator.sample_rate
        join = self._join if prompt_audio is not None else None
        self._decoder = StreamingDecoder(generator.codec, prompt_codes, total_samples, self._emit, join)

    def push(self, frames: torch.Tensor) -> None:
        self._decoder.push(frames)

    def finish(self) -> torch.Tensor:
        """Emits the rest; the whole new audio, (channels, samples)."""
        self._decoder.finish()
        return torch.cat(self._chunks, dim=1)

    def _emit(self, chunk: torch.Tensor) -> None:
        self._chunks.append(chunk)
        self._on_audio(chunk)

    def _join(self, after: torch.Tensor, reference_end: torch.Tensor) -> torch.Tensor:
        # As `generate` joins the new music to the prompt, on the first chunk.
        assert self._prompt_audio is not None
        return smooth_join(self._prompt_audio, after, reference_end, self._sample_rate)


@dataclass
class _Encoding:
    """One prompt's codec tokens, once its first caller has them (`SharedEncodings`)."""

    clip: AudioClip  # held, so that no other clip gets its id() while it is shared
    users: int = 0
    codes: torch.Tensor | None = None
    ready: threading.Event = field(default_factory=threading.Event)


class SharedEncodings:
    """Encodes an audio prompt once for the calls that are handed the same clip at the same time.

    The takes of one request are: each is a `generate` call on a thread of its own, started
    together, all with the request's one prompt clip, and encoding a long prompt with the codec is
    a noticeable part of a take's work on a CPU. The first call for a clip
    encodes it; the others wait for its tokens (which nothing modifies). Once no call holds the
    clip it is forgotten, so a later request with equal audio encodes again: clips are told apart
    by identity, never by comparing samples. Should the first call fail, the others encode for
    themselves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encodings: dict[int, _Encoding] = {}

    def encode(self, clip: AudioClip, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tokens `encode()` gives for `clip`, computed by the first of the calls holding it."""
        with self._lock:
            encoding = self._encodings.get(id(clip))
            first = encoding is None
            if encoding is None:
                encoding = self._encodings[id(clip)] = _Encoding(clip)
            encoding.users += 1
        try:
            if first:
                try:
                    encoding.codes = encode()
                finally:
                    encoding.ready.set()
            else:
                encoding.ready.wait()
            return encoding.codes if encoding.codes is not None else encode()
        finally:
            with self._lock:
                encoding.users -= 1
                if not encoding.users:
                    del self._encodings[id(clip)]
