"""Time to first audio through the served API: `POST /continue/stream` against `POST /continue` for
the same request, on a real `bentoml serve` over HTTP, at the tiny and the musicgen-small shape.

For each shape, each round sends the same request (same source, prompt and seed) to `/continue`
and then to `/continue/stream`, one at a time, and measures:

- `/continue`: the time to its answer (the file is written);
- the stream: the time to its headers, to the first byte of audio after the WAV header (time to
  first audio) and the engine's decoding steps by then, and to its last byte; its total as a
  multiple of `/continue`'s (the cost of streaming: target at most 1.15x).

Time to first audio is also given in seconds of music: at `/continue`'s pace (its time per
second of audio, prefill included), how much music had been generated when the first chunk left.

The models are random-weight (noise, not music): only the timing means anything. The
musicgen-small shape is the benchmark checkpoint of `bench_service_throughput.py` (decoder exact,
codec at its real frame rate but narrow, so the codec's share is smaller than the real one's).

    .venv/bin/python bench/bench_streaming.py [--shapes tiny musicgen-small] [--duration-s 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _support import BIN, served, use_private_store, write_tone

WAV_HEADER_BYTES = 44  # without tags; the stream's header also holds its tags (LIST/INFO)


def prepare_model(shape: str, workdir: Path) -> str:
    """The model store tag of a random-weight model of `shape`."""
    if shape == "tiny":
        subprocess.run([str(BIN / "musicgen-bento"), "models", "create-tiny"], check=True, capture_output=True)
        return "musicgen-tiny-random"
    from bench_service_throughput import import_real_shape_model

    return import_real_shape_model(shape, workdir)


def header_length(first_bytes: bytes) -> int:
    """Where the WAV data chunk's samples start."""
    return first_bytes.index(b"data") + 8


def time_continue(url: str, body: dict[str, object]) -> float:
    import httpx

    started = time.perf_counter()
    response = httpx.post(f"{url}/continue", json=body, timeout=3600)
    response.raise_for_status()
    return time.perf_counter() - started


def engine_steps(url: str) -> int:
    import httpx

    return int(httpx.get(f"{url}/health", timeout=30).json()["engine"]["steps"])


def time_stream(url: str, body: dict[str, object]) -> tuple[float, float, float, int]:
    """Seconds to the headers, to the first audio byte and to the end of the stream, and the
    engine's decoding steps by the time the first audio had come (read from /health then: an upper
    bound, a step or two late)."""
    import httpx

    steps_before = engine_steps(url)
    started = time.perf_counter()
    received = b""
    first_audio = None
    steps_at_first_audio = -1
    with httpx.stream("POST", f"{url}/continue/stream", json=body, timeout=3600) as response:
        response.raise_for_status()
        headers_at = time.perf_counter() - started
        for chunk in response.iter_bytes():
            received += chunk
            if first_audio is None and b"data" in received and len(received) > header_length(received):
                first_audio = time.perf_counter() - started
                steps_at_first_audio = engine_steps(url) - steps_before
        ended = time.perf_counter() - started
    if len(received) != int(response.headers["content-length"]):
        raise RuntimeError("the stream ended short of its length")
    assert first_audio is not None
    return headers_at, first_audio, ended, steps_at_first_audio


def bench_shape(shape: str, duration_s: float, rounds: int, slots: int, dtype: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="musicgen-bench-streaming-"))
    tag = prepare_model(shape, workdir)
    source = write_tone(workdir / "source.wav", seconds=10.0, sample_rate=32000)
    settings = {
        "MUSICGEN_MODEL": tag,
        "MUSICGEN_OUTPUT_DIR": str(workdir / "output"),
        "MUSICGEN_DATA_DIR": str(workdir / "data"),
        "MUSICGEN_BATCH_SLOTS": str(slots),
        "MUSICGEN_DTYPE": dtype,
        "MUSICGEN_WARMUP_S": "1",
        "MUSICGEN_MAX_DURATION_S": str(max(30.0, duration_s)),
    }
    body = {"audio_path": str(source), "prompt": "bench", "duration_s": duration_s, "seed": 1}
    with served(settings, timeout_s=900) as url:
        # First-use costs out of the way, on both routes, at the full length.
        time_continue(url, {**body, "seed": 0})
        time_stream(url, {**body, "seed": 0})
        continued, streamed = [], []
        for _ in range(rounds):
            continued.append(time_continue(url, body))
            streamed.append(time_stream(url, body))
    continue_s = statistics.median(continued)
    headers_s = statistics.median(s[0] for s in streamed)
    first_s = statistics.median(s[1] for s in streamed)
    stream_s = statistics.median(s[2] for s in streamed)
    steps = statistics.median(s[3] for s in streamed)
    pace = continue_s / duration_s  # wall seconds per second of music through /continue
    print(f"\n{shape}: {duration_s:g} s continuations of a 10 s prompt, {rounds} round(s), dtype {dtype}")
    print(f"  /continue                     {continue_s:8.2f} s   ({pace:.2f} s per second of music)")
    print(f"  /continue/stream headers      {headers_s:8.3f} s")
    print(f"  /continue/stream first audio  {first_s:8.3f} s   (= {first_s / pace:.2f} s of music at that pace)")
    print(f"    decoding steps by then      {steps:8.0f}     (of {duration_s * 50 + 3:.0f}; 50 steps = 1 s of music)")
    ratio = stream_s / continue_s
    print(f"  /continue/stream end          {stream_s:8.2f} s   ({ratio:.3f}x /continue; target <= 1.15x)")
    for index, ((headers, first, end, _), whole) in enumerate(zip(streamed, continued, strict=True)):
        print(
            f"  round {index}: /continue {whole:.2f} s; stream headers {headers:.3f}, first {first:.3f}, end {end:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "musicgen-small"])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    use_private_store()
    for shape in args.shapes:
        bench_shape(shape, args.duration_s, args.rounds, args.slots, args.dtype)


if __name__ == "__main__":
    main()
