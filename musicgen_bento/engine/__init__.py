"""The step-batched decoding engine: concurrent requests share the device step by step."""

from .core import DecodeEngine
from .requests import DecodeRequest, EngineStats, FramesFn, GraphsStatus, Sampling, StepReport

__all__ = ["DecodeEngine", "DecodeRequest", "EngineStats", "FramesFn", "GraphsStatus", "Sampling", "StepReport"]
