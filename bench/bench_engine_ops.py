"""Operations per decoding step and per-step overhead: transformers' `generate()` against the static
engine, in the same run.

On a GPU at batch 1 a MusicGen step is too small to keep the device busy: its cost is the number
of kernels it runs (each a launch when eager, a node of the graph when captured), not their
arithmetic. This counts, on any device, the ATen operations a step dispatches (views and other
metadata-only operations excluded: they run no kernel), at the musicgen-small and musicgen-medium
decoder shapes (random weights). Transformers' count per step is the difference between two
generations of different lengths, so its per-request work (text encoder, codec) cancels out; the
engine's is counted on its worker thread, one step at a time, with its CUDA graphs off so that
the forward's operations are seen.

It also times steps at the tiny test model's shape (2 layers of width 32), where arithmetic is
small and a step costs mostly its overhead: Python, dispatch and bookkeeping (and, for both
engines alike, the tiny codec's decoding per frame).

    .venv/bin/python bench/bench_engine_ops.py [--shapes musicgen-small musicgen-medium] [--tiny-steps 300]
"""

from __future__ import annotations

import argparse
import collections
import statistics
from functools import partial
from typing import Any

from _decoding import DELAY, generation_wall_s, hardware, in_memory_generator, on_fresh_thread
from _support import use_private_store

# Operations that run no kernel here: aliases, and dropout, which an evaluating model dispatches
# and which returns its input.
NO_KERNEL = {"detach", "lift_fresh", "alias", "dropout"}

ENGINES = ("transformers", "static")


def _counter() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class OperationCounter(TorchDispatchMode):
        """Counts the ATen operations dispatched inside it that do more than change metadata."""

        def __init__(self) -> None:
            super().__init__()
            self.counts: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not func.is_view and func.__name__.split(".")[0] not in NO_KERNEL:
                self.counts[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    return OperationCounter()


def _inputs(processor: Any, device: Any) -> dict[str, Any]:
    return {
        key: value.to(device) for key, value in processor(text=["bench"], padding=True, return_tensors="pt").items()
    }


def transformers_ops_per_step(model: Any, processor: Any, short: int, long: int) -> tuple[float, Any]:
    """Operations per step of `generate()` (guidance on, top-k sampling), and the longer run's counts."""
    import torch

    counts = []
    for new_tokens in (short, long):
        counter = _counter()
        torch.manual_seed(0)
        with torch.inference_mode(), counter:
            model.generate(
                **_inputs(processor, model.device),
                max_new_tokens=new_tokens,
                do_sample=True,
                top_k=250,
                guidance_scale=3.0,
            )
        counts.append(counter.counts)
    per_step = (sum(counts[1].values()) - sum(counts[0].values())) / (long - short)
    return per_step, counts[1] - counts[0]


def engine_ops_per_step(model: Any, processor: Any, steps: int) -> tuple[float, Any]:
    """Operations per step of the engine (guidance on, top-k sampling), and a middle step's counts."""
    import torch

    from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling

    engine = DecodeEngine(model, str(model.device), slots=1, options=EngineOptions(use_cuda_graphs=False))
    step = engine.runner.step
    per_step: list[collections.Counter[str]] = []

    def counted_step(*args: Any) -> None:
        counter = _counter()
        with counter:
            step(*args)
        per_step.append(counter.counts)

    engine.runner.step = counted_step  # type: ignore[method-assign,assignment]
    with torch.inference_mode():
        states, mask = engine.encode_conditioning(_inputs(processor, model.device))
    seeded = torch.Generator(device=model.device).manual_seed(0)
    request = DecodeRequest(states, mask, None, steps, Sampling(3.0, 1.0, 250, 0.0), seeded)
    engine.decode(request, (0,))
    engine.close()
    # A middle step is a typical one.
    return statistics.fmean(sum(counts.values()) for counts in per_step), per_step[len(per_step) // 2]


def step_overhead(steps: int, rounds: int) -> dict[str, float]:
    """Milliseconds per step of both engines on the tiny text model, batch 1, through the generator:
    the difference between a long and a short generation's wall times over the difference in steps
    (per-request costs cancel), median over rounds that alternate the engines. One generator exists
    at a time (as in `bench_engine_step.py`): the static engine's thread, idle or not, keeps a team
    of torch threads that the other engine's kernels would share the cores with."""
    from musicgen_bento.models.tiny import build_tiny_model

    model, processor = build_tiny_model("text")
    short = 10 + DELAY
    per_step: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    for _ in range(rounds):
        for engine in ENGINES:
            generator = on_fresh_thread(partial(in_memory_generator, model, processor, "tiny", 1, engine))
            generation_wall_s(generator, short, "cpu")  # warm-up
            long = generation_wall_s(generator, steps, "cpu")
            per_step[engine].append((long - generation_wall_s(generator, short, "cpu")) / (steps - short) * 1000)
            generator.close()
    return {engine: statistics.median(times) for engine, times in per_step.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--tiny-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--detail", action="store_true", help="print the operations of one step, by kind")
    args = parser.parse_args()
    use_private_store()

    from musicgen_bento.generation.device import pick_device, pick_dtype
    from musicgen_bento.models.tiny import build_real_shape_model

    device = pick_device(0)
    print(f"on {hardware(device)}", flush=True)
    for shape in args.shapes:
        model, processor = build_real_shape_model(shape)
        model = model.to(device, pick_dtype(device, "auto"))
        baseline, baseline_counts = transformers_ops_per_step(model, processor, 2 + DELAY, 6 + DELAY)
        engine, engine_counts = engine_ops_per_step(model, processor, 4)
        print(
            f"{shape:16} operations per step: transformers generate() {baseline:7.1f}, engine {engine:7.1f}, "
            f"ratio {engine / baseline:.3f}",
            flush=True,
        )
        if args.detail:
            print(f"  transformers: {dict(baseline_counts.most_common())}")
            print(f"  engine:       {dict(engine_counts.most_common())}")
        del model
    medians = step_overhead(args.tiny_steps, args.rounds)
    print(
        f"tiny model (2 layers, width 32), median ms per step: transformers generate() {medians['transformers']:.3f}, "
        f"engine {medians['static']:.3f}, ratio {medians['static'] / medians['transformers']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
