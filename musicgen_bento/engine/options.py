"""How an engine holds and runs its model, beyond its slot count: `EngineOptions`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cuda_graphs import CudaGraphs, Forward
from .precision import Precision
from .requests import DecodeRequest
from .weights import WeightLayout

# Builds the CUDA graphs from the step's forward, the device and the most rows a step computes:
# the seam where a test injects a failing or a wrong capture on a CPU.
GraphsFactory = Callable[[Forward, torch.device, int], CudaGraphs]
# Sees each step's logits, (2 x requests, codebooks, vocab), with the requests by slot, before the
# non-finite guard does: a test's way to make one request's logits NaN.
LogitsHook = Callable[[torch.Tensor, tuple[DecodeRequest, ...]], None]


@dataclass(frozen=True)
class EngineOptions:
    """The engine's choices, each with a default that serves; the memory plan sets the last three.

    Attributes:
        use_cuda_graphs: capture each decoding step as a CUDA graph (CUDA devices only).
        pad_rows: compute each step for a power-of-two number of rows, the extra ones free slots,
            as captured graphs do (None: when graphs are used). On a CPU this checks that free
            rows change no request's tokens.
        graphs: builds the CUDA graphs.
        pack_weights: let the decoder pack its weights for oneDNN where that is checked to give the
            same values (CPUs in bfloat16; see `weights`); False keeps them dense (comparisons).
        quantize: quantize the decoder's linear weights to int8 (CPUs; `weights`), where PyTorch's
            int8 kernel checks out here.
        cache_positions: (self-attention, cross-attention) positions to allocate the cache for
            at once, as a memory plan sized it; None: it grows as requests need.
        attention: the attention caches' precision, as the memory plan reserved them; None: the
            engine chooses it (`kv_cache.choose_cache_precision`).
        weights: how to hold the decoder's linear weights, as the memory plan counted them (chosen
            with `weights.choose_layout`); None: the decoder chooses as `pack_weights` and
            `quantize` say.
        logits_hook: sees each step's logits before the non-finite guard (tests).
    """

    use_cuda_graphs: bool = True
    pad_rows: bool | None = None
    graphs: GraphsFactory = CudaGraphs
    pack_weights: bool = True
    quantize: bool = False
    cache_positions: tuple[int, int] | None = None
    attention: Precision | None = None
    weights: WeightLayout | None = None
    logits_hook: LogitsHook | None = None


DEFAULT_OPTIONS = EngineOptions()
