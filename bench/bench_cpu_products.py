"""Milliseconds for a decoding step's matrix products on this CPU, by how the weights are held: the
decoder layers' linear weights of a real shape (random values) multiplied at a step's row counts in
float32 (`F.linear`: MKL), dense bfloat16, bfloat16 packed for oneDNN, float32 packed for oneDNN, and
int8 with PyTorch's weight-only kernel (`MUSICGEN_QUANTIZE=int8`'s products). In-process, for
explaining which precision pays where; the service's figures are `bench_service_throughput.py`'s.

Each form multiplies every layer's q|k|v, output projection and feed-forward weights once per
round (text cross-attention left out: a step reads it too, but its shapes are the same); best of
`--rounds`. oneDNN's packed bfloat16 is left out on CPUs where oneDNN has no bfloat16 kernels
(without AVX-512 or AVX-NE-CONVERT).

    .venv/bin/python bench/bench_cpu_products.py [--shape musicgen-small] [--rows 2 16 32] [--rounds 4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from _decoding import hardware, on_fresh_thread


def layer_weights(shape: str) -> list[Any]:
    import torch

    from musicgen_bento.models.tiny import REAL_DECODER_SHAPES

    dims = REAL_DECODER_SHAPES[shape]
    hidden, ffn, layers = dims["hidden_size"], dims["ffn_dim"], dims["num_hidden_layers"]
    sizes = [(3 * hidden, hidden), (hidden, hidden), (ffn, hidden), (hidden, ffn)]
    noise = torch.Generator().manual_seed(0)
    return [torch.randn(size, generator=noise) / size[1] ** 0.5 for _ in range(layers) for size in sizes]


def forms(weights: list[Any]) -> dict[str, tuple[Callable[[], list[Callable[[Any], Any]]], Any]]:
    """Each form's products (built on demand, one per weight, as the engine holds them) and the
    precision of the activations it takes."""
    import torch

    from musicgen_bento.engine.weights import DenseLinear, Int8Linear, PackedLinear

    def dense(dtype: Any) -> list[Callable[[Any], Any]]:
        return [DenseLinear(weight.to(dtype)) for weight in weights]

    def packed(dtype: Any) -> list[Callable[[Any], Any]]:
        return [PackedLinear(weight.to(dtype), None, 1) for weight in weights]

    def int8() -> list[Callable[[Any], Any]]:
        return [Int8Linear(weight, None) for weight in weights]  # takes float32, as the engine's do

    built: dict[str, tuple[Callable[[], list[Callable[[Any], Any]]], Any]] = {
        "float32 (F.linear)": (partial(dense, torch.float32), torch.float32),
        "bfloat16 dense": (partial(dense, torch.bfloat16), torch.bfloat16),
        "bfloat16 packed (oneDNN)": (partial(packed, torch.bfloat16), torch.bfloat16),
        "float32 packed (oneDNN)": (partial(packed, torch.float32), torch.float32),
        "int8 (MUSICGEN_QUANTIZE)": (int8, torch.float32),
    }
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # it needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT
        del built["bfloat16 packed (oneDNN)"]
    return built


def best_ms(products: list[Callable[[Any], Any]], weights: list[Any], dtype: Any, rows: int, rounds: int) -> float:
    import torch

    inputs = {weight.shape[1]: torch.randn(rows, weight.shape[1]).to(dtype) for weight in weights}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up
            started = time.perf_counter()
            for product, weight in zip(products, weights, strict=True):
                product(inputs[weight.shape[1]])
            best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="musicgen-small", choices=["musicgen-small", "musicgen-medium"])
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 16, 32])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from musicgen_bento.engine.threads import PROCESS_THREADS

    weights = on_fresh_thread(partial(layer_weights, args.shape), PROCESS_THREADS)
    megabytes = sum(weight.numel() for weight in weights) * 4 / 1e6
    print(
        f"{args.shape}: {len(weights)} layer weights ({megabytes:.0f} MB in float32) on {hardware('cpu')}; "
        f"best of {args.rounds}, ms per pass",
        flush=True,
    )
    for name, (build, dtype) in forms(weights).items():
        products = on_fresh_thread(build, PROCESS_THREADS)
        timings = [
            on_fresh_thread(partial(best_ms, products, weights, dtype, rows, args.rounds), PROCESS_THREADS)
            for rows in args.rows
        ]
        cells = ", ".join(f"{rows} rows {ms:7.1f}" for rows, ms in zip(args.rows, timings, strict=True))
        print(f"  {name:26}: {cells}", flush=True)


if __name__ == "__main__":
    main()
