"""Milliseconds per decoding step and real-time factor at batch 1, for the musicgen-small and
musicgen-medium decoder shapes (random weights): transformers' `generate()` and the static engine,
both through the service's generator, in the same run, with each one's peak memory.

A step's cost is the difference between the wall times of a long and a short generation, divided
by the difference in their steps, so what a request pays once (text encoder, prefill) cancels out;
what remains includes the codec's decoding per frame, the same for both engines and a small part
of a step. (The engine reports progress every 50 ms, not at every step, so steps are not stamped
one by one.) A warm-up pays first-use costs (on CUDA, the graph captures for every length the long
run reaches). The engines alternate for `--rounds` rounds; the median is robust to other work on the
machine. Guidance is on (cfg 3) with top-k 250, the service's defaults. Real-time factor: seconds of
audio per second of decoding (50 steps = 1 s).

    .venv/bin/python bench/bench_engine_step.py [--shapes musicgen-small musicgen-medium] [--steps 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from _decoding import DELAY, PeakMemory, generation_wall_s, hardware, real_shape_generators
from _support import use_private_store

SHORT = 8 + DELAY  # the short generation's steps


def measure(shape: str, steps: int, rounds: int) -> None:
    generators, device, dtype = real_shape_generators(shape, slots=1)
    print(f"{shape} on {hardware(device)}, {dtype}, guidance on, batch 1, {steps} steps x {rounds} rounds", flush=True)

    def wall_s(engine: str, count: int) -> float:
        return generation_wall_s(generators[engine], count, device)

    engines = ("transformers", "static")
    for engine in engines:
        wall_s(engine, steps if device.startswith("cuda") else SHORT)  # warm-up
    per_step: dict[str, list[float]] = {engine: [] for engine in engines}
    peaks: dict[str, float] = dict.fromkeys(engines, 0.0)
    for _ in range(rounds):
        for engine in engines:
            with PeakMemory(device) as memory:
                long = wall_s(engine, steps)
            per_step[engine].append((long - wall_s(engine, SHORT)) / (steps - SHORT))
            peaks[engine] = max(peaks[engine], memory.peak_mib)
    medians = {}
    for engine in engines:
        median = statistics.median(per_step[engine]) * 1000
        medians[engine] = median
        spread = ", ".join(f"{value * 1000:.2f}" for value in per_step[engine])
        print(
            f"  {engine:12}: median {median:8.2f} ms/step (rounds: {spread}), "
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
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    use_private_store()
    for shape in args.shapes:
        measure(shape, args.steps, args.rounds)


if __name__ == "__main__":
    main()
