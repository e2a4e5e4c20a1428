"""Throughput with concurrent requests: seconds of audio generated per wall-clock second when
1, 4 and 16 requests arrive together, at the musicgen-small shape (random weights).

The baseline is transformers' `generate()` through the service's generator, which serves
concurrent requests one after another (its throughput does not depend on how many arrive).
The static engine decodes them together in one batch, each with its own prompt and seed.
Both run in the same process on the same model, one generator at a time; each phase reports its
peak memory. Every request runs on a thread of its own computing as a request's thread does in the
service, and the bench's main thread computes nothing: a live team of torch threads beside the
engine's slows every kernel of its steps (`musicgen_bento/engine/threads.py`).

    .venv/bin/python bench/bench_engine_throughput.py [--shape musicgen-small] [--clip-s 2] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import threading
import time
from functools import partial
from typing import Any

from _decoding import PeakMemory, hardware, in_memory_generator, on_fresh_thread, request_threads
from _support import use_private_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--clip-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--baseline-requests", type=int, default=2)
    args = parser.parse_args()
    use_private_store()

    import torch

    from musicgen_bento.engine.threads import PROCESS_THREADS
    from musicgen_bento.generation.device import pick_device, pick_dtype
    from musicgen_bento.generation.params import GenerationParams, GenerationRequest
    from musicgen_bento.models.tiny import build_real_shape_model

    device = pick_device(0)
    dtype = pick_dtype(device, "auto")

    def build() -> tuple[Any, Any]:
        model, processor = build_real_shape_model(args.shape)
        return model.to(device, dtype), processor

    model, processor = on_fresh_thread(build, PROCESS_THREADS)
    print(f"{args.shape} on {hardware(device)}, {dtype}, guidance on, {args.clip_s:g} s clips", flush=True)

    def together(generator: Any, count: int) -> float:
        """Wall seconds for `count` requests that arrive at once, each on its own thread."""
        requests = [
            GenerationRequest(GenerationParams(prompt=f"bench {index}", duration_s=args.clip_s, seed=index))
            for index in range(count)
        ]
        threads = [
            threading.Thread(target=on_fresh_thread, args=(partial(generator.generate, request), computing))
            for request in requests
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if device.startswith("cuda"):
            on_fresh_thread(torch.cuda.synchronize)
        return time.perf_counter() - started

    def generator_for(engine: str, slots: int) -> Any:
        generator = on_fresh_thread(
            partial(in_memory_generator, model, processor, f"{args.shape} shape", slots, engine)
        )
        on_fresh_thread(lambda: generator.generate(GenerationRequest(GenerationParams(duration_s=0.2, seed=0))))
        return generator

    baseline_generator = generator_for("transformers", 1)
    computing = request_threads(baseline_generator, device)
    with PeakMemory(device) as memory:
        wall = together(baseline_generator, args.baseline_requests)
    baseline_generator.close()
    baseline = args.baseline_requests * args.clip_s / wall
    print(
        f"  transformers generate(), {args.baseline_requests} requests (served one after another): "
        f"{wall:7.2f} s -> {baseline:6.3f} s of audio per second, peak memory {memory.peak_mib:7.0f} MiB",
        flush=True,
    )
    engine = generator_for("static", max(args.concurrency))
    computing = request_threads(engine, device)
    single = None
    for count in args.concurrency:
        if device.startswith("cuda"):
            together(engine, count)  # captures the CUDA graphs this batch size and length need, untimed
        with PeakMemory(device) as memory:
            wall = together(engine, count)
        throughput = count * args.clip_s / wall
        single = single or (throughput if count == 1 else None)
        versus_single = f", {throughput / single:5.2f}x engine at 1" if single else ""
        print(
            f"  static engine, {count:2} concurrent: {wall:7.2f} s -> {throughput:6.3f} s of audio per second "
            f"({throughput / baseline:5.2f}x transformers{versus_single}), peak memory {memory.peak_mib:7.0f} MiB",
            flush=True,
        )
    engine.close()


if __name__ == "__main__":
    main()
