"""Milliseconds per decoding step of the engine on a CPU with its thread the only one that runs
torch's parallel kernels, against the same engine while one other live thread has run a parallel
kernel (as every request thread of the service did before the engine claimed the cores), at batch
1, 4 and 8, in-process (for explaining where a step's time goes; the service's figures are
`bench_service_throughput.py`'s). See `musicgen_bento/engine/threads.py`.

Everything the bench computes outside the engine runs on short-lived threads, so no thread's team
outlives its work except the one the "other thread" rounds keep on purpose. A step's cost is the
difference between the wall times of a long and a short generation of the batch over the
difference in their steps. The two cases alternate for `--rounds` rounds.

    .venv/bin/python bench/bench_cpu_threads.py [--shape musicgen-small] [--batches 1 4 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
from typing import Any

from _decoding import hardware, on_fresh_thread
from bench_packed_weights import LONG, SHORT, _decode_together, _requests


class OtherTeam:
    """A live thread that has run one parallel kernel on every core, as a request thread did."""

    def __enter__(self) -> OtherTeam:
        import torch

        from musicgen_bento.engine.threads import PROCESS_THREADS

        self._release = threading.Event()
        started = threading.Event()

        def hold() -> None:
            torch.set_num_threads(PROCESS_THREADS)
            torch.ones(1 << 22).sum()  # large enough for torch to split it across the cores
            started.set()
            self._release.wait()

        self._thread = threading.Thread(target=hold)
        self._thread.start()
        started.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self._release.set()
        self._thread.join()
        # The holder raised the default for new threads with its own count: lower it again.
        on_fresh_thread(lambda: torch.set_num_threads(1))


def step_ms(engine: Any, processor: Any, batch: int) -> float:
    long_requests = on_fresh_thread(lambda: _requests(engine, processor, batch, LONG))
    short_requests = on_fresh_thread(lambda: _requests(engine, processor, batch, SHORT))
    long_s, long_steps, _ = _decode_together(engine, long_requests)
    short_s, short_steps, _ = _decode_together(engine, short_requests)
    return (long_s - short_s) / (long_steps - short_steps) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from musicgen_bento.engine.core import DecodeEngine
    from musicgen_bento.generation.device import pick_precision
    from musicgen_bento.models.tiny import build_real_shape_model, real_decoder_shape

    shape = real_decoder_shape(args.shape)
    dtype = on_fresh_thread(lambda: pick_precision("cpu", "auto", shape).dtype)  # as the service picks

    def build() -> tuple[Any, Any]:
        model, processor = build_real_shape_model(args.shape)
        model = model.to(dtype)
        return DecodeEngine(model, "cpu", max(args.batches)), processor

    engine, processor = on_fresh_thread(build)
    step_ms(engine, processor, 1)  # warm-up; starts the engine's thread, which claims the cores
    print(
        f"{args.shape} in {str(dtype).removeprefix('torch.')} on {hardware('cpu')}; "
        f"the engine's thread computes with {engine.stats().threads}",
        flush=True,
    )
    for batch in args.batches:
        alone: list[float] = []
        beside: list[float] = []
        for _ in range(args.rounds):
            alone.append(step_ms(engine, processor, batch))
            with OtherTeam():
                beside.append(step_ms(engine, processor, batch))
        print(
            f"  batch {batch}: another thread's team alive {statistics.median(beside):6.1f} ms/step "
            f"({', '.join(f'{v:.1f}' for v in beside)}), the engine's team alone "
            f"{statistics.median(alone):6.1f} ms/step ({', '.join(f'{v:.1f}' for v in alone)}), "
            f"{statistics.median(alone) / statistics.median(beside):4.2f}x",
            flush=True,
        )
    engine.close()


if __name__ == "__main__":
    main()
