"""Takes through the served API: one `/continue` with `takes` N (one prefill, copied to the other
takes) against N `/continue` calls at once that differ only in their text (N prefills), on a real
`bentoml serve` over HTTP, at a real decoder shape (random weights: only the timing means anything).

Both decode N requests of the same source together, so the difference is what the takes share:
their source's encoding by the codec and their prompt's prefill (each take still encodes its text). The
two phases alternate for `--rounds` rounds on the same server; `/health`'s
`engine.prefills_shared` shows how many prefills were copied.

    .venv/bin/python bench/bench_takes.py [--shape musicgen-small] [--takes 4] [--clip-s 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

from _support import served, use_private_store, write_tone
from bench_service_throughput import import_real_shape_model, together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small")
    parser.add_argument("--takes", type=int, default=4)
    parser.add_argument("--clip-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    use_private_store()

    import httpx
    from _decoding import hardware, on_fresh_thread

    workdir = Path(tempfile.mkdtemp(prefix="musicgen-bench-takes-"))
    source = write_tone(workdir / "source.wav", seconds=10, sample_rate=32000)
    tag = on_fresh_thread(lambda: import_real_shape_model(args.shape, workdir))
    settings = {
        "MUSICGEN_MODEL": tag,
        "MUSICGEN_OUTPUT_DIR": str(workdir / "output"),
        "MUSICGEN_DATA_DIR": str(workdir / "data"),
    }
    print(
        f"{args.shape} shape (random weights) served by `bentoml serve` on {hardware('cpu')}; "
        f"{args.clip_s:g} s continuations of a 10 s source (a 10 s prompt), {args.takes} at a time",
        flush=True,
    )
    body = {"audio_path": str(source), "duration_s": args.clip_s}
    times: dict[str, list[float]] = {"takes": [], "separate": []}
    with served(settings, timeout_s=900) as url, httpx.Client(timeout=3600) as http:

        def shared_prefills() -> int:
            return int(http.get(f"{url}/health").json()["engine"]["prefills_shared"])

        def one_call_with_takes() -> None:
            reply = http.post(f"{url}/continue", json={**body, "prompt": "bench", "seed": 1, "takes": args.takes})
            reply.raise_for_status()

        def separate_call(index: int) -> None:
            reply = http.post(f"{url}/continue", json={**body, "prompt": f"bench {index}", "seed": 1 + index})
            reply.raise_for_status()

        for round_index in range(args.rounds):
            before = shared_prefills()
            started = time.perf_counter()
            one_call_with_takes()
            times["takes"].append(time.perf_counter() - started)
            copied = shared_prefills() - before
            times["separate"].append(together([partial(separate_call, index) for index in range(args.takes)]))
            print(
                f"  round {round_index + 1}: one call with takes={args.takes} {times['takes'][-1]:.1f} s "
                f"({copied} prefills copied); {args.takes} calls with their own text at once "
                f"{times['separate'][-1]:.1f} s",
                flush=True,
            )
    takes, separate = statistics.median(times["takes"]), statistics.median(times["separate"])
    print(
        f"median: takes={args.takes} {takes:.1f} s, {args.takes} separate calls {separate:.1f} s, "
        f"ratio {takes / separate:.2f}"
    )


if __name__ == "__main__":
    main()
