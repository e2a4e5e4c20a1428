"""One pipeline from a validated request to a written file, used by `/continue` and by jobs
(`pipeline`), and its streamed form for `/continue/stream` (`stream`)."""

from .pipeline import (
    Rendered,
    RenderedTake,
    RenderPlan,
    check_inputs,
    check_model,
    check_plan,
    input_limits,
    prompt_span,
    render,
)
from .stream import StreamedRender, prepare_stream

__all__ = [
    "RenderPlan",
    "Rendered",
    "RenderedTake",
    "StreamedRender",
    "check_inputs",
    "check_model",
    "check_plan",
    "input_limits",
    "prepare_stream",
    "prompt_span",
    "render",
]
