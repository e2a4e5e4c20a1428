"""Who decodes: requests wait in arrival order and take free slots between two steps; a request
that leaves hands its slot to the last one, so the running requests always fill slots 0..n-1.

Plain Python, no tensors: the engine applies each `Move` to its tensors.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Move:
    """The running request in slot `source` now lives in slot `target`."""

    source: int
    target: int


class Scheduler(Generic[T]):
    """Waiting requests (a priority queue by `order`, ties by submission) and the running ones by slot.

    Not thread-safe: the engine calls it under its own lock.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._waiting: list[tuple[tuple[int, ...], int, T]] = []
        self._submitted = itertools.count()
        self.running: list[T] = []

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self.running

    def submit(self, request: T, order: tuple[int, ...]) -> None:
        """Queues `request`; smaller `order` is admitted first (arrival tickets, then window index)."""
        heapq.heappush(self._waiting, (order, next(self._submitted), request))

    def admit(self) -> list[T]:
        """Takes waiting requests, in order, for the slots that are free. The caller places each
        with `place` (or drops it) before the next step."""
        free = self.slots - len(self.running)
        return [heapq.heappop(self._waiting)[2] for _ in range(min(free, len(self._waiting)))]

    def place(self, request: T) -> int:
        """Gives an admitted request the next slot; returns its index."""
        if len(self.running) >= self.slots:
            raise RuntimeError("no free slot")
        self.running.append(request)
        return len(self.running) - 1

    def slot_of(self, request: T) -> int:
        return next(index for index, running in enumerate(self.running) if running is request)

    def remove(self, request: T) -> Move | None:
        """Takes a running request out; the last one moves into its slot (the returned `Move`)."""
        index = self.slot_of(request)
        last = len(self.running) - 1
        self.running[index] = self.running[last]
        self.running.pop()
        return Move(last, index) if index != last else None

    def drain(self) -> list[T]:
        """Every waiting request, taken out (the engine is closing)."""
        waiting = [entry[2] for entry in sorted(self._waiting)]
        self._waiting.clear()
        return waiting
