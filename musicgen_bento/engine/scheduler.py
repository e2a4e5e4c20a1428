"""Who decodes: requests wait in arrival order and take free slots between two steps; a request
that leaves hands its slot to the last one, so the running requests always fill slots 0..n-1.

Between two steps the scheduler decides everything at once and says so in a frozen `StepPlan`
(as vLLM's scheduler does in its `SchedulerOutput`): who leaves (and which slot moves into the
place each leaves), who is admitted, who decodes in the next step and how far that step attends.
The engine's runner carries the plan out on its tensors. Plain Python, no tensors: it is tested
without a model.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Scheduled(Protocol):
    """What the scheduler reads of a request."""

    cross_positions: int  # the cross-attention positions it attends over (text models; 0 otherwise)

    @property
    def leaving(self) -> bool:
        """Whether it leaves before the next step: done, failed, or canceled (its caller gave up or
        the engine is closing)."""

    @property
    def positions(self) -> int:
        """The cache positions the next step attends over for it: where the step writes its next
        token, and every one before."""


T = TypeVar("T", bound=Scheduled)


@dataclass(frozen=True)
class Move:
    """The running request in slot `source` now lives in slot `target`."""

    source: int
    target: int


@dataclass(frozen=True)
class Leave(Generic[T]):
    """A request leaving: from `slot` (None: it never had one), the last slot's request (`moving`)
    moving into its place."""

    request: T
    slot: int | None
    move: Move | None = None
    moving: T | None = None

    @property
    def freed(self) -> int | None:
        """The slot that is free once it has left (the moved request's old one)."""
        return self.move.source if self.move is not None else self.slot


@dataclass(frozen=True)
class StepPlan(Generic[T]):
    """What happens between two steps and in the next one, in this order: `leaving` requests go
    (each move applied as it is listed), `admitted` ones are prefilled into their slots, then one
    step decodes every request in `decoding` (by slot; the admitted ones last), attending over
    `positions` cache positions and `cross_positions` cross-attention positions at most."""

    leaving: tuple[Leave[T], ...]
    admitted: tuple[tuple[T, int], ...]  # (request, its slot)
    decoding: tuple[T, ...]
    positions: int
    cross_positions: int

    @property
    def moved(self) -> tuple[Move, ...]:
        return tuple(leave.move for leave in self.leaving if leave.move is not None)


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

    def schedule(self, admit: bool = True) -> StepPlan[T]:
        """The plan for the next step: the running requests that are leaving leave, then waiting
        ones take the free slots in order (one canceled while it waited leaves without a slot).
        With `admit` False nobody is admitted (the engine is closing)."""
        leaving = [self._remove(request) for request in [r for r in self.running if r.leaving]]
        admitted: list[tuple[T, int]] = []
        while admit and self._waiting and len(self.running) < self.slots:
            request = heapq.heappop(self._waiting)[2]
            if request.leaving:
                leaving.append(Leave(request, None))
                continue
            self.running.append(request)
            admitted.append((request, len(self.running) - 1))
        return StepPlan(
            leaving=tuple(leaving),
            admitted=tuple(admitted),
            decoding=tuple(self.running),
            positions=max((request.positions for request in self.running), default=0),
            cross_positions=max((request.cross_positions for request in self.running), default=0),
        )

    def slot_of(self, request: T) -> int:
        return next(index for index, running in enumerate(self.running) if running is request)

    def _remove(self, request: T) -> Leave[T]:
        """Takes a running request out; the last one moves into its slot."""
        index = self.slot_of(request)
        last = len(self.running) - 1
        self.running[index] = self.running[last]
        self.running.pop()
        if index == last:
            return Leave(request, index)
        return Leave(request, index, Move(last, index), self.running[index])

    def drain(self) -> list[T]:
        """Every waiting request, taken out (the engine is closing)."""
        waiting = [entry[2] for entry in sorted(self._waiting, key=lambda entry: entry[:2])]
        self._waiting.clear()
        return waiting
