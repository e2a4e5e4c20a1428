"""Where and in what precision the model runs: the device for `--gpu-id`, the dtype for `MUSICGEN_DTYPE`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from ..engine import DecoderShape, Precision
from ..errors import ModelStoreError

DtypeName = Literal["float32", "float16", "bfloat16"]
_DTYPES: dict[DtypeName, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# `auto` takes bfloat16 on a CPU only where it measured clearly faster: a near tie is not worth
# the rounding.
_BFLOAT16_WINS_BELOW = 0.8
# Weights the measurement streams through: more than a CPU's caches hold, as a real step's do.
_MEASURED_WEIGHT_BYTES = 128 * 1024 * 1024


def pick_device(gpu_id: int) -> str:
    """`cuda:<gpu_id>` when CUDA is available, `cpu` otherwise."""
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        raise ModelStoreError(f"--gpu-id {gpu_id} names no CUDA device; {count} visible (ids 0..{count - 1})")
    return f"cuda:{gpu_id}"


def pick_dtype(device: str, requested: str) -> torch.dtype:
    """The weights' precision without measuring: float16 on CUDA and float32 on CPU for `auto`.
    For benchmarks that pin the old default; the service uses `pick_precision`."""
    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return _DTYPES[requested]  # type: ignore[index]


def pick_precision(
    device: str, requested: str, shape: DecoderShape, capability: Callable[[str], tuple[int, int]] | None = None
) -> Precision:
    """The weights' precision for `MUSICGEN_DTYPE=requested` on `device`.

    `auto` on CUDA is bfloat16 where the GPU computes in it (compute capability 8.0 and later:
    Ampere, Ada, Hopper, Blackwell), float16 on older GPUs. bfloat16 has float32's range, where
    float16 overflows: MusicGen's attention in float16 has produced NaN and inf (transformers
    issues #30020 and #36546, the melody model among them), which the engine's non-finite guard
    would then turn into failed requests. float16 keeps three more bits of mantissa, which is why it
    stays the choice where bfloat16 is not native. `capability` reads a CUDA device's compute
    capability (the default asks torch).

    On a CPU it is bfloat16 where the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX) and
    a decoding step's matrix products at this decoder's shape measure clearly faster in it than in
    float32; float32 otherwise (older CPUs convert bfloat16 in software, and tiny decoders cost
    their per-operation overhead, not their arithmetic).
    """
    if requested != "auto":
        return Precision(_DTYPES[requested], f"MUSICGEN_DTYPE={requested}")  # type: ignore[index]
    if device.startswith("cuda"):
        major, minor = (capability or _cuda_capability)(device)
        if major >= 8:
            return Precision(
                torch.bfloat16, f"auto: bfloat16 on a GPU of compute capability {major}.{minor} (float32's range)"
            )
        return Precision(
            torch.float16, f"auto: float16 on a GPU of compute capability {major}.{minor}, which has no native bfloat16"
        )
    features = [name for name, present in _cpu_bfloat16_features().items() if present]
    if not features:
        return Precision(torch.float32, "auto: this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX)")
    ratio = bfloat16_time_ratio(shape)
    measured = f"a decoding step's matrix products took {ratio:.2f}x float32's time in bfloat16"
    if ratio < _BFLOAT16_WINS_BELOW:
        return Precision(torch.bfloat16, f"auto: CPU with {' and '.join(features)}; {measured}")
    return Precision(torch.float32, f"auto: CPU with {' and '.join(features)}, but {measured}")


def _cuda_capability(device: str) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return int(major), int(minor)


def _cpu_bfloat16_features() -> dict[str, bool]:
    return {"AMX": torch.cpu._is_amx_tile_supported(), "AVX-512 BF16": torch.cpu._is_avx512_bf16_supported()}


def bfloat16_time_ratio(shape: DecoderShape, rounds: int = 5) -> float:
    """bfloat16's time over float32's for the matrix products of a decoding step at batch 1
    (two rows: guidance) through layers of `shape`, as many as fit in `_MEASURED_WEIGHT_BYTES`
    of float32 weights. Best of `rounds` each, so a busy moment does not decide."""
    hidden, ffn = shape.hidden, shape.ffn
    layer_shapes = [
        (3 * hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (ffn, hidden),
        (hidden, ffn),
    ]
    layer_bytes = 4 * sum(rows * cols for rows, cols in layer_shapes)
    layers = max(1, min(shape.layers, _MEASURED_WEIGHT_BYTES // layer_bytes))
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        weights = [torch.randn(size, dtype=dtype) for _ in range(layers) for size in layer_shapes]
        inputs = {width: torch.randn(2, width, dtype=dtype) for width in (hidden, ffn)}
        best = float("inf")
        with torch.inference_mode():
            for _ in range(rounds + 1):  # the first round warms up
                started = time.perf_counter()
                for weight in weights:
                    F.linear(inputs[weight.shape[1]], weight)
                best = min(best, time.perf_counter() - started)
        seconds[dtype] = best
    return seconds[torch.bfloat16] / seconds[torch.float32]
