"""Placement (scheduler/placement.py) as a pure state machine: events in, instructions out.

No sockets, no asyncio, no clocks: every test drives ``Placement`` directly.
"""

from __future__ import annotations

from faas.scheduler.placement import BACKFILL, Fail, Placement, Request, Start
from tests.unit.scheduler.placement_helpers import GiB, Info, cluster, only_start, req, starts

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
