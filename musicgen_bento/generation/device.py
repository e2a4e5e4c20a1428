"""Where and in what precision the model runs: the device for `--gpu-id`, the dtype for `MUSICGEN_DTYPE`."""

from __future__ import annotations

import torch

from ..errors import ModelStoreError


def pick_device(gpu_id: int) -> str:
    """`cuda:<gpu_id>` when CUDA is available, `cpu` otherwise."""
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if not 0 <= gpu_id < count:
        raise ModelStoreError(f"--gpu-id {gpu_id} names no CUDA device; {count} visible (ids 0..{count - 1})")
    return f"cuda:{gpu_id}"


def pick_dtype(device: str, requested: str) -> torch.dtype:
    """float16 on CUDA and float32 on CPU for `auto`; otherwise what was asked."""
    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[requested]
