"""The step-batched decoding engine: concurrent requests share the device step by step."""

from .core import DecodeEngine
from .kv_cache import choose_cache_precision
from .requests import (
    CachePrecision,
    DecodeRequest,
    EngineStats,
    FramesFn,
    GraphsStatus,
    Sampling,
    StepReport,
    WeightLayout,
)
from .weights import choose_layout

__all__ = [
    "CachePrecision",
    "DecodeEngine",
    "DecodeRequest",
    "EngineStats",
    "FramesFn",
    "GraphsStatus",
    "Sampling",
    "StepReport",
    "WeightLayout",
    "choose_cache_precision",
    "choose_layout",
]
