"""Placement as workers come and go (lost, heartbeats, reconnects); random walks and scale."""

from __future__ import annotations

import random
from collections import deque

import pytest

from faas.scheduler.placement import Fail, Lost, Placement, Start
from tests.unit.scheduler.placement_helpers import GiB, Info, cluster, only_start, req

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
