"""Milliseconds per decoding step at the real musicgen-small shape (random weights): through the
service's generator and through plain transformers `generate()`, in the same run.

The per-step cost is the slope between a short and a long generation, so the text encoder,
prompt and codec decoding (paid once per request) cancel out. Guidance is on (cfg 3), as
the service's default.

    .venv/bin/python bench/bench_decode_step.py [--shape musicgen-small] [--steps 40 120]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _support import use_private_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--steps", type=int, nargs=2, default=[40, 120], metavar=("SHORT", "LONG"))
    args = parser.parse_args()
    use_private_store()

    import torch

    from musicgen_bento.generation.device import pick_device, pick_dtype
    from musicgen_bento.generation.generator import MusicGenGenerator
    from musicgen_bento.generation.params import GenerationParams, GenerationRequest
    from musicgen_bento.models.store import import_directory
    from musicgen_bento.models.tiny import build_real_shape_model

    device = pick_device(0)
    dtype = pick_dtype(device, "auto")
    print(f"building a random-weight {args.shape} on {device} ({dtype}) ...", flush=True)
    model, processor = build_real_shape_model(args.shape)
    decoder_params = sum(p.numel() for p in model.decoder.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        processor.save_pretrained(scratch)
        info = import_directory(Path(scratch), f"bench-{args.shape}", source=f"random weights, {args.shape} shape")
    model = model.to(device, dtype)
    generator = MusicGenGenerator(info, device, dtype, window_s=30.0, extend_stride_s=18.0)
    generator.load()
    delay = 3  # the delay pattern adds codebooks - 1 steps to every generation
    inputs = {k: v.to(device) for k, v in processor(text=["bench"], padding=True, return_tensors="pt").items()}

    def plain(steps: int) -> float:
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=steps, do_sample=True, guidance_scale=3.0, top_k=250)
        return time.perf_counter() - started

    def ours(steps: int) -> float:
        params = GenerationParams(prompt="bench", duration_s=(steps - delay) / 50, seed=0)
        started = time.perf_counter()
        generator.generate(GenerationRequest(params))
        return time.perf_counter() - started

    short, long = args.steps
    plain(8), ours(8 + delay)  # warm-up
    results = {}
    for name, run in (("transformers generate()", plain), ("musicgen-bento generator", ours)):
        t_short, t_long = run(short), run(long)
        results[name] = (t_long - t_short) / (long - short) * 1000
        print(
            f"{name:26}: {t_short:6.2f} s for {short} steps, {t_long:6.2f} s for {long} -> {results[name]:7.1f} ms/step"
        )
    baseline, measured = results["transformers generate()"], results["musicgen-bento generator"]
    print(
        f"{args.shape}: decoder {decoder_params:.0f} M parameters, guidance on, batch 1, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"ratio generator/transformers = {measured / baseline:.3f}; "
        f"real-time factor {20 / measured:.3f}x (50 steps = 1 s of audio)"
    )


if __name__ == "__main__":
    main()
