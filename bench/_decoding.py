"""Helpers for the decoding benchmarks: real-shape generators on both engines, and peak memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

DELAY = 3  # the delay pattern adds codebooks - 1 steps to every generation

T = TypeVar("T")


def on_fresh_thread(work: Callable[[], T], threads: int | None = None) -> T:
    """`work()` on a thread that ends with it, computing with `threads` torch threads (default: what
    torch gives a new thread). Its team of torch threads ends with it: a live team beside the
    engine's slows every kernel of the engine's steps (`musicgen_bento/engine/threads.py`), so the
    benches compute nothing on their main thread."""
    result: list[T] = []

    def run() -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        result.append(work())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("the work failed on its thread (its traceback is above)")
    return result[0]


def request_threads(generator: Any, device: str) -> int:
    """The torch threads a request's own thread computes with in the service: one beside the static
    engine on a CPU (the engine's thread claims the cores), torch's default with transformers'."""
    from musicgen_bento.engine.threads import PROCESS_THREADS

    static = generator.engine_stats() is not None
    return 1 if static and not device.startswith("cuda") else PROCESS_THREADS


def in_memory_generator(
    model: Any, processor: Any, description: str, slots: int, engine: str, quantize: bool = False
) -> Any:
    """The service's generator with `engine` on a model built in memory (already on its device);
    `quantize`: the static engine's decoder weights in int8."""
    import torch

    from musicgen_bento.engine.weights import choose_layout
    from musicgen_bento.generation.backends import EngineBackend, backend_named
    from musicgen_bento.generation.generator import MusicGenGenerator
    from musicgen_bento.models.store import ModelInfo

    device = str(model.device)
    info = ModelInfo(f"bench-{description}", f"random weights, {description}", "text", 32000, 1, "none", Path("."))
    # Quantized as the service does: the form chosen first, then handed to the engine. A model an
    # earlier engine already packed or quantized (a bench's later rounds) has no dense weight left;
    # the engine then keeps the form it finds.
    fc1 = model.decoder.model.decoder.layers[0].fc1
    weights = None
    if quantize and isinstance(fc1, torch.nn.Linear):
        weights = choose_layout(torch.device(device), model.dtype, fc1.weight, quantize)
    backend = EngineBackend(slots, weights=weights) if engine == "static" else backend_named(engine)
    generator = MusicGenGenerator(info, device, model.dtype, 30.0, 18.0, backend)
    # The benchmark's model is built in memory, so it is handed over instead of loaded.
    generator.use_model(model, processor)
    return generator


def generation_wall_s(generator: Any, steps: int, device: str) -> float:
    """Wall seconds of one generation through `generator` that takes `steps` decoding steps, called
    from a thread of its own as a request's in the service (`request_threads`)."""
    import torch

    from musicgen_bento.generation.params import GenerationParams, GenerationRequest

    params = GenerationParams(prompt="bench", duration_s=(steps - DELAY) / 50, seed=0)

    def generate() -> float:
        started = time.perf_counter()
        generator.generate(GenerationRequest(params))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return on_fresh_thread(generate, request_threads(generator, device))


def hardware(device: str) -> str:
    import os

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


class PeakMemory:
    """Peak memory while the block runs: CUDA memory allocated on GPUs, resident set size on CPUs (MiB)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import os

        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as statm:  # Linux: resident pages are the second field
                self.peak_mib = max(self.peak_mib, int(statm.read().split()[1]) * page / 2**20)
            time.sleep(0.02)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
