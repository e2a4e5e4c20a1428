"""One pipeline from a validated request to a written file, used by `/continue` and by jobs
(`pipeline`), and its streamed form for `/continue/stream` (`stream`)."""

from .pipeline import (
    Rendered,
    RenderedTake,
    RenderPlan,
    check_inputs,
    check_model,
    check_plan,
    duration_limits,
    input_limits,
    prompt_span,
    render,
    result_of,
)
from .stream import STREAM_FORMATS, STREAM_TAKES, STREAMABLE_NORMALIZATION, StreamedRender, prepare_stream

__all__ = [
    "STREAMABLE_NORMALIZATION",
    "STREAM_FORMATS",
    "STREAM_TAKES",
    "RenderPlan",
    "Rendered",
    "RenderedTake",
    "StreamedRender",
    "check_inputs",
    "check_model",
    "check_plan",
    "duration_limits",
    "input_limits",
    "prepare_stream",
    "prompt_span",
    "render",
    "result_of",
]
