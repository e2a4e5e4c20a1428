"""The engine's scheduler, alone: no model, no tensors. It admits waiting requests into free slots
by their order, keeps the running ones packed in slots 0..n-1, and says which request moved when
one leaves."""

from __future__ import annotations

import pytest

from musicgen_bento.engine.scheduler import Move, Scheduler


def test_admits_no_more_than_the_free_slots_in_order() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=2)
    for name, order in (("late", (3,)), ("first", (1,)), ("second", (2,))):
        scheduler.submit(name, order)
    admitted = scheduler.admit()
    assert admitted == ["first", "second"]
    assert [scheduler.place(name) for name in admitted] == [0, 1]
    assert scheduler.admit() == []  # no free slot
    assert scheduler.waiting == 1


def test_equal_orders_keep_their_submission_order() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=3)
    for name in ("a", "b", "c"):
        scheduler.submit(name, (7,))
    assert scheduler.admit() == ["a", "b", "c"]


def test_a_window_ranks_by_its_request_then_its_index() -> None:
    # A request's later window (arrival 1, window 1) goes before a younger request (arrival 2).
    scheduler: Scheduler[str] = Scheduler(slots=1)
    scheduler.submit("younger", (2, 0))
    scheduler.submit("older, window 2", (1, 1))
    assert scheduler.admit() == ["older, window 2"]


def test_a_leaving_request_hands_its_slot_to_the_last_one() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=3)
    for name in ("a", "b", "c"):
        scheduler.submit(name, (0,))
        scheduler.place(scheduler.admit()[0])
    assert scheduler.remove("a") == Move(source=2, target=0)
    assert scheduler.running == ["c", "b"]
    assert scheduler.remove("b") is None  # the last slot: nothing moves
    assert scheduler.running == ["c"]
    assert scheduler.slot_of("c") == 0


def test_a_freed_slot_admits_the_next_waiting_request() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=1)
    scheduler.submit("a", (0,))
    scheduler.submit("b", (1,))
    scheduler.place(scheduler.admit()[0])
    assert scheduler.admit() == []
    scheduler.remove("a")
    assert scheduler.admit() == ["b"]


def test_drain_returns_every_waiting_request_in_order() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=1)
    for name, order in (("c", (3,)), ("a", (1,)), ("b", (2,))):
        scheduler.submit(name, order)
    assert scheduler.drain() == ["a", "b", "c"]
    assert scheduler.idle


def test_placing_beyond_the_slots_is_refused() -> None:
    scheduler: Scheduler[str] = Scheduler(slots=1)
    scheduler.place("a")
    with pytest.raises(RuntimeError):
        scheduler.place("b")


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Scheduler(slots=0)
