"""Milliseconds per decoding step and real-time factor at batch 1, for the musicgen-small and
musicgen-medium decoder shapes (random weights): transformers' `generate()` and the static engine,
both through the service's generator, in the same run, with each one's peak memory.

Each step's end is timestamped by the generator's progress callback (called once per decoding
step by both engines), so the text encoder, prefill and codec decoding (paid once per request)
are left out. The engines alternate for `--rounds` rounds; the median step is robust to other
work on the machine, the mean is what a whole clip costs. Guidance is on (cfg 3) with top-k 250,
the service's defaults. Real-time factor: seconds of audio per second of decoding (50 steps = 1 s).

    .venv/bin/python bench/bench_engine_step.py [--shapes musicgen-small musicgen-medium] [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

from _decoding import PeakMemory, hardware, real_shape_generators
from _support import use_private_store

DELAY = 3  # the delay pattern adds codebooks - 1 steps to every generation


def measure(shape: str, steps: int, rounds: int) -> None:
    import statistics

    import torch

    from musicgen_bento.generator import GenerationParams, GenerationRequest

    generators, device, dtype = real_shape_generators(shape, slots=1)
    print(f"{shape} on {hardware(device)}, {dtype}, guidance on, batch 1, {steps} steps x {rounds} rounds", flush=True)

    def step_times(engine: str, count: int) -> list[float]:
        stamps: list[float] = []

        def progress(done: int, total: int) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        params = GenerationParams(prompt="bench", duration_s=(count - DELAY) / 50, seed=0)
        generators[engine].generate(GenerationRequest(params), progress=progress)
        return [later - earlier for earlier, later in itertools.pairwise(stamps)]

    engines = ("transformers", "static")
    for engine in engines:
        step_times(engine, 8 + DELAY)  # warm-up: first-use costs (and CUDA graph capture) are not measured
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    peaks: dict[str, float] = dict.fromkeys(engines, 0.0)
    for _ in range(rounds):
        for engine in engines:
            with PeakMemory(device) as memory:
                times[engine] += step_times(engine, steps)
            peaks[engine] = max(peaks[engine], memory.peak_mib)
    medians = {}
    for engine in engines:
        median = statistics.median(times[engine]) * 1000
        mean = statistics.fmean(times[engine]) * 1000
        medians[engine] = median
        print(
            f"  {engine:12}: median {median:8.2f} ms/step (mean {mean:8.2f}), "
            f"real-time factor {20 / median:6.3f}x, peak memory {peaks[engine]:8.0f} MiB",
            flush=True,
        )
    ratio = medians["static"] / medians["transformers"]
    print(
        f"  engine/transformers time per step = {ratio:.3f} (speed-up {1 / ratio:.2f}x); "
        f"a 30 s clip (1503 steps) at these medians: {1503 * medians['static'] / 1000:.1f} s with the engine, "
        f"{1503 * medians['transformers'] / 1000:.1f} s with transformers",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    use_private_store()
    for shape in args.shapes:
        measure(shape, args.steps, args.rounds)


if __name__ == "__main__":
    main()
