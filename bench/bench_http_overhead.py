"""What serving costs: the same continuation timed through the generator and through HTTP /continue.

Both paths run the same request (same source file, prompt, seed and length) on the same
model; the ratio is the HTTP path's median over the direct path's median. The default model
is the tiny random one (fast, so the fixed overhead shows); pass --model to use another
store tag.

    .venv/bin/python bench/bench_http_overhead.py [--model TAG] [--duration-s 2] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _support import median_seconds, served, use_private_store, write_tone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="musicgen-tiny-random")
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    use_private_store()

    import httpx

    from musicgen_bento.generation.device import pick_device, pick_dtype
    from musicgen_bento.generation.generator import MusicGenGenerator
    from musicgen_bento.models.store import resolve
    from musicgen_bento.render import RenderPlan, render
    from musicgen_bento.schemas import ContinueRequest
    from musicgen_bento.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="musicgen-bench-"))
    source = write_tone(workdir / "source.wav", seconds=12, sample_rate=44100)
    body = {"audio_path": str(source), "prompt": "bench", "duration_s": args.duration_s, "seed": 1}

    server_settings = {"MUSICGEN_MODEL": args.model, "MUSICGEN_OUTPUT_DIR": str(workdir / "http")}
    with served(server_settings) as url, httpx.Client(timeout=600) as client:
        settings = Settings.from_env({"MUSICGEN_OUTPUT_DIR": str(workdir / "direct")})
        info = resolve(args.model, allow_download=False)
        device = pick_device(0)
        generator = MusicGenGenerator(
            info, device, pick_dtype(device, "auto"), settings.window_s, settings.extend_stride_s
        )
        plan = RenderPlan.of(ContinueRequest(**body), settings)  # type: ignore[arg-type]

        def direct() -> None:
            render(plan, generator, settings)

        def over_http() -> None:
            client.post(f"{url}/continue", json=body).raise_for_status()

        # Warm-up: first-use costs are not what is measured.
        direct()
        over_http()
        # Alternate the two paths so that whatever else the machine does falls on both alike.
        direct_all: list[float] = []
        http_all: list[float] = []
        for _ in range(args.repeats):
            direct_all.append(median_seconds(direct, 1)[0])
            http_all.append(median_seconds(over_http, 1)[0])
    direct_median, http_median = statistics.median(direct_all), statistics.median(http_all)

    print(
        f"model {info.tag} on {device}, {args.duration_s:g} s continuation of a 12 s source, {args.repeats} runs each"
    )
    print(f"direct (generator + file I/O): median {direct_median * 1000:8.1f} ms  runs {_ms(direct_all)}")
    print(f"HTTP /continue               : median {http_median * 1000:8.1f} ms  runs {_ms(http_all)}")
    print(
        f"overhead: {(http_median - direct_median) * 1000:.1f} ms per request, "
        f"ratio HTTP/direct = {http_median / direct_median:.3f}"
    )


def _ms(times: list[float]) -> list[int]:
    return [round(t * 1000) for t in times]


if __name__ == "__main__":
    main()
