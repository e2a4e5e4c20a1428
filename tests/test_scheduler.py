"""The engine's scheduler, alone: no model, no tensors. Between two steps it plans who leaves,
who is admitted into the free slots by order, who decodes and how far the step attends; the
running requests stay packed in slots 0..n-1, and a leaving one hands its slot to the last."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from musicgen_bento.engine.scheduler import Leave, Move, Scheduler


@dataclass(eq=False)
class Request:
    """A stand-in for the engine's request state: a name, and what the scheduler reads."""

    name: str
    positions: int = 10
    cross_positions: int = 0
    leaving: bool = False


def _submitted(scheduler: Scheduler[Request], *entries: tuple[str, tuple[int, ...]]) -> dict[str, Request]:
    requests = {name: Request(name) for name, _ in entries}
    for name, order in entries:
        scheduler.submit(requests[name], order)
    return requests


def _names(requests: tuple[Request, ...] | list[Request]) -> list[str]:
    return [request.name for request in requests]


def test_admits_no_more_than_the_free_slots_in_order() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=2)
    _submitted(scheduler, ("late", (3,)), ("first", (1,)), ("second", (2,)))
    plan = scheduler.schedule()
    assert [(request.name, slot) for request, slot in plan.admitted] == [("first", 0), ("second", 1)]
    assert _names(plan.decoding) == ["first", "second"]
    assert scheduler.schedule().admitted == ()  # no free slot
    assert scheduler.waiting == 1


def test_equal_orders_keep_their_submission_order() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=3)
    _submitted(scheduler, ("a", (7,)), ("b", (7,)), ("c", (7,)))
    assert [request.name for request, _ in scheduler.schedule().admitted] == ["a", "b", "c"]


def test_a_window_ranks_by_its_request_then_its_index() -> None:
    # A request's later window (arrival 1, window 1) goes before a younger request (arrival 2).
    scheduler: Scheduler[Request] = Scheduler(slots=1)
    _submitted(scheduler, ("younger", (2, 0)), ("older, window 2", (1, 1)))
    assert _names(scheduler.schedule().decoding) == ["older, window 2"]


def test_a_leaving_request_hands_its_slot_to_the_last_one() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=3)
    requests = _submitted(scheduler, ("a", (0,)), ("b", (1,)), ("c", (2,)))
    scheduler.schedule()
    requests["a"].leaving = True
    plan = scheduler.schedule()
    assert plan.leaving == (Leave(requests["a"], 0, Move(source=2, target=0), requests["c"]),)
    assert plan.moved == (Move(2, 0),) and plan.leaving[0].freed == 2
    assert _names(plan.decoding) == ["c", "b"] and scheduler.slot_of(requests["c"]) == 0
    requests["b"].leaving = True
    last = scheduler.schedule()
    assert last.leaving == (Leave(requests["b"], 1),)  # the last slot: nothing moves
    assert last.leaving[0].freed == 1 and _names(last.decoding) == ["c"]


def test_moves_are_planned_in_the_order_they_are_made() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=4)
    requests = _submitted(scheduler, ("a", (0,)), ("b", (1,)), ("c", (2,)), ("d", (3,)))
    scheduler.schedule()
    requests["a"].leaving = requests["c"].leaving = True
    plan = scheduler.schedule()
    # a leaves slot 0 and d moves in from 3; then c leaves slot 2, now the last: nothing moves.
    assert [(leave.request.name, leave.slot, leave.move) for leave in plan.leaving] == [
        ("a", 0, Move(3, 0)),
        ("c", 2, None),
    ]
    assert [leave.freed for leave in plan.leaving] == [3, 2]
    assert _names(plan.decoding) == ["d", "b"]


def test_a_freed_slot_admits_the_next_waiting_request_in_the_same_plan() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=1)
    requests = _submitted(scheduler, ("a", (0,)), ("b", (1,)))
    scheduler.schedule()
    requests["a"].leaving = True
    plan = scheduler.schedule()
    assert _names([leave.request for leave in plan.leaving]) == ["a"]
    assert [(request.name, slot) for request, slot in plan.admitted] == [("b", 0)]


def test_a_request_canceled_while_waiting_leaves_without_a_slot() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=1)
    requests = _submitted(scheduler, ("gone", (0,)), ("next", (1,)))
    requests["gone"].leaving = True
    plan = scheduler.schedule()
    assert plan.leaving == (Leave(requests["gone"], None),) and plan.leaving[0].freed is None
    assert _names(plan.decoding) == ["next"]


def test_the_plan_attends_as_far_as_its_farthest_request() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=3)
    requests = _submitted(scheduler, ("a", (0,)), ("b", (1,)))
    requests["a"].positions, requests["a"].cross_positions = 40, 7
    requests["b"].positions, requests["b"].cross_positions = 90, 3
    plan = scheduler.schedule()
    assert (plan.positions, plan.cross_positions) == (90, 7)
    idle: Scheduler[Request] = Scheduler(slots=1)
    assert (idle.schedule().positions, idle.schedule().decoding) == (0, ())


def test_a_closing_plan_admits_nobody() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=2)
    _submitted(scheduler, ("a", (0,)))
    assert scheduler.schedule(admit=False).admitted == ()
    assert scheduler.waiting == 1


def test_drain_returns_every_waiting_request_in_order() -> None:
    scheduler: Scheduler[Request] = Scheduler(slots=1)
    _submitted(scheduler, ("c", (3,)), ("a", (1,)), ("b", (2,)))
    assert _names(scheduler.drain()) == ["a", "b", "c"]
    assert scheduler.idle


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Scheduler(slots=0)
