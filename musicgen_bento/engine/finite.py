"""The non-finite guard: which requests' logits turned to NaN or infinity in a step (float16
attention overflowing, a broken checkpoint), so that those requests fail alone, at once, and the
rest of the batch goes on with the values it would have had alone.

The flags are computed with the step's forward, so on a GPU they are part of its captured graph
(no launch of their own). On a CPU they are read at once. On a GPU reading them would make the host
wait for the device at every step, which the engine otherwise never does: they are copied to pinned
host memory as the step is queued and read at the next step, so a request is failed one step later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch

from ..errors import MusicGenError

T = TypeVar("T")


class NonFiniteOutput(MusicGenError):
    """The model's output turned to NaN or infinity: its precision overflows on this model and device."""

    status_code = 500


def non_finite(dtype: torch.dtype, where: str) -> NonFiniteOutput:
    name = str(dtype).removeprefix("torch.")
    return NonFiniteOutput(
        f"the model's output turned to NaN or infinity {where} in {name}: this model overflows in {name} here; "
        "serve it with MUSICGEN_DTYPE=float32 (or bfloat16 on a GPU that computes in it)"
    )


def finite_slots(logits: torch.Tensor) -> torch.Tensor:
    """Per slot, whether both of its rows' logits (a slot's two rows side by side) are all finite:
    (rows / 2,) bool."""
    return torch.isfinite(logits.reshape(logits.shape[0] // 2, -1)).all(dim=1)


class FiniteCheck(Generic[T]):
    """Flags the requests of a step whose logits are not finite (see the module)."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self._deferred = device.type == "cuda"
        self._pending: tuple[torch.Tensor, tuple[T, ...], Any] | None = None
        self._host = torch.empty(slots, dtype=torch.bool, pin_memory=self._deferred) if self._deferred else None

    def check(self, finite: torch.Tensor, requests: Sequence[T]) -> list[T]:
        """The requests (by slot, as `requests`) whose logits in this step were not finite, from the
        step's `finite_slots`; on a GPU none yet: `collect` finds them before the next step."""
        flags = finite[: len(requests)]
        if not self._deferred:
            return [request for request, finite in zip(requests, flags.tolist(), strict=True) if not finite]
        assert self._host is not None
        self._host[: len(requests)].copy_(flags, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self._pending = (self._host[: len(requests)], tuple(requests), copied)
        return []

    def collect(self) -> list[T]:
        """The requests flagged by the step before (a GPU's), once its copy has arrived."""
        if self._pending is None:
            return []
        host, requests, copied = self._pending
        copied.synchronize()  # the copy queued behind the previous step: done by now, as a rule
        self._pending = None
        return [request for request, finite in zip(requests, host.tolist(), strict=True) if not finite]
