"""Throughput through the served API: concurrent `/continue` calls and jobs against the same
requests sent one after another, on a real `bentoml serve` over HTTP, at a real decoder shape.

The model is a random-weight musicgen-small-shaped checkpoint (decoder exact, text encoder
T5-base-sized, codec at its real frame rate but narrow), imported into a private model store;
random weights make noise, not music, so only the timing means anything. Every request has its
own prompt and seed and continues the same source file.

For each path (`/continue`, jobs) the same requests run first one after another, each timed,
then together; "one after another" for N requests is the time of the first N of that run, so
the baseline and the measurement come from the same run on the same server. Throughput is
seconds of audio per wall-clock second; the ratio is together / one after another.

Beside each ratio: the bound this machine sets for it (`_bounds.py`), from rates measured in the
same run with the server idle (the cores' product rate at a prefill's shape in the served
precision, the read bandwidth, the codec on one core), written out as its sum, and the measured
throughput as a share of the bound's. The targets are shares of the bound (8 concurrent `/continue`
and 8 jobs at 0.8 or better); the ratio targets of the benchmarks page are each shown beside the
bound's ratio, which says whether this machine can reach them at all.

`--transformers-baseline N` adds the reference every speed-up is judged against: after the main
server, a second one serving transformers' `generate()` in float32 (`MUSICGEN_ENGINE=transformers`,
`MUSICGEN_DTYPE=float32`) answers N `/continue` calls one after another, and each `/continue`
phase's throughput is printed as a multiple of that one.

    .venv/bin/python bench/bench_service_throughput.py [--shape musicgen-small] [--clip-s 5] \
        [--continue-concurrency 1 4 8] [--job-concurrency 4 8] [--slots 8] [--dtype auto|float32|bfloat16] \
        [--quantize none|int8] [--transformers-baseline 4]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bounds import measure_rates, request_cost
from _support import served, use_private_store, write_tone

MODEL_NAME = "bench-random-{shape}"
PROMPT_S = 10.0  # /continue continues a 10 s source: a 10 s prompt


def import_real_shape_model(shape: str, workdir: Path) -> str:
    """Saves a random-weight `shape` model and imports it into the (private) model store; its tag."""
    return built_and_imported(shape, workdir)[0]


def built_and_imported(shape: str, workdir: Path) -> tuple[str, Any]:
    """A random-weight `shape` model imported into the (private) model store: its tag, and the model."""
    from musicgen_bento.models.store import import_directory
    from musicgen_bento.models.tiny import build_real_shape_model

    model, processor = build_real_shape_model(shape)
    directory = workdir / "checkpoint"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    info = import_directory(directory, MODEL_NAME.format(shape=shape), "random weights (benchmark)", "none")
    return info.tag, model


def together(calls: list[Callable[[], None]]) -> float:
    """Wall seconds for `calls` released at the same moment, each on its own thread."""
    start = threading.Barrier(len(calls) + 1)

    def run(call: Callable[[], None]) -> None:
        start.wait()
        call()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--clip-s", type=float, default=5.0)
    parser.add_argument("--continue-concurrency", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--job-concurrency", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="the server's MUSICGEN_DTYPE"
    )
    parser.add_argument("--quantize", default="none", choices=["none", "int8"], help="the server's MUSICGEN_QUANTIZE")
    parser.add_argument(
        "--transformers-baseline",
        type=int,
        default=0,
        metavar="N",
        help="also time N /continue calls one after another on transformers float32 (0: skip)",
    )
    args = parser.parse_args()
    use_private_store()

    import httpx
    import torch
    from _decoding import hardware

    from musicgen_bento.api.client import MusicGenClient
    from musicgen_bento.engine.threads import PROCESS_THREADS

    workdir = Path(tempfile.mkdtemp(prefix="musicgen-bench-service-"))
    source = write_tone(workdir / "source.wav", seconds=10, sample_rate=32000)
    tag, model = built_and_imported(args.shape, workdir)
    settings = {
        "MUSICGEN_MODEL": tag,
        "MUSICGEN_BATCH_SLOTS": str(args.slots),
        "MUSICGEN_OUTPUT_DIR": str(workdir / "output"),
        "MUSICGEN_DATA_DIR": str(workdir / "data"),
        "MUSICGEN_DTYPE": args.dtype,
        "MUSICGEN_QUANTIZE": args.quantize,
    }
    print(
        f"{args.shape} shape (random weights) served by `bentoml serve` on {hardware('cpu')}, "
        f"{args.slots} slots, MUSICGEN_DTYPE={args.dtype}, MUSICGEN_QUANTIZE={args.quantize}, {args.clip_s:g} s clips; "
        "/continue continues a 10 s "
        "source (a 10 s prompt), jobs generate from text",
        flush=True,
    )
    continue_throughput: dict[int, float] = {}  # concurrent /continue calls -> seconds of audio per second
    with served(settings, timeout_s=900) as url, httpx.Client(timeout=3600) as http:
        health = http.get(f"{url}/health").json()
        engine = health["engine"]
        print(
            f"  served with weights {engine['weights_reason']}; attention caches in {engine['attention']}", flush=True
        )
        # The machine's rates, measured now (the server idle), in the precisions it serves in.
        served_dtype = getattr(torch, health["precision"]["dtype"])
        rates = measure_rates(model, served_dtype, engine["threads"] or PROCESS_THREADS)
        weight_bytes = 1 if engine["weights"] == "int8" else served_dtype.itemsize
        cache_bytes = getattr(torch, engine["attention"]).itemsize
        costs = {
            "/continue": request_cost(model, PROMPT_S, args.clip_s, weight_bytes, cache_bytes),
            "jobs": request_cost(model, 0.0, args.clip_s, weight_bytes, cache_bytes),
        }
        print(
            f"  this machine now: {rates.flop_per_s / 1e12:.2f} TFLOP/s at a prefill's shape in "
            f"{health['precision']['dtype']}, {rates.read_bytes_per_s / 1e9:.1f} GB/s read, codec on one core "
            f"{rates.codec_encode_s_per_s:.3f} s to encode and {rates.codec_decode_s_per_s:.3f} s to decode a second, "
            f"{rates.cores} cores",
            flush=True,
        )
        shares: dict[tuple[str, int], tuple[float, float]] = {}  # (path, count) -> (bound's ratio, share)

        def continue_call(index: int) -> Callable[[], None]:
            return continuation(http, url, source, args.clip_s, index)

        def job_call(index: int) -> Callable[[], None]:
            def call() -> None:
                with MusicGenClient(url, timeout_s=3600) as client:
                    # A fresh idempotency key: the artifact cache would answer a repeated request at once.
                    job = client.submit(
                        prompt=f"bench {index}", duration_s=args.clip_s, seed=index, idempotency_key=uuid.uuid4().hex
                    )
                    view = client.wait(job.job_id, timeout_s=3600, poll_s=0.2)
                    assert view.status == "succeeded", view

            return call

        for name, make, counts in (
            ("/continue", continue_call, args.continue_concurrency),
            ("jobs", job_call, args.job_concurrency),
        ):
            if not counts:
                continue
            make(10_000)()  # warm-up of this path, untimed
            one_by_one: list[float] = []
            for index in range(max(counts)):
                started = time.perf_counter()
                make(index)()
                one_by_one.append(time.perf_counter() - started)
            print(f"  {name}: one after another, seconds per request: {[round(s, 1) for s in one_by_one]}", flush=True)
            for count in counts:
                sequential_s = sum(one_by_one[:count])
                wall_s = together([make(index) for index in range(count)])
                audio_s = count * args.clip_s
                if name == "/continue":
                    continue_throughput[count] = audio_s / wall_s
                bound_s = costs[name].bound_s(rates, count)
                shares[name, count] = (sequential_s / bound_s, bound_s / wall_s)
                print(
                    f"  {name}: {count} requests: one after another {sequential_s:7.1f} s "
                    f"({audio_s / sequential_s:6.3f} s of audio/s), together {wall_s:7.1f} s "
                    f"({audio_s / wall_s:6.3f} s of audio/s) -> {sequential_s / wall_s:5.2f}x; "
                    f"the bound {sequential_s / bound_s:5.2f}x ({costs[name].arithmetic(rates, count)}): "
                    f"{bound_s / wall_s:.0%} of it",
                    flush=True,
                )
    print_targets(shares)

    if args.transformers_baseline:
        against_transformers(settings, source, args, continue_throughput)


# Targets: throughput as a share of the machine's bound, and the ratios the benchmarks page names,
# each judged against what the bound lets this machine reach.
SHARE_TARGETS = {("/continue", 8): 0.8, ("jobs", 8): 0.8}
RATIO_TARGETS = {("/continue", 4): 2.5, ("/continue", 8): 4.0, ("jobs", 4): 2.5, ("jobs", 8): 4.0}


def print_targets(shares: dict[tuple[str, int], tuple[float, float]]) -> None:
    """Each target beside what was measured, and whether this machine can reach it at all."""
    print("  targets:", flush=True)
    for (path, count), target in SHARE_TARGETS.items():
        if (path, count) in shares:
            share = shares[path, count][1]
            verdict = "met" if share >= target else "not met"
            print(f"    {count} {path} at >= {target:.0%} of the bound: {share:.0%}, {verdict}", flush=True)
    for (path, count), target in RATIO_TARGETS.items():
        if (path, count) in shares:
            bound, share = shares[path, count]
            measured = bound * share
            reach = "within this machine's reach" if bound >= target else "OUT OF THIS MACHINE'S REACH"
            print(
                f"    {count} {path} >= {target:g}x one after another: {measured:.2f}x measured; the bound is "
                f"{bound:.2f}x, so {target:g}x is {reach}",
                flush=True,
            )


def against_transformers(
    settings: dict[str, str], source: Path, args: argparse.Namespace, continue_throughput: dict[int, float]
) -> None:
    """Times `--transformers-baseline` /continue calls one after another on a transformers float32
    server, and prints each concurrent /continue phase's throughput as a multiple of it."""
    import httpx

    baseline = {**settings, "MUSICGEN_ENGINE": "transformers", "MUSICGEN_DTYPE": "float32", "MUSICGEN_QUANTIZE": "none"}
    with served(baseline, timeout_s=900) as url, httpx.Client(timeout=3600) as http:
        continuation(http, url, source, args.clip_s, 10_000)()  # warm-up, untimed
        seconds = []
        for index in range(args.transformers_baseline):
            started = time.perf_counter()
            continuation(http, url, source, args.clip_s, index)()
            seconds.append(time.perf_counter() - started)
    reference = args.clip_s * len(seconds) / sum(seconds)
    print(
        f"  transformers float32, /continue one after another: {[round(s, 1) for s in seconds]} s "
        f"({reference:.3f} s of audio/s)",
        flush=True,
    )
    for count, throughput in continue_throughput.items():
        print(
            f"  /continue: {count} together with MUSICGEN_DTYPE={args.dtype}, MUSICGEN_QUANTIZE={args.quantize}: "
            f"{throughput:.3f} s of audio/s "
            f"-> {throughput / reference:5.2f}x transformers float32 one after another",
            flush=True,
        )


def continuation(http: Any, url: str, source: Path, clip_s: float, index: int) -> Callable[[], None]:
    """One /continue call of the bench: its own prompt and seed, the same source."""
    body = {"audio_path": str(source), "prompt": f"bench {index}", "duration_s": clip_s, "seed": index}

    def call() -> None:
        http.post(f"{url}/continue", json=body).raise_for_status()

    return call


if __name__ == "__main__":
    main()
