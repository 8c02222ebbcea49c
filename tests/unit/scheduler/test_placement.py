"""Placement (scheduler/placement.py) as a pure state machine: events in, instructions out.

No sockets, no asyncio, no clocks: every test drives ``Placement`` directly.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest

from faas.scheduler.placement import BACKFILL, Fail, Lost, Placement, Request, Start

GiB = 2**30


@dataclass(frozen=True)
class Info:
    """What a worker reports of an object: only its size matters here."""

    nbytes: int


def req(
    rid: str, reservation: int, *, run: str = "run1", label: str | None = None,
    inputs: dict[str, int] | None = None, producers: frozenset[str] = frozenset(),
    cached_output: str = "",
) -> Request:
    return Request(
        request_id=rid, run_id=run, node=rid, label=label or f"model {rid!r}",
        reservation=reservation, inputs=inputs or {}, producers=producers,
        cached_output=cached_output,
    )


def cluster(*workers: tuple[str, str, int]) -> Placement:
    """A placement with idle workers (id, host id, memory) that report all of it free."""
    p = Placement()
    for worker_id, host_id, memory in workers:
        assert p.worker_joined(worker_id, host_id, memory, memory) == []
    return p


def starts(out: list) -> list[Start]:  # type: ignore[type-arg]
    return [i for i in out if isinstance(i, Start)]


def only_start(out: list) -> Start:  # type: ignore[type-arg]
    assert len(out) == 1 and isinstance(out[0], Start), out
    return out[0]


# --------------------------------------------------------------------------- choosing a worker


def test_request_goes_to_the_worker_where_it_fits() -> None:
    p = cluster(("small", "h1", 4 * GiB), ("big", "h2", 16 * GiB))
    s = only_start(p.submit(req("r", 8 * GiB)))
    assert s == Start("r", "big", 8 * GiB)
    assert p.decisions == 1
    assert "r" in p.placed and "r" not in p.waiting


def test_work_with_no_inputs_spreads_over_idle_workers() -> None:
    # The big worker has more free memory even with one function on it, but work that
    # has nothing to stay near goes to the worker running fewer functions.
    p = cluster(("big", "h1", 64 * GiB), ("small", "h2", 16 * GiB))
    first = only_start(p.submit(req("a", 1 * GiB)))
    second = only_start(p.submit(req("b", 1 * GiB)))
    assert {first.worker_id, second.worker_id} == {"big", "small"}


def test_prefers_the_host_holding_most_input_bytes() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 100 * GiB), ("w3", "h3", 100 * GiB))
    # 'small' recorded via stored(), 'large' as the output of a finished request.
    p.stored("w1", "small", Info(1 * GiB))
    s = only_start(p.submit(req("prod", 1 * GiB, producers=frozenset({"w2"}))))
    assert s.worker_id == "w2"
    p.finished("prod", output=("large", Info(5 * GiB)), new=False)
    assert p.holders("large").keys() == {"w2"}
    # w3 is the emptiest, w1 holds 1 GiB of the inputs, w2 holds 5 GiB: w2 wins.
    p.heartbeat("w3", 200 * GiB, 200 * GiB, 0)
    r = req("r", 2 * GiB, inputs={"small": 1 * GiB, "large": 5 * GiB})
    s = only_start(p.submit(r))
    assert s.worker_id == "w2"
    # It pulls only 'small' (from w1's host).
    assert s.reserved == 2 * GiB + 1 * GiB


def test_input_on_another_worker_of_the_same_host_counts_as_local() -> None:
    p = cluster(("a1", "hA", 100 * GiB), ("a2", "hA", 100 * GiB), ("b", "hB", 100 * GiB))
    p.stored("a1", "obj", Info(10 * GiB))
    # Fill a1 so the request cannot go there; a2 shares the host, so nothing is pulled.
    only_start(p.submit(req("filler", 95 * GiB, producers=frozenset({"a1"}))))
    assert p.placed["filler"][1] == "a1"
    s = only_start(p.submit(req("r", 10 * GiB, inputs={"obj": 10 * GiB})))
    assert s.worker_id == "a2"  # not 'b', though both have room
    assert s.reserved == 10 * GiB  # its input is already in hA's shared memory


def test_tie_on_locality_goes_to_the_producer_then_most_free() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 50 * GiB), ("w3", "h3", 80 * GiB))
    # No input held anywhere: a tie on locality. The producer's worker wins, though it
    # has the least free memory.
    s = only_start(p.submit(req("r1", 1 * GiB, producers=frozenset({"w2"}))))
    assert s.worker_id == "w2"
    # No producer: the most free memory.
    s = only_start(p.submit(req("r2", 1 * GiB)))
    assert s.worker_id == "w1"
    # Locality beats the producer.
    p.stored("w3", "in", Info(1 * GiB))
    s = only_start(p.submit(req("r3", 1 * GiB, inputs={"in": 1 * GiB}, producers=frozenset({"w2"}))))
    assert s.worker_id == "w3"
    assert s.reserved == 1 * GiB


def test_producer_that_cannot_fit_is_skipped() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 10 * GiB))
    s = only_start(p.submit(req("r", 20 * GiB, producers=frozenset({"w2"}))))
    assert s.worker_id == "w1"


def test_cache_hit_wins_and_reserves_nothing() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 100 * GiB))
    p.stored("w1", "in", Info(50 * GiB))
    p.stored("w2", "cached", Info(3 * GiB))
    # Fill w2 completely: a cache hit needs no memory.
    only_start(p.submit(req("filler", 100 * GiB, producers=frozenset({"w2"}))))
    assert p.workers["w2"].reserved == 100 * GiB
    r = req("r", 10 * GiB, inputs={"in": 50 * GiB}, producers=frozenset({"w1"}), cached_output="cached")
    s = only_start(p.submit(r))
    assert s == Start("r", "w2", 0)
    assert p.workers["w2"].reserved == 100 * GiB
    assert p.placed["r"] == (r, "w2", 0, 0)
    p.finished("r")
    assert p.workers["w2"].reserved == 100 * GiB


def test_cached_output_held_nowhere_runs_normally() -> None:
    p = cluster(("w1", "h1", 100 * GiB))
    s = only_start(p.submit(req("r", 10 * GiB, cached_output="not-there")))
    assert s == Start("r", "w1", 10 * GiB)


# --------------------------------------------------------------------------- waiting, backfill


def test_request_that_fits_nowhere_now_waits_and_starts_when_another_finishes() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 8 * GiB)))
    assert p.submit(req("b", 5 * GiB)) == []
    assert list(p.waiting) == ["b"]
    assert p.decisions == 1
    out = p.finished("a")
    assert out == [Start("b", "w", 5 * GiB)]
    assert p.waiting == {} and p.workers["w"].reserved == 5 * GiB
    assert p.decisions == 2


def test_waiting_request_starts_when_a_worker_joins() -> None:
    p = cluster(("w1", "h1", 10 * GiB))
    only_start(p.submit(req("a", 10 * GiB)))
    assert p.submit(req("b", 6 * GiB)) == []
    out = p.worker_joined("w2", "h2", 8 * GiB, 8 * GiB)
    assert out == [Start("b", "w2", 6 * GiB)]


def test_submit_with_no_workers_waits_without_failing() -> None:
    p = Placement()
    assert p.submit(req("r", 1 * GiB)) == []
    assert list(p.waiting) == ["r"]
    assert p.worker_joined("w", "h", 2 * GiB, 2 * GiB) == [Start("r", "w", 1 * GiB)]


def test_smaller_requests_behind_a_waiting_one_may_start_first() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 6 * GiB)))
    assert p.submit(req("big", 8 * GiB)) == []
    s = only_start(p.submit(req("small", 3 * GiB)))  # backfill
    assert s.request_id == "small"
    assert list(p.waiting) == ["big"]
    # The big one keeps its place: it starts once enough is given back.
    assert p.finished("small") == []
    assert p.finished("a") == [Start("big", "w", 8 * GiB)]


def test_waiting_requests_start_in_arrival_order() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 10 * GiB)))
    for rid in ("x", "y", "z"):
        assert p.submit(req(rid, 5 * GiB)) == []
    out = p.finished("a")
    assert [s.request_id for s in starts(out)] == ["x", "y"]
    assert list(p.waiting) == ["z"]


def test_backfill_looks_at_no_more_than_BACKFILL_waiting_requests() -> None:
    p = cluster(("w", "h", 100))
    only_start(p.submit(req("filler", 60)))  # 40 left
    for i in range(BACKFILL):
        assert p.submit(req(f"big{i}", 50)) == []  # each fits the worker, not now
    # The small one is number BACKFILL + 1 in the queue: no pass examines it.
    assert p.submit(req("small", 10)) == []
    assert "small" in p.waiting
    assert p.heartbeat("w", 100, 100, 0) == []  # any other event: still out of reach
    assert "small" in p.waiting
    # One ahead of it goes away: now it is within the window, and fits.
    assert p.withdraw("big0") == [Start("small", "w", 10)]
    assert len(p.waiting) == BACKFILL - 1


def test_backfill_window_counts_the_oldest_request_itself() -> None:
    p = cluster(("w", "h", 100))
    only_start(p.submit(req("filler", 60)))
    for i in range(BACKFILL - 1):
        assert p.submit(req(f"big{i}", 50)) == []
    # Number BACKFILL in the queue: just within the window.
    assert p.submit(req("small", 10)) == [Start("small", "w", 10)]


# --------------------------------------------------------------------------- never fits


def test_request_larger_than_every_worker_fails_at_once() -> None:
    p = cluster(("w-small", "h1", 64 * GiB), ("w-big", "h2", 128 * GiB))
    out = p.submit(req("r", 200 * GiB, label="model 'fact_sale'"))
    assert len(out) == 1 and isinstance(out[0], Fail) and out[0].request_id == "r"
    message = out[0].message
    assert "model 'fact_sale'" in message
    assert "200 GiB" in message
    assert "w-big" in message and "128 GiB" in message
    assert "w-small" not in message
    assert p.waiting == {} and p.placed == {}
    assert p.decisions == 0


def test_request_that_only_a_busy_larger_worker_can_hold_waits() -> None:
    p = cluster(("small", "h1", 64 * GiB), ("big", "h2", 128 * GiB))
    only_start(p.submit(req("a", 100 * GiB)))
    assert p.placed["a"][1] == "big"
    assert p.submit(req("r", 100 * GiB)) == []  # more than 'small' has, but 'big' could
    assert "r" in p.waiting
    assert p.finished("a") == [Start("r", "big", 100 * GiB)]


def test_a_request_that_fits_exactly_is_placed() -> None:
    p = cluster(("w", "h", 10 * GiB))
    assert p.submit(req("r", 10 * GiB)) == [Start("r", "w", 10 * GiB)]


def test_pulled_bytes_count_towards_never_fitting() -> None:
    # 6 GiB of its own plus an 8 GiB input held on h1: on w1 it needs 6, elsewhere 14.
    p = cluster(("w1", "h1", 10 * GiB), ("w2", "h2", 12 * GiB))
    p.stored("w1", "in", Info(8 * GiB))
    only_start(p.submit(req("filler", 10 * GiB, producers=frozenset({"w1"}))))
    assert p.placed["filler"][1] == "w1"
    # It could fit on w1 once that is idle: it waits.
    assert p.submit(req("r", 6 * GiB, inputs={"in": 8 * GiB})) == []
    assert p.finished("filler") == [Start("r", "w1", 6 * GiB)]


# --------------------------------------------------------------------------- reservations


def test_reserved_goes_up_on_start_and_down_on_finish_and_withdraw() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 3 * GiB)))
    only_start(p.submit(req("b", 4 * GiB)))
    w = p.workers["w"]
    assert w.reserved == 7 * GiB and w.running == {"a", "b"}
    assert p.finished("a") == []
    assert w.reserved == 4 * GiB and w.running == {"b"}
    assert p.withdraw("b") == []
    assert w.reserved == 0 and w.running == set() and p.placed == {}
    # Finishing or withdrawing again, or something unknown, changes nothing.
    assert p.finished("a") == [] and p.withdraw("b") == [] and p.finished("nope") == []
    assert w.reserved == 0


def test_withdraw_of_a_waiting_request_removes_it() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 10 * GiB)))
    assert p.submit(req("b", 1 * GiB)) == []
    assert p.withdraw("b") == []
    assert p.waiting == {}
    assert p.finished("a") == []
    assert p.workers["w"].reserved == 0


def test_two_requests_never_overcommit_a_worker() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 6 * GiB)))
    assert p.submit(req("b", 6 * GiB)) == []
    assert p.workers["w"].reserved == 6 * GiB
    assert p.free(p.workers["w"]) == 4 * GiB


def test_pulled_input_bytes_are_reserved_on_the_destination() -> None:
    p = cluster(("w1", "h1", 10 * GiB), ("w2", "h2", 100 * GiB))
    p.stored("w1", "in", Info(3 * GiB))
    only_start(p.submit(req("filler", 10 * GiB, producers=frozenset({"w1"}))))
    s = only_start(p.submit(req("r", 2 * GiB, inputs={"in": 3 * GiB})))
    assert s == Start("r", "w2", 5 * GiB)
    assert p.workers["w2"].reserved == 5 * GiB
    assert p.workers["w1"].reserved == 10 * GiB  # the source reserves nothing for it
    p.finished("r")
    assert p.workers["w2"].reserved == 0


def test_inputs_already_on_the_destination_host_are_not_reserved() -> None:
    p = cluster(("w1", "h1", 100 * GiB))
    p.stored("w1", "in", Info(30 * GiB))
    s = only_start(p.submit(req("r", 2 * GiB, inputs={"in": 30 * GiB})))
    assert s == Start("r", "w1", 2 * GiB)


def test_an_input_held_nowhere_is_reserved_as_pulled() -> None:
    p = cluster(("w1", "h1", 100 * GiB))
    s = only_start(p.submit(req("r", 2 * GiB, inputs={"gone": 3 * GiB})))
    assert s.reserved == 5 * GiB


# --------------------------------------------------------------------------- memory truth


def test_shared_memory_counts_once_per_host() -> None:
    p = cluster(("a1", "hA", 100 * GiB), ("a2", "hA", 100 * GiB), ("b", "hB", 100 * GiB))
    p.heartbeat("a1", 100 * GiB, 70 * GiB, 20 * GiB, cache_bytes=5 * GiB)
    p.heartbeat("a2", 100 * GiB, 70 * GiB, 10 * GiB, cache_bytes=1 * GiB)
    p.heartbeat("b", 100 * GiB, 100 * GiB, 7 * GiB)
    assert p.host_shm() == {"hA": (30 * GiB, 6 * GiB), "hB": (7 * GiB, 0)}
    # In-use shm is taken off once for the whole host, for each of its workers.
    assert p.free(p.workers["a1"]) == min(100 - 30, 70 + 6) * GiB == 70 * GiB
    assert p.free(p.workers["a2"]) == 70 * GiB
    assert p.free(p.workers["b"]) == 93 * GiB
    # A shm snapshot passed in gives the same answer.
    assert p.free(p.workers["a1"], p.host_shm()) == 70 * GiB


def test_free_is_limited_by_what_the_host_reports_available() -> None:
    p = cluster(("w", "h", 100 * GiB))
    p.heartbeat("w", 100 * GiB, 40 * GiB, 0)
    assert p.free(p.workers["w"]) == 40 * GiB
    assert p.submit(req("r", 50 * GiB)) == []  # fits the worker, not what is free now
    assert p.heartbeat("w", 100 * GiB, 60 * GiB, 0) == [Start("r", "w", 50 * GiB)]


def test_available_is_capped_at_memory_total() -> None:
    p = Placement()
    p.worker_joined("w", "h", 10 * GiB, 50 * GiB)
    assert p.workers["w"].memory_available == 10 * GiB
    p.heartbeat("w", 10 * GiB, 70 * GiB, 0)
    assert p.workers["w"].memory_available == 10 * GiB
    assert p.free(p.workers["w"]) == 10 * GiB


def test_unpinned_cache_does_not_block_a_request() -> None:
    p = cluster(("w", "h", 100 * GiB))
    # 60 GiB of the host's memory is cache the worker can give back: only 40 GiB are
    # reported available, but a 90 GiB request still fits.
    p.heartbeat("w", 100 * GiB, 40 * GiB, 0, cache_bytes=60 * GiB)
    assert p.free(p.workers["w"]) == 100 * GiB
    assert p.submit(req("r", 90 * GiB)) == [Start("r", "w", 90 * GiB)]


def test_in_use_shm_does_block_a_request() -> None:
    p = cluster(("w", "h", 100 * GiB))
    p.heartbeat("w", 100 * GiB, 100 * GiB, 60 * GiB)
    assert p.submit(req("r", 50 * GiB)) == []
    assert p.heartbeat("w", 100 * GiB, 100 * GiB, 50 * GiB) == [Start("r", "w", 50 * GiB)]


def test_new_output_is_counted_for_its_host_at_once() -> None:
    p = cluster(("a1", "hA", 100 * GiB), ("a2", "hA", 100 * GiB))
    only_start(p.submit(req("r", 10 * GiB, producers=frozenset({"a1"}))))
    assert p.finished("r", output=("out", Info(30 * GiB)), new=True) == []
    assert p.workers["a1"].shm_bytes == 30 * GiB
    assert p.host_shm()["hA"] == (30 * GiB, 0)
    assert p.free(p.workers["a1"]) == 70 * GiB
    assert p.free(p.workers["a2"]) == 70 * GiB  # same host, same shared memory
    assert p.holders("out").keys() == {"a1"}
    # A copy that is not new (e.g. already counted) does not grow shm.
    only_start(p.submit(req("r2", 1 * GiB, producers=frozenset({"a2"}))))
    p.finished("r2", output=("out2", Info(5 * GiB)), new=False)
    assert p.host_shm()["hA"] == (30 * GiB, 0)


def test_new_output_makes_a_waiting_request_wait_longer() -> None:
    p = cluster(("w", "h", 100 * GiB))
    only_start(p.submit(req("a", 60 * GiB)))
    assert p.submit(req("b", 60 * GiB)) == []
    # 'a' ends but its 50 GiB output now sits in shm: 'b' still does not fit.
    assert p.finished("a", output=("out", Info(50 * GiB)), new=True) == []
    assert "b" in p.waiting
    # The next heartbeat says the object is gone again.
    assert p.heartbeat("w", 100 * GiB, 100 * GiB, 0) == [Start("b", "w", 60 * GiB)]


# --------------------------------------------------------------------------- losing a worker


def test_worker_lost_reports_its_requests_and_only_copies() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 100 * GiB))
    p.stored("w1", "only-here", Info(1 * GiB))
    p.stored("w1", "also-on-w2", Info(1 * GiB))
    p.stored("w2", "also-on-w2", Info(1 * GiB))
    p.stored("w2", "w2-only", Info(1 * GiB))
    only_start(p.submit(req("r1", 10 * GiB, producers=frozenset({"w1"}))))
    only_start(p.submit(req("r2", 20 * GiB, producers=frozenset({"w1"}))))
    only_start(p.submit(req("r3", 5 * GiB, producers=frozenset({"w2"}))))
    assert {rid: p.placed[rid][1] for rid in p.placed} == {"r1": "w1", "r2": "w1", "r3": "w2"}
    out = p.worker_lost("w1")
    assert out == [Lost("w1", ("r1", "r2"), ("only-here",))]
    assert "w1" not in p.workers
    assert set(p.placed) == {"r3"}
    # Nothing changes on the other worker.
    assert p.workers["w2"].reserved == 5 * GiB and p.workers["w2"].running == {"r3"}
    assert p.holders("also-on-w2").keys() == {"w2"}
    assert p.holders("w2-only").keys() == {"w2"}
    assert p.holders("only-here") == {}
    # Reports about the lost worker are ignored from now on.
    assert p.finished("r1") == [] and p.heartbeat("w1", 1, 1, 0) == []
    p.stored("w1", "late", Info(1))
    assert p.holders("late") == {}
    assert p.worker_lost("w1") == []


def test_worker_lost_places_waiting_requests_on_the_rest_or_fails_them() -> None:
    p = cluster(("big", "h1", 100 * GiB), ("small", "h2", 20 * GiB))
    only_start(p.submit(req("runner", 90 * GiB)))
    only_start(p.submit(req("s1", 15 * GiB)))
    assert p.placed["runner"][1] == "big" and p.placed["s1"][1] == "small"
    assert p.submit(req("huge", 50 * GiB, label="model 'huge'")) == []  # only 'big' could
    assert p.submit(req("mid", 15 * GiB)) == []  # would fit either, once free
    assert p.finished("s1") == [Start("mid", "small", 15 * GiB)]
    assert p.submit(req("tiny", 15 * GiB)) == []
    out = p.worker_lost("big")
    assert out[0] == Lost("big", ("runner",), ())
    fails = [i for i in out[1:] if isinstance(i, Fail)]
    assert [f.request_id for f in fails] == ["huge"]
    assert "model 'huge'" in fails[0].message and "small" in fails[0].message
    assert "tiny" in p.waiting  # could fit 'small' once 'mid' is done: waits
    assert p.finished("mid") == [Start("tiny", "small", 15 * GiB)]


def test_worker_lost_places_waiting_requests_on_remaining_workers() -> None:
    p = cluster(("w1", "h1", 10 * GiB))
    only_start(p.submit(req("a", 10 * GiB)))
    assert p.submit(req("b", 8 * GiB)) == []
    p.worker_joined("w2", "h2", 10 * GiB, 10 * GiB)  # takes 'b' at once
    assert p.placed["b"][1] == "w2"
    assert p.submit(req("c", 5 * GiB)) == []
    out = p.worker_lost("w2")
    assert out == [Lost("w2", ("b",), ())]
    assert "c" in p.waiting
    assert p.finished("a") == [Start("c", "w1", 5 * GiB)]


def test_losing_the_last_worker_fails_nothing() -> None:
    p = cluster(("w", "h", 10 * GiB))
    only_start(p.submit(req("a", 10 * GiB)))
    assert p.submit(req("b", 5 * GiB)) == []
    assert p.worker_lost("w") == [Lost("w", ("a",), ())]
    assert "b" in p.waiting  # nothing to decide until a worker joins


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_dropped_removes_objects_for_that_worker_only() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 100 * GiB))
    p.stored("w1", "shared", Info(1))
    p.stored("w2", "shared", Info(1))
    p.stored("w1", "mine", Info(1))
    p.stored("w2", "keep", Info(1))
    assert p.heartbeat("w1", 100 * GiB, 100 * GiB, 0, dropped=("shared", "mine", "unknown")) == []
    assert p.holders("shared").keys() == {"w2"}
    assert p.holders("mine") == {}
    assert "mine" not in p.objects
    assert p.holders("keep").keys() == {"w2"}


def test_dropped_object_is_no_longer_a_cache_hit() -> None:
    p = cluster(("w1", "h1", 100 * GiB), ("w2", "h2", 50 * GiB))
    p.stored("w2", "cached", Info(1 * GiB))
    p.heartbeat("w2", 50 * GiB, 50 * GiB, 0, dropped=("cached",))
    s = only_start(p.submit(req("r", 10 * GiB, cached_output="cached")))
    assert s == Start("r", "w1", 10 * GiB)


def test_heartbeat_from_an_unknown_worker_is_ignored() -> None:
    p = cluster(("w", "h", 10))
    assert p.heartbeat("ghost", 100, 100, 0) == []
    assert set(p.workers) == {"w"}


# --------------------------------------------------------------------------- reconnect


def test_reconnect_reports_the_worker_lost_first() -> None:
    p = cluster(("w1", "h1", 10 * GiB), ("w2", "h2", 10 * GiB))
    p.stored("w1", "obj", Info(1))
    only_start(p.submit(req("r", 5 * GiB, producers=frozenset({"w1"}))))
    assert p.placed["r"][1] == "w1"
    out = p.worker_joined("w1", "h1", 10 * GiB, 10 * GiB)
    assert out == [Lost("w1", ("r",), ("obj",))]
    w1 = p.workers["w1"]
    assert w1.reserved == 0 and w1.running == set()
    assert p.placed == {} and p.holders("obj") == {}


def test_reconnect_of_the_largest_worker_does_not_fail_what_only_it_can_hold() -> None:
    # A known worker joining again is lost first, then back in the same event: a waiting
    # request only it can hold must not be failed as "more than any worker has" between
    # the two.
    p = cluster(("big", "h1", 100 * GiB), ("small", "h2", 10 * GiB))
    only_start(p.submit(req("r1", 80 * GiB)))
    assert p.submit(req("r2", 80 * GiB, label="model 'r2'")) == []
    out = p.worker_joined("big", "h1", 100 * GiB, 100 * GiB)
    assert out[0] == Lost("big", ("r1",), ())
    fails = [i for i in out if isinstance(i, Fail)]
    assert fails == [], f"reconnect of 'big' failed a request it can hold: {fails}"
    assert Start("r2", "big", 80 * GiB) in out


# --------------------------------------------------------------------------- invariants


def check_invariants(p: Placement, out: list, ended: set[str], submitted: set[str]) -> None:  # type: ignore[type-arg]
    for w in p.workers.values():
        on_w = {rid: r for rid, (_, wid, r, _) in p.placed.items() if wid == w.worker_id}
        assert w.reserved == sum(on_w.values()), w
        assert w.reserved <= w.memory_total, w
        assert w.running == set(on_w), w
    for rid, (request, wid, reserved, _) in p.placed.items():
        assert wid in p.workers, (rid, wid)
        assert request.request_id == rid and reserved >= 0
    assert not (set(p.waiting) & set(p.placed))
    for i in out:
        if isinstance(i, Start):
            assert i.worker_id in p.workers, i
            assert p.placed[i.request_id][1:] == (i.worker_id, i.reserved, i.cpus), i
    # Every submitted request is in exactly one place.
    for rid in submitted:
        assert (rid in p.waiting) + (rid in p.placed) + (rid in ended) == 1, rid
    # The object index names only live workers.
    for oid, holders in p.objects.items():
        assert holders, oid
        assert set(holders) <= set(p.workers), oid


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_random_events_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    p = Placement()
    hosts = [f"h{i}" for i in range(4)]
    submitted: set[str] = set()
    ended: set[str] = set()
    outputs: list[str] = []
    next_worker = next_request = 0
    starts_seen = fails_seen = 0
    for _ in range(400):
        roll = rng.random()
        if roll < 0.12 or not p.workers:
            if p.workers and rng.random() < 0.25:
                wid = rng.choice(sorted(p.workers))  # a reconnect
            else:
                wid, next_worker = f"w{next_worker}", next_worker + 1
            mem = rng.choice([8, 16, 32, 64])
            out = p.worker_joined(wid, rng.choice(hosts), mem, mem - rng.randint(0, 4))
        elif roll < 0.18:
            out = p.worker_lost(rng.choice(sorted(p.workers)))
        elif roll < 0.25:
            wid = rng.choice(sorted(p.workers))
            w = p.workers[wid]
            dropped = tuple(rng.sample(outputs, min(len(outputs), rng.randint(0, 2))))
            out = p.heartbeat(
                wid, w.memory_total, rng.randint(0, w.memory_total), rng.randint(0, 4),
                rng.randint(0, 4), dropped,
            )
        elif roll < 0.65:
            rid, next_request = f"r{next_request}", next_request + 1
            inputs = {o: rng.randint(1, 4) for o in rng.sample(outputs, min(len(outputs), rng.randint(0, 3)))}
            producers = frozenset(rng.sample(sorted(p.workers), 1)) if rng.random() < 0.3 else frozenset()
            cached = rng.choice(outputs) if outputs and rng.random() < 0.15 else ""
            submitted.add(rid)
            out = p.submit(req(
                rid, rng.choice([1, 2, 4, 8, 16, 48, 80]), run=f"run{rng.randint(0, 2)}",
                inputs=inputs, producers=producers, cached_output=cached,
            ))
        elif roll < 0.95 and p.placed:
            rid = rng.choice(sorted(p.placed))
            oid = f"o-{rid}"
            outputs.append(oid)
            ended.add(rid)
            out = p.finished(rid, output=(oid, Info(rng.randint(1, 4))), new=rng.random() < 0.5)
        elif p.waiting or p.placed:
            rid = rng.choice(sorted(set(p.waiting) | set(p.placed)))
            ended.add(rid)
            out = p.withdraw(rid)
        else:
            out = []
        for i in out:
            if isinstance(i, Fail):
                ended.add(i.request_id)
                fails_seen += 1
            elif isinstance(i, Lost):
                ended.update(i.requests)
                assert i.worker_id not in p.workers or p.workers[i.worker_id].running.isdisjoint(i.requests)
            else:
                starts_seen += 1
        check_invariants(p, out, ended, submitted)
    assert starts_seen > 50 and fails_seen > 0  # the walk did exercise placement


# --------------------------------------------------------------------------- scale


@pytest.mark.timeout(600)  # a hang guard only: nothing here measures time
def test_ten_thousand_requests_on_a_hundred_workers_all_finish() -> None:
    rng = random.Random(7)
    p = Placement()
    for i in range(100):
        assert p.worker_joined(f"w{i}", f"h{i // 2}", 56 * GiB, 56 * GiB) == []
    pending: deque[Start] = deque()
    for i in range(10_000):
        out = p.submit(req(f"r{i}", rng.randint(1, 4) * GiB // 4, run=f"run{i % 10}"))
        assert not [x for x in out if not isinstance(x, Start)]
        pending += out
    assert p.waiting, "the test should exercise a waiting queue"
    done = 0
    while pending:
        s = pending.popleft()
        out = p.finished(s.request_id)
        assert not [x for x in out if not isinstance(x, Start)]
        pending += out
        done += 1
    assert done == 10_000
    assert p.decisions == 10_000
    assert p.waiting == {} and p.placed == {}
    assert all(w.reserved == 0 and not w.running for w in p.workers.values())


# --------------------------------------------------------------------------- cores


def cored(rid: str, cpus: int, reservation: int = GiB, **kw: object) -> Request:
    r = req(rid, reservation, **kw)  # type: ignore[arg-type]
    return Request(**{**r.__dict__, "cpus": cpus})


def cores_cluster(*workers: tuple[str, int]) -> Placement:
    p = Placement()
    for worker_id, cpus in workers:
        assert p.worker_joined(worker_id, f"h-{worker_id}", 64 * GiB, 64 * GiB, cpus=cpus) == []
    return p


def test_a_request_that_declares_cores_waits_for_them_and_gets_them_back() -> None:
    p = cores_cluster(("w", 16))
    assert only_start(p.submit(cored("a", 12))) == Start("a", "w", GiB, 12)
    assert p.workers["w"].cpus_reserved == 12
    assert p.submit(cored("b", 8)) == []  # 4 cores free: it waits, memory or not
    assert only_start(p.submit(cored("c", 4))) == Start("c", "w", GiB, 4)  # backfill
    assert p.finished("a") == [Start("b", "w", GiB, 8)]
    p.finished("b")
    p.withdraw("c")
    assert p.workers["w"].cpus_reserved == 0


def test_two_heavy_requests_go_to_different_workers() -> None:
    p = cores_cluster(("w1", 16), ("w2", 16))
    first = only_start(p.submit(cored("a", 16)))
    second = only_start(p.submit(cored("b", 16)))
    assert {first.worker_id, second.worker_id} == {"w1", "w2"}


def test_requests_without_cores_reserve_none_and_prefer_free_cores() -> None:
    p = cores_cluster(("w1", 16), ("w2", 16))
    only_start(p.submit(cored("heavy", 12, producers=frozenset())))
    busy = p.placed["heavy"][1]
    light = [only_start(p.submit(req(f"l{i}", GiB))) for i in range(3)]
    assert light[0].worker_id != busy and light[0].cpus == 0
    assert p.workers[busy].cpus_reserved == 12
    # Many light ones run beside each other: cores never hold them back.
    assert all(s.cpus == 0 for s in light)


def test_more_cores_than_any_worker_has_fails_at_once() -> None:
    p = cores_cluster(("w1", 8), ("w2", 16))
    (fail,) = p.submit(cored("r", 32, label="model 'r'"))
    assert isinstance(fail, Fail)
    assert fail.message == (
        "model 'r' reserves 32 cores, more than any worker has: the largest is w2 with 16 "
        "(declare fewer with @faas.model(cpus=...) or start a larger worker)"
    )
    assert "r" not in p.waiting


def test_a_cache_hit_reserves_no_cores() -> None:
    p = cores_cluster(("w1", 4), ("w2", 4))
    p.stored("w2", "out", Info(GiB))
    only_start(p.submit(cored("filler", 4)))  # whichever it took, a hit needs no cores
    s = only_start(p.submit(cored("r", 4, cached_output="out")))
    assert s == Start("r", "w2", 0, 0)


# --------------------------------------------------------------------------- early starts


def test_fits_now_says_whether_a_request_would_start_at_once() -> None:
    p = cluster(("w", "h1", 8 * GiB))
    assert p.fits_now(req("early", 4 * GiB))
    assert not p.fits_now(req("huge", 9 * GiB))
    only_start(p.submit(req("a", 6 * GiB)))
    assert not p.fits_now(req("early", 4 * GiB))  # 2 GiB left
    assert p.submit(req("b", 4 * GiB)) == []  # it waits ...
    assert not p.fits_now(req("tiny", 1))  # ... and nothing goes ahead of it early
    assert p.decisions == 1  # asking decides nothing


def test_grow_reserves_more_for_a_placed_request_until_it_ends() -> None:
    p = cluster(("w", "h1", 8 * GiB))
    only_start(p.submit(req("early", 2 * GiB)))
    p.grow("early", 5 * GiB)  # its upstream objects came: it maps them now
    assert p.workers["w"].reserved == 7 * GiB
    assert p.submit(req("next", 2 * GiB)) == []  # no room while it runs
    assert only_start(p.finished("early")) == Start("next", "w", 2 * GiB)
    assert p.workers["w"].reserved == 2 * GiB
    p.grow("gone", GiB)  # a request that is not placed: nothing happens
    assert p.workers["w"].reserved == 2 * GiB
