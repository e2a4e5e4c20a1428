"""The served model's life: resolved, imported or downloaded, loaded and warmed up in the
background while health reports `loading`, then `ready`, or `error` with the reason."""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ..audio.clip import AudioClip
from ..engine import MIB, MemoryPlan, Precision, StepReport
from ..errors import MusicGenError, NotReady
from ..models.store import decoder_shape, resolve
from ..schemas import EngineHealth, MemoryHealth, PrecisionHealth
from ..settings import Settings
from .backends import Budget, backend_named
from .device import pick_device, pick_precision
from .generator import MusicGenGenerator
from .mock import MockMusicGenGenerator
from .params import GenerationParams, GenerationRequest
from .protocol import Generator

logger = logging.getLogger("musicgen_bento")

Status = Literal["loading", "ready", "error"]

# Seconds of music the start-up check of CUDA graphs decodes at least (twice: eager, replayed).
_GRAPH_CHECK_S = 1.0


@dataclass(frozen=True)
class HealthSnapshot:
    """The model's state as health reports it."""

    status: Status
    model: str
    device: str
    detail: str | None
    licence: str | None
    precision: PrecisionHealth | None


class ModelHost:
    """Owns the one generator of this process and the state of getting it ready."""

    def __init__(self, settings: Settings, on_step: Callable[[StepReport], None] | None = None) -> None:
        self.settings = settings
        self._on_step = on_step
        self._lock = threading.Lock()
        self._status: Status = "loading"
        self._detail: str | None = "starting"
        self._generator: Generator | None = None
        self._device = "cpu"
        self._licence: str | None = None
        self._precision: Precision | None = None
        self._peak_memory_mb: float | None = None
        self._plan: MemoryPlan | None = None
        self._model_name = "mock" if settings.mock else settings.model
        self._ready = threading.Event()

    def start(self) -> None:
        """Gets the model ready on a background thread; returns at once."""
        if self.settings.mock:
            mock = MockMusicGenGenerator()
            self._set(status="ready", detail=None, generator=mock, licence=mock.licence)
            return
        threading.Thread(target=self._prepare, name="musicgen-model-loader", daemon=True).start()

    def health(self) -> HealthSnapshot:
        with self._lock:
            chosen = self._precision
            precision = None if chosen is None else PrecisionHealth(dtype=chosen.name, reason=chosen.reason)
            return HealthSnapshot(self._status, self._model_name, self._device, self._detail, self._licence, precision)

    def generator(self) -> Generator:
        """The ready generator; raises `NotReady` (503) while loading or after a failed load."""
        with self._lock:
            if self._status == "ready" and self._generator is not None:
                return self._generator
            if self._status == "error":
                raise NotReady(f"the model failed to load: {self._detail}", retry_after_s=60)
            raise NotReady(f"the model is loading ({self._detail}); retry shortly", retry_after_s=5)

    def ready_generator(self) -> Generator | None:
        """The generator when ready, else None (never raises)."""
        with self._lock:
            return self._generator if self._status == "ready" else None

    def wait_until_ready(self, timeout_s: float) -> Generator | None:
        """Waits up to `timeout_s` for the model to be ready; the generator, or None."""
        self._ready.wait(timeout_s)
        return self.ready_generator()

    def engine_health(self) -> EngineHealth | None:
        """The decoding engine's state for health; None until the model is ready."""
        generator = self.ready_generator()
        if generator is None:
            return None
        stats = generator.engine_stats()
        if stats is None:
            return EngineHealth(kind=generator.engine_name, slots=generator.concurrency)  # type: ignore[arg-type]
        return EngineHealth(
            kind="static",
            slots=generator.concurrency,
            decoding=stats.decoding,
            waiting=stats.waiting,
            steps=stats.steps,
            prefills_shared=stats.prefills_shared,
            graphs="on" if stats.graphs.on else "off",
            graphs_reason=stats.graphs.reason,
            batch_invariant=stats.invariance.holds,
            batch_invariance_reason=stats.invariance.reason,
            weights=stats.weights.form,  # type: ignore[arg-type]
            weights_reason=stats.weights.reason,
            attention=stats.attention.name,  # type: ignore[arg-type]
            attention_reason=stats.attention.reason,
            threads=stats.threads or None,
        )

    def memory_health(self) -> MemoryHealth | None:
        """The memory plan and, from warm-up on, the measured peak so far; None until planned (or with the mock)."""
        with self._lock:
            plan, peak = self._plan, self._peak_memory_mb
        if plan is None:
            return None
        if peak is not None:  # measured since warm-up: the peak so far, under whatever load came since
            peak = _peak_memory_mb(self._device)
        return MemoryHealth(
            budget_mb=round(plan.budget_mib),
            budget_source=plan.budget_source,
            weights_mb=round(plan.weights_mib),
            loading_mb=round(plan.loading_mib),
            cache_mb_per_slot=round(plan.cache_mib_per_slot, 1),
            margin_mb=round(plan.margin_mib),
            planned_mb=round(plan.total_mib),
            slots=plan.slots,
            cache_positions=plan.positions,
            peak_mb=None if peak is None else round(peak),
        )

    def close(self) -> None:
        """Stops the generator's decoding (at shutdown, after the job worker has stopped)."""
        with self._lock:
            generator = self._generator
        if generator is not None:
            generator.close()

    def _set(self, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, f"_{name}", value)
            if self._status == "ready":
                self._ready.set()

    def _warmup_request(self, generator: MusicGenGenerator) -> GenerationRequest:
        # A continuation of one second of silence: it runs the codec's encoder as well as the
        # decoder, so the first real /continue pays no first-use cost either.
        silence = AudioClip(torch.zeros(generator.channels, generator.sample_rate), generator.sample_rate)
        params = GenerationParams(duration_s=self.settings.warmup_s, seed=0)
        return GenerationRequest(params, audio_prompt=silence, melody=silence if generator.is_melody else None)

    def _prepare(self) -> None:
        try:
            generator = self._load()
            self._set(status="ready", detail=None, generator=generator)
            logger.info("model %s ready on %s", generator.name, self._device)
        except MusicGenError as error:
            logger.error("model %s failed to load: %s", self.settings.model, error.message)
            self._set(status="error", detail=error.message)
        except Exception as error:  # a load can fail in many ways; health must say so, not hang in loading
            logger.exception("model %s failed to load", self.settings.model)
            self._set(status="error", detail=f"{type(error).__name__}: {error}")

    def _load(self) -> MusicGenGenerator:
        """Resolves, plans, loads, warms up and checks the model; health follows each stage."""
        settings = self.settings
        self._device = pick_device(settings.gpu_id)
        self._set(detail=f"resolving {settings.model} in the model store")
        info = resolve(settings.model, settings.allow_download, progress=lambda line: self._set(detail=line))
        self._set(detail=f"choosing the precision of {info.tag} on {self._device}")
        shape = decoder_shape(info)
        precision = pick_precision(self._device, settings.dtype, shape)
        logger.info("%s runs in %s (%s)", info.tag, precision.name, precision.reason)
        backend = backend_named(settings.engine, settings.batch_slots, quantize=settings.quantize == "int8")
        budget = Budget(self._device, precision.dtype, settings.max_memory_mb, settings.window_s, info.kind == "melody")
        plan = backend.plan(shape, budget)
        logger.info("memory plan: %s", plan.describe())
        self._set(
            licence=info.licence, precision=precision, plan=plan, detail=f"loading {info.tag} onto {self._device}"
        )
        generator = MusicGenGenerator(
            info, self._device, precision.dtype, settings.window_s, settings.extend_stride_s, backend
        )
        generator.load()
        if self._on_step is not None:
            generator.observe_steps(self._on_step)
        if settings.warmup_s > 0:
            self._set(detail="warming up")
            generator.generate(self._warmup_request(generator))
        # On CUDA, replayed graphs must give the eager steps' codes before any request trusts
        # them, even with the warm-up turned off; a failure turns them off and the node serves
        # eagerly. Without graphs (CPUs) this decodes nothing.
        self._set(detail="checking CUDA graphs against eager decoding")
        graphs = generator.check_graphs(max(settings.warmup_s, _GRAPH_CHECK_S))
        logger.info("decoding steps: CUDA graphs %s", graphs.reason)
        self._check_peak(plan)
        return generator

    def _check_peak(self, plan: MemoryPlan) -> None:
        """Measures the peak memory after warm-up, and warns when it passed the budget."""
        self._peak_memory_mb = peak = _peak_memory_mb(self._device)
        if peak > plan.budget_mib:
            logger.warning(
                "measured peak memory %.0f MiB exceeds the budget of %.0f MiB (%s): the plan's margin is too "
                "small for this node; lower MUSICGEN_BATCH_SLOTS or raise MUSICGEN_MAX_MEMORY_MB",
                peak,
                plan.budget_mib,
                plan.budget_source,
            )
        else:
            logger.info("measured peak memory after warm-up: %.0f of %.0f MiB planned", peak, plan.total_mib)


def _peak_memory_mb(device: str) -> float:
    """Measured peak memory so far, in MiB: the device's allocations on CUDA, the process's resident
    set on a CPU (where the weights and caches live in host memory)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / MIB
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
