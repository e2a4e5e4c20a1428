"""Milliseconds per decoding step of the engine in bfloat16 with the decoder's weights packed for
oneDNN against the same engine with them dense, at batch 1, 4 and 8, in-process (for explaining
where a step's time goes; the service's figures are `bench_service_throughput.py`'s).

Two engines on copies of one random-weight model at a real decoder shape decode the same requests
(a short text, a 50-frame audio prompt, sampling with the service's defaults), alternating for
`--rounds` rounds. One engine exists at a time, built on a thread of its own, and the bench's main
thread computes nothing: a live team of torch threads beside the engine's (another engine's, or a
thread that encoded text) slows every kernel of its steps (`musicgen_bento/engine/threads.py`). A
step's cost is the difference between the wall times of a long and a short generation of the batch
over the difference in their steps, so the prefill cancels out. It also checks that both engines
give every request the same codes.

    .venv/bin/python bench/bench_packed_weights.py [--shape musicgen-small] [--batches 1 4 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
from typing import Any

from _decoding import hardware, on_fresh_thread

LONG, SHORT = 120, 20  # new frames of the long and the short generation


def _requests(engine: Any, processor: Any, batch: int, frames: int) -> list[Any]:
    import torch

    from musicgen_bento.engine.requests import DecodeRequest, Sampling

    requests = []
    for index in range(batch):
        with torch.inference_mode():
            text = dict(processor(text=[f"bench request {index}"], padding=True, return_tensors="pt"))
            states, mask = engine.encode_conditioning(text)
        prompt = torch.randint(0, 2048, (4, 50), generator=torch.Generator().manual_seed(index))
        generator = torch.Generator().manual_seed(index)
        requests.append(DecodeRequest(states, mask, prompt, frames, Sampling(top_k=250), generator))
    return requests


def _decode_together(engine: Any, requests: list[Any]) -> tuple[float, int, list[Any]]:
    """Wall seconds, engine steps, and each request's codes, for `requests` decoded at once."""
    codes: list[Any] = [None] * len(requests)

    def decode(index: int) -> None:
        codes[index] = engine.decode(requests[index], (index,))

    steps = engine.stats().steps
    threads = [threading.Thread(target=decode, args=(index,)) for index in range(len(requests))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, engine.stats().steps - steps, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from musicgen_bento.engine import DecodeEngine, EngineOptions
    from musicgen_bento.models.tiny import build_real_shape_model

    def build() -> tuple[dict[str, Any], Any]:
        model, processor = build_real_shape_model(args.shape)
        model = model.to(torch.bfloat16)
        return {"dense": copy.deepcopy(model), "packed": model}, processor

    models, processor = on_fresh_thread(build)
    slots = max(args.batches)

    def engine_for(name: str) -> Any:
        return on_fresh_thread(
            lambda: DecodeEngine(models[name], "cpu", slots, EngineOptions(pack_weights=name == "packed"))
        )

    def decode(name: str, batch: int, frames: int) -> tuple[float, int, list[Any]]:
        engine = engine_for(name)
        try:
            return _decode_together(engine, on_fresh_thread(lambda: _requests(engine, processor, batch, frames)))
        finally:
            engine.close()

    layout = engine_for("packed")
    print(f"{args.shape} in bfloat16 on {hardware('cpu')}; {layout.runner.decoder.layout.reason}", flush=True)
    layout.close()
    for batch in args.batches:
        per_step: dict[str, list[float]] = {name: [] for name in models}
        same = True
        for round_index in range(args.rounds + 1):  # the first round warms up
            outputs = {}
            for name in models:
                long_s, long_steps, outputs[name] = decode(name, batch, LONG)
                short_s, short_steps, _ = decode(name, batch, SHORT)
                if round_index:
                    per_step[name].append((long_s - short_s) / (long_steps - short_steps) * 1000)
            same = same and all(torch.equal(a, b) for a, b in zip(outputs["dense"], outputs["packed"], strict=True))
        dense = statistics.median(per_step["dense"])
        packed = statistics.median(per_step["packed"])
        print(
            f"  batch {batch}: dense {dense:6.1f} ms/step ({', '.join(f'{v:.1f}' for v in per_step['dense'])}), "
            f"packed {packed:6.1f} ms/step ({', '.join(f'{v:.1f}' for v in per_step['packed'])}), "
            f"{packed / dense:4.2f}x dense's time; same codes: {same}",
            flush=True,
        )


if __name__ == "__main__":
    main()
