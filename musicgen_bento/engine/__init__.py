"""The step-batched decoding engine: concurrent requests share the device step by step.

Its public names are here; the layers above use the engine through them only.
"""

from .core import DecodeEngine
from .cuda_graphs import GraphsStatus
from .delay_pattern import delay_steps
from .finite import NonFiniteOutput
from .invariance import BatchInvariance
from .memory_plan import (
    MIB,
    PLANNED_TEXT_TOKENS,
    DecoderShape,
    MemoryPlan,
    cache_precision_for,
    plan_for,
    weights_layout_for,
)
from .options import EngineOptions
from .precision import Precision
from .requests import DecodeRequest, FramesFn, Sampling, StepFn
from .stats import EngineStats, StepReport
from .weights import WeightLayout

__all__ = [
    "MIB",
    "PLANNED_TEXT_TOKENS",
    "BatchInvariance",
    "DecodeEngine",
    "DecodeRequest",
    "DecoderShape",
    "EngineOptions",
    "EngineStats",
    "FramesFn",
    "GraphsStatus",
    "MemoryPlan",
    "NonFiniteOutput",
    "Precision",
    "Sampling",
    "StepFn",
    "StepReport",
    "WeightLayout",
    "cache_precision_for",
    "delay_steps",
    "plan_for",
    "weights_layout_for",
]
