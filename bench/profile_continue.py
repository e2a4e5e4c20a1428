"""Where one /continue's time goes, stage by stage, at a real decoder shape (random weights).

Times each stage of the request pipeline once, in-process, on the musicgen-small shape: reading and
resampling the source, encoding the audio prompt with the codec, the text encoder, the prompt's
prefill through the decoder, the decoding steps, decoding the codes to audio, and writing the file.
This explains a request's cost; claims about the service are measured through HTTP
(`bench_service_throughput.py`). Each pass runs on a thread of its own computing as a request's
thread does in the service (on one core beside the engine's thread on a CPU), and the bench's main
thread computes nothing (see `_decoding.on_fresh_thread`).

    .venv/bin/python bench/profile_continue.py [--dtype float32|bfloat16] [--prompt-s 10] [--clip-s 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _support import use_private_store, write_tone


def timed(label: str, run: Callable[[], Any], results: list[tuple[str, float]]) -> Any:
    started = time.perf_counter()
    value = run()
    results.append((label, time.perf_counter() - started))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--prompt-s", type=float, default=10.0)
    parser.add_argument("--clip-s", type=float, default=5.0)
    args = parser.parse_args()
    use_private_store()

    import torch
    from _decoding import hardware, in_memory_generator, on_fresh_thread, request_threads

    from musicgen_bento.audio.clip import to_model_format
    from musicgen_bento.audio.files import read_audio, write_audio
    from musicgen_bento.audio.paths import InputLimits
    from musicgen_bento.engine import DecodeRequest, Sampling
    from musicgen_bento.generation.codec import LEFT_CONTEXT_FRAMES
    from musicgen_bento.generation.params import GenerationParams
    from musicgen_bento.models.tiny import build_real_shape_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, processor = on_fresh_thread(lambda: build_real_shape_model("musicgen-small"))
    model = on_fresh_thread(lambda: model.to("cpu", dtype))
    generator = on_fresh_thread(lambda: in_memory_generator(model, processor, "small", 8, "static"))
    engine = generator.decode_engine
    threads = request_threads(generator, "cpu")
    workdir = Path(tempfile.mkdtemp(prefix="musicgen-profile-"))
    source_path = write_tone(workdir / "source.wav", seconds=args.prompt_s, sample_rate=44100)
    params = GenerationParams(prompt="profile", duration_s=args.clip_s, seed=1)
    print(
        f"musicgen-small shape, {args.dtype}, {args.prompt_s:g} s prompt, {args.clip_s:g} s clip, {hardware('cpu')}; "
        f"the request's thread computes with {threads} torch thread(s), the engine's with {engine.stats().threads}; "
        f"attention caches in {engine.stats().attention.name}; weights {engine.stats().weights.reason.split(';')[0]}"
    )

    def one_pass() -> tuple[list[tuple[str, float]], int]:
        results: list[tuple[str, float]] = []
        with torch.inference_mode():
            clip = timed(
                "read + resample source",
                lambda: to_model_format(read_audio(source_path, InputLimits()), 32000, 1),
                results,
            )
            prompt_codes = timed("codec: encode prompt", lambda: generator.codec.encode(clip.samples), results)
            inputs = timed(
                "text encoder (processor + T5)", lambda: generator.conditioning_inputs(params, None), results
            )
            states, mask = timed("conditioning states", lambda: engine.encode_conditioning(inputs), results)
            short = DecodeRequest(states, mask, prompt_codes, 4, Sampling(), torch.Generator().manual_seed(1))
            timed("prefill (+ 7 steps: a 4-frame decode)", lambda: engine.decode(short, (0,)), results)
            frames = round(args.clip_s * 50)
            request = DecodeRequest(states, mask, prompt_codes, frames, Sampling(), torch.Generator().manual_seed(1))
            steps_before = engine.steps_run
            codes = timed("prefill + decoding steps", lambda: engine.decode(request, (0,)), results)
            steps = engine.steps_run - steps_before
            timed("codec: decode prompt + new codes", lambda: generator.codec.decode(codes), results)
            # What the generator decodes: the new codes after the prompt's last frames as left context.
            with_context = codes[:, prompt_codes.shape[1] - LEFT_CONTEXT_FRAMES :]
            audio = timed(
                f"codec: decode {LEFT_CONTEXT_FRAMES} + new codes",
                lambda: generator.codec.decode(with_context),
                results,
            )
            new_audio = audio[:, -round(args.clip_s * 32000) :]
            timed("write wav", lambda: write_audio(new_audio, 32000, workdir, "wav"), results)
        return results, steps

    for round_name in ("warm-up", "measured"):
        results, steps = on_fresh_thread(one_pass, threads)
        if round_name == "measured":
            left_out = ("codec: decode prompt + new codes", "prefill (+ 7 steps: a 4-frame decode)")
            total = sum(seconds for label, seconds in results if label not in left_out)
            for label, seconds in results:
                print(f"  {label:34} {seconds:7.2f} s")
            print(f"  {'(decoding steps run)':34} {steps:7d}")
            print(f"  {'total (one pass, as /continue)':34} {total:7.2f} s")


if __name__ == "__main__":
    main()
