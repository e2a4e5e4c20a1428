"""The step-batched decoding engine: concurrent requests share the device step by step."""

from .core import DecodeEngine
from .kv_cache import choose_cache_precision
from .requests import CachePrecision, DecodeRequest, EngineStats, FramesFn, GraphsStatus, Sampling, StepReport

__all__ = [
    "CachePrecision",
    "DecodeEngine",
    "DecodeRequest",
    "EngineStats",
    "FramesFn",
    "GraphsStatus",
    "Sampling",
    "StepReport",
    "choose_cache_precision",
]
