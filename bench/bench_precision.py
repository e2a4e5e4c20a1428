"""How far reduced precision drifts from float32, at the musicgen-small decoder shape (random weights).

Random weights cannot tell music from noise, so this measures what precision changes, not how it
sounds: the same model in float32 and in the precision `MUSICGEN_DTYPE=auto` picks here (or
`--dtype`), the same text and seed, greedy decoding through the service's engine for `--frames`
frames. It prints the share of identical tokens (every codebook of every frame) and the largest
difference between the two precisions' logits at the first step (conditional row, the decoder's
raw output before guidance), with the logits' own spread for scale. `--int8` compares float32
against the decoder's weights in int8 (`MUSICGEN_QUANTIZE=int8`, float32 activations) instead.

    .venv/bin/python bench/bench_precision.py [--dtype auto|bfloat16|float16 | --int8] [--frames 250]
"""

from __future__ import annotations

import argparse
import copy

from _support import use_private_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16"])
    parser.add_argument("--int8", action="store_true", help="compare against int8 weights instead")
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--prompts", nargs="+", default=["lo-fi beat with warm piano", "epic orchestral drums"])
    args = parser.parse_args()
    use_private_store()

    import torch

    from musicgen_bento.engine import DecodeEngine, DecodeRequest, EngineOptions, Sampling
    from musicgen_bento.generation.device import pick_precision
    from musicgen_bento.models.tiny import build_real_shape_model, real_decoder_shape

    shape = real_decoder_shape("musicgen-small")
    if args.int8:
        name, dtype, reason = "int8", torch.float32, "MUSICGEN_QUANTIZE=int8"
    else:
        precision = pick_precision("cpu", args.dtype, shape)
        name, dtype, reason = precision.name, precision.dtype, precision.reason
        if dtype == torch.float32:
            print(f"auto picks float32 here ({reason}): nothing to compare")
            return
    model, processor = build_real_shape_model("musicgen-small")
    reduced = copy.deepcopy(model).to(dtype)
    print(f"musicgen-small shape, float32 against {name} ({reason}), greedy, {args.frames} frames")
    engines = {
        "float32": DecodeEngine(model, "cpu", 1),
        name: DecodeEngine(reduced, "cpu", 1, EngineOptions(quantize=args.int8)),
    }
    print(f"  {name} engine: weights {engines[name].stats().weights.reason}")
    print(f"  {name} engine: attention caches in {engines[name].stats().attention.reason}")
    greedy = Sampling(cfg_coef=3.0, temperature=0.0)
    same = total = 0
    for prompt in args.prompts:
        inputs = dict(processor(text=[prompt], padding=True, return_tensors="pt"))
        codes = {}
        first_logits = {}
        with torch.inference_mode():
            for variant, engine in engines.items():
                states, mask = engine.encode_conditioning(inputs)
                codes[variant] = engine.decode(DecodeRequest(states, mask, None, args.frames, greedy, None), (0,))
                source = model if variant == "float32" else reduced
                start = torch.full((4, 1), int(source.generation_config.decoder_start_token_id))
                first_logits[variant] = source(**inputs, decoder_input_ids=start).logits.float()
        a, b = codes.values()
        agree = int((a == b).sum())
        same, total = same + agree, total + a.numel()
        differs = (a != b).any(dim=0).nonzero()
        first_diff = int(differs[0]) if len(differs) else None
        diff = (first_logits["float32"] - first_logits[name]).abs().max().item()
        spread = first_logits["float32"].std().item()
        print(
            f"  {prompt!r}: identical tokens {agree}/{a.numel()} ({agree / a.numel():.1%}), first differing frame "
            f"{first_diff}; step-1 logits: max |difference| {diff:.4f} (float32 logits' std {spread:.3f})",
            flush=True,
        )
    print(f"  all prompts: identical tokens {same / total:.1%}")
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
