"""Milliseconds per decoding step and real-time factor at batch 1, for the musicgen-small and
musicgen-medium decoder shapes (random weights): transformers' `generate()` in float32 (the
baseline), the static engine in float32 and the static engine in the precision `MUSICGEN_DTYPE=auto`
picks on this machine (bfloat16 on CPUs with native bfloat16 where it measures faster), and with
`--int8` the static engine with int8 weights (`MUSICGEN_QUANTIZE=int8`, float32 activations), all
through the service's generator in the same run, with each one's peak memory and the
memory-bandwidth floor (int8: a quarter of float32's weight bytes).

A step's cost is the difference between the wall times of a long and a short generation, divided
by the difference in their steps, so what a request pays once (text encoder, prefill) cancels out;
what remains includes the codec's decoding per frame, the same for every variant and a small part
of a step. A warm-up pays first-use costs (on CUDA, the graph captures for every length the long
run reaches). The variants alternate for `--rounds` rounds; the median is robust to other work on
the machine. Guidance is on (cfg 3) with top-k 250, the service's defaults. Real-time factor:
seconds of audio per second of decoding (50 steps = 1 s).

The floor: a step at batch 1 reads every decoder weight once, so it cannot take less than the
decoder's weight bytes over the machine's read bandwidth (measured here as the best of a few sums
over 512 MiB).

    .venv/bin/python bench/bench_engine_step.py [--shapes musicgen-small musicgen-medium] [--steps 100] [--rounds 3] \
        [--int8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Any

from _bounds import decoder_bytes, read_bandwidth_gb_s
from _decoding import DELAY, PeakMemory, generation_wall_s, hardware, in_memory_generator, on_fresh_thread
from _support import use_private_store

SHORT = 8 + DELAY  # the short generation's steps


def measure(shape: str, steps: int, rounds: int, int8: bool) -> None:
    import copy

    import torch

    from musicgen_bento.engine.threads import PROCESS_THREADS
    from musicgen_bento.generation.device import pick_device, pick_precision
    from musicgen_bento.models.tiny import build_real_shape_model, real_decoder_shape

    device = pick_device(0)
    decoder_shape = real_decoder_shape(shape)

    def build() -> tuple[Any, dict[str, tuple[Any, str, bool]], dict[str, int], Any]:
        model, processor = build_real_shape_model(shape)
        precision = pick_precision(device, "auto", decoder_shape)
        # The other copies are made before the float32 engines join their weights.
        reduced = copy.deepcopy(model).to(device, precision.dtype) if precision.dtype != torch.float32 else None
        quantized = copy.deepcopy(model).to(device, torch.float32) if int8 else None
        model = model.to(device, torch.float32)
        # Weighed before the engines are built: a packing engine replaces the modules' parameters.
        float32_bytes = decoder_bytes(model)
        variants: dict[str, tuple[Any, str, bool]] = {
            "transformers float32": (model, "transformers", False),
            "engine float32": (model, "static", False),
        }
        weights = dict.fromkeys(variants, float32_bytes)
        if reduced is not None:
            name = f"engine auto ({precision.name})"
            weights[name] = decoder_bytes(reduced)
            variants[name] = (reduced, "static", False)
        if quantized is not None:
            weights["engine int8"] = float32_bytes // 4
            variants["engine int8"] = (quantized, "static", True)
        return precision, variants, weights, processor

    # Built on a thread that ends, as everything computed here, so that no thread team outlives its work.
    precision, variants, weights, processor = on_fresh_thread(build, PROCESS_THREADS)
    bandwidth = on_fresh_thread(read_bandwidth_gb_s, PROCESS_THREADS) if not device.startswith("cuda") else float("nan")
    print(
        f"{shape} on {hardware(device)}, guidance on, batch 1, {steps} steps x {rounds} rounds; "
        f"auto: {precision.name} ({precision.reason}); read bandwidth {bandwidth:.1f} GB/s",
        flush=True,
    )
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, (model, engine, quantize) in variants.items():
            # One generator at a time, as one service serves one: an idle engine's thread keeps its
            # team of torch threads, which would slow the kernels of whichever variant runs.
            build_generator = partial(in_memory_generator, model, processor, f"{shape} shape", 1, engine, quantize)
            generator = on_fresh_thread(build_generator)
            generation_wall_s(generator, steps if device.startswith("cuda") else SHORT, device)  # warm-up
            with PeakMemory(device) as memory:
                long = generation_wall_s(generator, steps, device)
            per_step[name].append((long - generation_wall_s(generator, SHORT, device)) / (steps - SHORT))
            peaks[name] = max(peaks[name], memory.peak_mib)
            generator.close()
    baseline_name = next(iter(variants))
    baseline = statistics.median(per_step[baseline_name]) * 1000
    for name in variants:
        median = statistics.median(per_step[name]) * 1000
        spread = ", ".join(f"{value * 1000:.1f}" for value in per_step[name])
        floor_ms = weights[name] / (bandwidth * 1e9) * 1000
        print(
            f"  {name:26}: median {median:7.1f} ms/step (rounds: {spread}), {median / baseline:5.2f}x "
            f"{baseline_name}'s time, real-time factor {20 / median:6.3f}x, bandwidth floor {floor_ms:5.1f} ms "
            f"({median / floor_ms:4.2f}x it), peak memory {peaks[name]:6.0f} MiB",
            flush=True,
        )
    for batch in (1, 8):
        check_ms = on_fresh_thread(partial(finite_check_ms, device, 2 * batch), PROCESS_THREADS)
        print(f"  non-finite guard (in every step above): {check_ms:.3f} ms a step at batch {batch}", flush=True)


def finite_check_ms(device: str, rows: int, rounds: int = 200) -> float:
    """Milliseconds the non-finite guard adds to a step of `rows` rows: its reduction over the
    step's logits (rows, 4 codebooks, 2048 codes), the median of `rounds`."""
    import torch

    from musicgen_bento.engine.finite import finite_slots

    logits = torch.randn(rows, 4, 2048, device=device)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        finite_slots(logits).tolist()  # on a GPU the engine reads it a step later; this waits: an upper bound
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="add the static engine with int8 weights")
    args = parser.parse_args()
    use_private_store()
    for shape in args.shapes:
        measure(shape, args.steps, args.rounds, args.int8)


if __name__ == "__main__":
    main()
