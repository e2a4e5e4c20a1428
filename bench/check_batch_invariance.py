"""Batch invariance through the served API at a real decoder shape: concurrent sampled `/continue`
calls, each compared sample for sample with the same call made alone, on a real `bentoml serve`.

The tests check this on tiny models and, for logits, on a decoder of musicgen-small's widths
in-process; this is the check where users meet it, at the full shape (random weights, a narrow codec;
see `bench_service_throughput.py`), where a last-bit difference has 24 layers to grow into another
token. Each round sends `--concurrency` calls at once (their own prompts and seeds, the service's
default sampling) and then each of them alone, and prints how many gave other audio than alone, and
what `/health` says of batch invariance on this machine.

    .venv/bin/python bench/check_batch_invariance.py [--dtype auto|float32|bfloat16] [--rounds 3] \
        [--concurrency 4] [--clip-s 2] [--source-s 4]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _support import served, use_private_store, write_tone
from bench_service_throughput import import_real_shape_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--clip-s", type=float, default=2.0)
    parser.add_argument("--source-s", type=float, default=4.0, help="the source's length, all of it the prompt")
    args = parser.parse_args()
    use_private_store()

    import httpx
    import numpy as np
    import soundfile as sf
    from _decoding import hardware

    workdir = Path(tempfile.mkdtemp(prefix="musicgen-bench-invariance-"))
    source = write_tone(workdir / "source.wav", seconds=args.source_s, sample_rate=32000)
    settings = {
        "MUSICGEN_MODEL": import_real_shape_model(args.shape, workdir),
        "MUSICGEN_BATCH_SLOTS": str(args.concurrency),
        "MUSICGEN_OUTPUT_DIR": str(workdir / "output"),
        "MUSICGEN_DATA_DIR": str(workdir / "data"),
        "MUSICGEN_DTYPE": args.dtype,
    }
    with served(settings, timeout_s=900) as url, httpx.Client(timeout=3600) as http:
        engine, precision = (httpx.get(f"{url}/health").json()[key] for key in ("engine", "precision"))
        print(
            f"{args.shape} shape (random weights) on {hardware('cpu')}, {precision['dtype']} ({precision['reason']}); "
            f"batch_invariant={engine['batch_invariant']}: {engine['batch_invariance_reason']}",
            flush=True,
        )

        def call(seed: int) -> np.ndarray:
            body = {"audio_path": str(source), "prompt": f"take {seed}", "duration_s": args.clip_s, "seed": seed}
            response = http.post(f"{url}/continue", json=body)
            response.raise_for_status()
            samples, _ = sf.read(response.json()["audio_path"], dtype="int16")  # the file's metadata has its date
            return samples

        differing = total = 0
        for round_index in range(args.rounds):
            seeds = [1000 * round_index + index for index in range(args.concurrency)]
            with ThreadPoolExecutor(len(seeds)) as pool:
                batched = dict(zip(seeds, pool.map(call, seeds), strict=True))
            for seed in seeds:
                total += 1
                if not np.array_equal(batched[seed], call(seed)):
                    differing += 1
                    print(f"  round {round_index}: seed {seed} gave other audio batched than alone", flush=True)
            print(f"  after round {round_index}: {differing} of {total} calls differ batched and alone", flush=True)


if __name__ == "__main__":
    main()
