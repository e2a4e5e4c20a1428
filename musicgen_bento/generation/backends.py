"""The two ways a window's tokens are decoded, behind one small protocol: the step-batched
engine (concurrent requests share the device), or transformers' own `generate()` (one request
at a time, in arrival order).

The backend is chosen once (`MUSICGEN_ENGINE`, `backend_named`) as an object that the model's
host plans with before the weights load (what it will hold, and so the memory plan) and that the
generator starts on the loaded model.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import torch

from ..engine import (
    DecodeEngine,
    DecodeRequest,
    DecoderShape,
    EngineOptions,
    EngineStats,
    FramesFn,
    GraphsStatus,
    MemoryPlan,
    Precision,
    StepReport,
    WeightLayout,
    cache_precision_for,
    delay_steps,
    plan_for,
    weights_layout_for,
)
from .params import GenerationParams, StepWatcher


@dataclass(frozen=True)
class WindowInputs:
    """What one pass of the model decodes from: the processor's tensors (text and melody), the
    window's prompt codes (codebooks, frames) and how many new frames it adds."""

    params: GenerationParams
    inputs: dict[str, torch.Tensor]
    prompt_codes: torch.Tensor | None
    new_frames: int


@dataclass(frozen=True)
class WindowCall:
    """How one generation has a window decoded: its steps reported to `watcher` (which raises to
    cancel), its tokens drawn from `rng` (None: torch's global generator, seeded by the backend),
    its place among waiting requests (`order`, smaller first), and, where the backend can, its new
    frames handed to `on_frames` as they are completed (the returned codes hold them all anyway)."""

    watcher: StepWatcher
    rng: torch.Generator | None
    order: tuple[int, ...]
    on_frames: FramesFn | None = None


@dataclass(frozen=True)
class Budget:
    """What a backend plans its memory for: the device, the weights' precision, the budget
    (`MUSICGEN_MAX_MEMORY_MB`, 0: what the device has free) and the window it decodes."""

    device: str
    dtype: torch.dtype
    max_memory_mb: int
    window_s: float
    is_melody: bool


class DecodeBackend(Protocol):
    """Decodes windows of codes for the generator."""

    name: str  # as MUSICGEN_ENGINE and /health name it

    @property
    def concurrency(self) -> int:
        """How many generations decode at once."""

    def plan(self, shape: DecoderShape, budget: Budget) -> MemoryPlan:
        """Chooses what the backend will hold for this decoder (before its weights load) and the
        memory plan for it; raises `MemoryBudgetError` when it cannot fit."""

    def start(self, model: Any, device: str) -> None:
        """Starts decoding with a loaded model (once)."""

    @property
    def delay_steps(self) -> int:
        """Steps a window decodes beyond its frames (the delay pattern's); once started."""

    def seeded(self, seed: int) -> contextlib.AbstractContextManager[torch.Generator | None]:
        """Holds what one generation needs across its windows: its random generator (None when
        the backend draws from torch's global one, seeded here), its turn on the device."""

    def decode_window(self, window: WindowInputs, call: WindowCall) -> torch.Tensor:
        """The window's codes, prompt included: (codebooks, prompt + new frames or more), on the CPU."""

    def stats(self) -> EngineStats | None: ...

    def check_graphs(self, window: WindowInputs) -> GraphsStatus:
        """Checks replayed CUDA graphs against eager decoding on `window` (greedy) at start-up."""

    def observe(self, observer: Callable[[StepReport], None]) -> None: ...

    def close(self) -> None: ...


ENGINES: tuple[str, ...] = ("static", "transformers")


def backend_named(name: str, slots: int = 8, quantize: bool = False) -> DecodeBackend:
    """The backend `MUSICGEN_ENGINE=name` chooses: the static engine with up to `slots` requests
    decoding together (int8 weights where `quantize`), or transformers' `generate()`."""
    if name == "static":
        return EngineBackend(slots, quantize=quantize)
    if name == "transformers":
        return TransformersBackend()
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")


# How many completed frames a streaming request collects before the engine copies them to the
# host for its caller (0.1 s of music): often enough for the codec's chunks, rare enough that the
# copies (a device synchronisation on CUDA) cost nothing measurable.
_STREAM_FRAMES = 5


class EngineBackend:
    """The static-cache engine: up to `slots` generations decode together, admitted by arrival.

    Planned, it allocates the plan's cache and holds its weights as the plan counted them;
    unplanned (benchmarks, tests), the engine chooses and its cache grows as requests need.
    `weights` fixes the weights' form without a plan.
    """

    name = "static"

    def __init__(self, slots: int = 8, *, quantize: bool = False, weights: WeightLayout | None = None) -> None:
        self.slots = slots
        self._quantize = quantize
        self._weights = weights
        self._attention: Precision | None = None
        self._cache_positions: tuple[int, int] | None = None
        self._engine: DecodeEngine | None = None

    @property
    def concurrency(self) -> int:
        return self.slots

    @property
    def engine(self) -> DecodeEngine:
        if self._engine is None:
            raise RuntimeError("the engine starts with the model: load it first")
        return self._engine

    def plan(self, shape: DecoderShape, budget: Budget) -> MemoryPlan:
        self._attention = cache_precision_for(shape, device=budget.device, dtype=budget.dtype, slots=self.slots)
        self._weights = weights_layout_for(shape, device=budget.device, dtype=budget.dtype, quantize=self._quantize)
        memory = plan_for(
            shape,
            device=budget.device,
            dtype=budget.dtype,
            cache_dtype=self._attention.dtype,
            max_memory_mb=budget.max_memory_mb,
            requested_slots=self.slots,
            window_s=budget.window_s,
            is_melody=budget.is_melody,
            weights=self._weights,
        )
        self.slots = memory.slots
        self._cache_positions = (memory.positions, memory.cross_positions)
        return memory

    def start(self, model: Any, device: str) -> None:
        options = EngineOptions(
            quantize=self._quantize,
            cache_positions=self._cache_positions,
            attention=self._attention,
            weights=self._weights,
        )
        self._engine = DecodeEngine(model, device, self.slots, options)

    @property
    def delay_steps(self) -> int:
        return self.engine.delay_steps

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[torch.Generator | None]:
        # Each request draws from its own generator, seeded as transformers' global one would be,
        # so both backends give the same tokens on the CPU.
        rng = torch.Generator(device=self.engine.device)
        rng.manual_seed(seed)
        yield rng

    def decode_window(self, window: WindowInputs, call: WindowCall) -> torch.Tensor:
        request = self._request(window, call.rng, _STREAM_FRAMES if call.on_frames is not None else 0)
        return self.engine.decode(request, call.order, on_step=call.watcher.step, on_frames=call.on_frames)

    def _request(self, window: WindowInputs, rng: torch.Generator | None, stream_frames: int = 0) -> DecodeRequest:
        engine = self.engine
        prompt_frames = 0 if window.prompt_codes is None else window.prompt_codes.shape[1]
        # The delay pattern needs at least codebooks-1 frames in all; shorter windows decode a
        # few extra frames, which the generator cuts off.
        frames = max(window.new_frames, engine.delay_steps - prompt_frames)
        states, mask = engine.encode_conditioning(window.inputs)
        return DecodeRequest(states, mask, window.prompt_codes, frames, window.params.sampling, rng, stream_frames)

    def stats(self) -> EngineStats | None:
        return self.engine.stats()

    def check_graphs(self, window: WindowInputs) -> GraphsStatus:
        if not self.engine.runner.graphs.enabled:  # nothing to check: skip encoding the text as well
            return self.engine.runner.graphs.status()
        return self.engine.check_graphs(self._request(window, None))

    def observe(self, observer: Callable[[StepReport], None]) -> None:
        self.engine.observer = observer

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


class TransformersBackend:
    """transformers' `generate()`, one generation at a time in arrival order, stopped where it
    hands its codes to the codec so that long generation stays in token space."""

    name = "transformers"
    concurrency = 1

    def __init__(self) -> None:
        self._model: Any = None
        self._device = "cpu"
        self._turns = _FairLock()

    def plan(self, shape: DecoderShape, budget: Budget) -> MemoryPlan:
        # transformers keeps its own cache, in the weights' precision, for one generation at a time.
        return plan_for(
            shape,
            device=budget.device,
            dtype=budget.dtype,
            cache_dtype=budget.dtype,
            max_memory_mb=budget.max_memory_mb,
            requested_slots=1,
            window_s=budget.window_s,
            is_melody=budget.is_melody,
        )

    def start(self, model: Any, device: str) -> None:
        self._model, self._device = model, device
        _codes_of_generate.install(model)

    @property
    def delay_steps(self) -> int:
        return delay_steps(self._model)

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[torch.Generator | None]:
        with self._turns:
            # Seeding the global generators is safe only because generations take turns; every
            # request starts from its own seed.
            torch.manual_seed(seed)
            yield None

    def decode_window(self, window: WindowInputs, call: WindowCall) -> torch.Tensor:
        # generate() hands over its codes only at its end: a stream gets a window's frames at once.
        inputs = window.inputs
        if window.prompt_codes is not None:
            inputs = {**inputs, "decoder_input_ids": window.prompt_codes.to(self._device)}
        sampling = window.params.sampling
        sampled = not sampling.greedy
        try:
            with _codes_of_generate.capturing():
                self._model.generate(
                    **inputs,
                    max_new_tokens=window.new_frames + self.delay_steps,
                    do_sample=sampled,
                    temperature=sampling.temperature if sampled else None,
                    top_k=sampling.top_k_limit if sampled else None,
                    top_p=sampling.top_p_limit if sampled else None,
                    guidance_scale=sampling.cfg_coef if sampling.guided else None,
                    stopping_criteria=[_criterion(call.watcher)],
                )
        except _CodesReady as ready:
            return ready.codes
        raise RuntimeError("transformers' generate() returned without handing its codes to the codec")

    def stats(self) -> EngineStats | None:
        return None

    def check_graphs(self, window: WindowInputs) -> GraphsStatus:
        return GraphsStatus(False, "off: transformers' generate() decodes eagerly")

    def observe(self, observer: Callable[[StepReport], None]) -> None:
        """No engine to observe: generate() runs its own loop."""

    def close(self) -> None:
        """Nothing to stop: a running generate() ends with its request."""


def _criterion(watcher: StepWatcher) -> Any:
    """A transformers stopping criterion that reports each step to `watcher` (which raises to cancel)."""
    from transformers import StoppingCriteria

    class Criterion(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            watcher.step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Criterion()


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
