"""Where one /continue's time goes, stage by stage, at a real decoder shape (random weights).

Times each stage of the request pipeline once, in-process, on the musicgen-small shape: reading and
resampling the source, encoding the audio prompt with the codec, the text encoder, the prompt's
prefill through the decoder, the decoding steps, decoding the codes to audio, and writing the file.
This explains a request's cost; claims about the service are measured through HTTP
(`bench_service_throughput.py`).

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
    from _decoding import hardware, in_memory_generators

    from musicgen_bento.audio.clip import to_model_format
    from musicgen_bento.audio.files import read_audio, write_audio
    from musicgen_bento.audio.paths import InputLimits
    from musicgen_bento.engine import DecodeRequest, Sampling
    from musicgen_bento.generation.params import GenerationParams
    from musicgen_bento.models.tiny import build_real_shape_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, processor = build_real_shape_model("musicgen-small")
    generator = in_memory_generators(model.to("cpu", dtype), processor, "small", 8)["static"]
    engine = generator.decode_engine
    workdir = Path(tempfile.mkdtemp(prefix="musicgen-profile-"))
    source_path = write_tone(workdir / "source.wav", seconds=args.prompt_s, sample_rate=44100)
    params = GenerationParams(prompt="profile", duration_s=args.clip_s, seed=1)
    print(f"musicgen-small shape, {args.dtype}, {args.prompt_s:g} s prompt, {args.clip_s:g} s clip, {hardware('cpu')}")

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
            audio = timed("codec: decode prompt + new codes", lambda: generator.codec.decode(codes), results)
            new_codes = codes[:, prompt_codes.shape[1] :]
            timed("codec: decode new codes only", lambda: generator.codec.decode(new_codes), results)
            new_audio = audio[:, -round(args.clip_s * 32000) :]
            timed("write wav", lambda: write_audio(new_audio, 32000, workdir, "wav"), results)
        return results, steps

    for round_name in ("warm-up", "measured"):
        results, steps = one_pass()
        if round_name == "measured":
            left_out = ("codec: decode new codes only", "prefill (+ 7 steps: a 4-frame decode)")
            total = sum(seconds for label, seconds in results if label not in left_out)
            for label, seconds in results:
                print(f"  {label:34} {seconds:7.2f} s")
            print(f"  {'(decoding steps run)':34} {steps:7d}")
            print(f"  {'total (one pass, as /continue)':34} {total:7.2f} s")


if __name__ == "__main__":
    main()
