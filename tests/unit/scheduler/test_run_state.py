"""The run's decisions (scheduler/run_state.py) as a pure state machine: events in,
instructions out. No scheduler, no workers, no asyncio: every test drives RunState."""

from __future__ import annotations

import random

import pytest

from faas.protocol.errors import FunctionFailed, OutOfMemory, PeerVanished
from faas.scheduler.run_state import Fail, Inputs, RunState, Say, Start, Stop

GiB = 2**30


def chain(fits: bool = True) -> RunState:
    """dim (scans) -> fact (scans, reads dim) -> report (reads fact)."""
    return RunState(
        ["dim", "fact", "report"], {"fact": ["dim"], "report": ["fact"]},
        scans=["dim", "fact"], fits=lambda node: fits,
    )


def starts(out: list) -> list[str]:  # type: ignore[type-arg]
    return [i.node for i in out if isinstance(i, Start)]


def test_a_node_starts_once_its_upstream_outputs_are_made() -> None:
    s = chain(fits=False)
    assert s.start() == [Start("dim", 1)]
    assert s.placed("dim") == []  # fact may not start early: no room
    assert starts(s.object_ready("dim")) == ["fact"]  # made while it still writes its table
    assert s.done("dim") == []
    assert s.placed("fact") == []
    assert starts(s.done("fact")) == ["report"]
    assert s.placed("report") == [] and s.done("report") == []
    assert s.complete


def test_a_scanning_reader_starts_early_once_its_upstream_is_on_a_worker() -> None:
    s = chain()
    assert s.start() == [Start("dim", 1)]  # dim is not placed yet: fact waits
    assert s.placed("dim") == [Start("fact", 1, None, early=True)]
    assert s.placed("fact") == []
    assert s.waiting_for("fact") == {"dim"}
    # report scans nothing: it never starts early.
    assert s.object_ready("dim") == [Inputs("fact")]
    assert s.waiting_for("fact") == frozenset()
    assert s.done("dim") == [] and starts(s.done("fact")) == ["report"]


def test_an_early_reader_placed_after_its_upstream_was_made_waits_for_nothing() -> None:
    s = chain()
    s.start()
    assert starts(s.placed("dim")) == ["fact"]
    s.done("dim")  # made while fact was being placed
    assert s.placed("fact") == [] and s.waiting_for("fact") == frozenset()


def test_a_lost_upstream_stops_the_early_readers_that_wait_for_it_first() -> None:
    s = RunState(
        ["up", "mid", "low"], {"mid": ["up"], "low": ["mid"]}, scans=["up", "mid", "low"],
        fits=lambda node: True,
    )
    s.start()
    assert starts(s.placed("up")) == ["mid"]
    assert starts(s.placed("mid")) == ["low"]
    s.placed("low")
    out = s.worker_lost("up", PeerVanished("worker w1 was lost"))
    # mid gives its place back, and so does low, which waits for mid; then up runs again.
    assert out == [
        Stop("mid"), Say("mid", "retrying", "'up' is made again first"),
        Stop("low"), Say("low", "retrying", "'mid' is made again first"),
        Say("up", "retrying", "worker w1 was lost; running it again"),
        Start("up", 2),
    ]
    assert s.attempts("up") == 2
    assert s.stopped("mid") == [] and s.stopped("low") == []  # up is not on a worker yet
    assert s.placed("up") == [Start("mid", 2, None, early=True)]
    assert s.attempts("mid") == 1  # the stopped early start did not count


def test_a_worker_lost_too_often_fails_the_run() -> None:
    s = RunState(["a"], {}, max_attempts=2)
    s.start()
    error = PeerVanished("lost")
    assert starts(s.worker_lost("a", error)) == ["a"]
    assert s.worker_lost("a", error) == [Fail(error)]
    assert s.worker_lost("a", error) == []  # said once


def test_out_of_memory_runs_once_more_with_twice_the_memory_if_a_worker_has_it() -> None:
    s = RunState(["a", "b"], {})
    s.start()
    error = OutOfMemory("model 'a'", 3 * GiB, 2 * GiB)
    out = s.out_of_memory("a", error, 2 * GiB, largest=8 * GiB)
    assert out[-1] == Start("a", 2, 4 * GiB)
    assert isinstance(out[0], Say) and "retrying once with 4 GiB" in out[0].error
    assert s.out_of_memory("a", error, 4 * GiB, largest=8 * GiB) == [Fail(error)]
    other = OutOfMemory("model 'b'", 5 * GiB, 4 * GiB)
    assert s.out_of_memory("b", other, 4 * GiB, largest=6 * GiB) == []  # failed already


def test_out_of_memory_with_no_worker_twice_as_large_fails_at_once() -> None:
    s = RunState(["a"], {})
    s.start()
    error = OutOfMemory("model 'a'", 3 * GiB, 2 * GiB)
    assert s.out_of_memory("a", error, 2 * GiB, largest=3 * GiB) == [Fail(error)]


def test_a_failure_fails_the_run_and_nothing_starts_after_it() -> None:
    s = RunState(["a", "b", "c"], {"c": ["a", "b"]})
    s.start()
    error = FunctionFailed("model 'a' raised ValueError: no")
    assert s.failed("a", error) == [Fail(error)]
    assert s.done("b") == []  # c never starts


def test_lost_outputs_are_made_again_while_a_reader_still_needs_them() -> None:
    s = RunState(["a", "b", "c"], {"b": ["a"], "c": ["b"]})
    s.start()
    s.placed("a")
    s.done("a")
    s.placed("b")
    s.done("b")
    s.placed("c")
    # a's and b's only copies are gone while c runs: b is made again, and so is a,
    # which b now needs.
    out = s.outputs_lost(["a", "b"])
    assert [i.node for i in out if isinstance(i, Say)] == ["b", "a"]
    assert starts(out) == ["a"]
    assert s.state("b") == "idle" and not s.made("b")
    # Outputs nobody still needs are left alone.
    s2 = RunState(["a", "b"], {"b": ["a"]})
    s2.start()
    for node in ("a", "b"):
        s2.placed(node)
        s2.done(node)
    assert s2.outputs_lost(["a"]) == [] and s2.complete


def test_randomized_runs_keep_the_invariants() -> None:
    """Random DAGs and random events (made, done, lost workers, failures, lost outputs):
    a node starts only when its upstream is made or, early, when it scans and its missing
    upstream is on a worker; only running tries are stopped; Inputs come once everything a
    placed node lacked is made; a failed run starts nothing more."""
    rng = random.Random(20261129)
    for trial in range(300):
        _one_random_run(rng, trial)


def _one_random_run(rng: random.Random, trial: int) -> None:
    n = rng.randint(1, 8)
    names = [f"n{i}" for i in range(n)]
    deps = {m: sorted(rng.sample(names[:i], rng.randint(0, min(i, 3))))
            for i, m in enumerate(names)}
    scans = [m for m in names if rng.random() < 0.6]
    s = RunState(names, deps, scans=scans, fits=lambda node: rng.random() < 0.7)
    running: set[str] = set()
    stopping: set[str] = set()
    waited: dict[str, frozenset[str]] = {}  # what each placed node lacked then
    failed = False

    def apply(out: list) -> None:  # type: ignore[type-arg]
        nonlocal failed
        for ins in out:
            assert not failed, f"trial {trial}: {ins} after the run failed"
            if isinstance(ins, Start):
                missing = [d for d in deps[ins.node] if not s.made(d)]
                if ins.early:
                    assert missing and ins.node in scans, (trial, ins)
                else:
                    assert not missing, (trial, ins, missing)
                running.add(ins.node)
            elif isinstance(ins, Stop):
                assert ins.node in running, (trial, ins)
                running.discard(ins.node)
                stopping.add(ins.node)
            elif isinstance(ins, Inputs):
                assert s.waiting_for(ins.node) == frozenset(), (trial, ins)
                assert all(s.made(d) for d in waited[ins.node]), (trial, ins)
            elif isinstance(ins, Fail):
                failed = True

    apply(s.start())
    for _ in range(200):
        if failed or s.complete:
            break
        choices = sorted(running | stopping)
        if not choices:
            break
        node = rng.choice(choices)
        if node in stopping:
            stopping.discard(node)
            apply(s.stopped(node))
            continue
        roll = rng.random()
        if roll < 0.3 and not s.is_placed(node):
            out = s.placed(node)
            waited[node] = s.waiting_for(node)
            apply(out)
        elif roll < 0.45:
            apply(s.object_ready(node))
        elif roll < 0.8:
            if all(s.made(d) for d in deps[node]) and s.is_placed(node):
                running.discard(node)
                apply(s.done(node))
        elif roll < 0.9:
            running.discard(node)
            apply(s.worker_lost(node, PeerVanished("lost")))
        elif roll < 0.95:
            done = [m for m in names if s.state(m) == "done"]
            apply(s.outputs_lost(rng.sample(done, min(len(done), 2))))
            running |= {m for m in names if s.state(m) == "running"}
        else:
            running.discard(node)
            apply(s.failed(node, FunctionFailed("boom")))
    if s.complete:
        assert all(s.made(m) for m in names)


@pytest.mark.parametrize("event", ["done", "object_ready", "stopped", "failed", "placed"])
def test_events_for_nodes_not_running_change_nothing(event: str) -> None:
    s = RunState(["a", "b"], {"b": ["a"]})
    args = (FunctionFailed("x"),) if event == "failed" else ()
    assert getattr(s, event)("b", *args) == []  # b never started
    assert s.state("b") == "idle"


def test_an_early_reader_whose_made_upstream_is_lost_again_is_stopped() -> None:
    """R waits for U and V; U's object is ready, then U's worker is lost before V is made:
    R would never get U's object, so it gives its place back."""
    s = RunState(["u", "v", "r"], {"r": ["u", "v"]}, scans=["r"], fits=lambda node: True)
    s.start()
    s.placed("u")
    assert starts(s.placed("v")) == ["r"]
    s.placed("r")
    assert s.object_ready("u") == []  # v is not made yet
    out = s.worker_lost("u", PeerVanished("lost"))
    assert Stop("r") in out
    assert s.object_ready("v") == []  # no Inputs for a stopped reader


def test_an_upstream_retried_after_running_out_of_memory_stops_its_early_readers() -> None:
    s = RunState(["u", "r"], {"r": ["u"]}, scans=["r"], fits=lambda node: True)
    s.start()
    assert starts(s.placed("u")) == ["r"]
    s.placed("r")
    out = s.out_of_memory("u", OutOfMemory("model 'u'", 3 * GiB, 2 * GiB), 2 * GiB, 16 * GiB)
    assert out[:2] == [Stop("r"), Say("r", "retrying", "'u' is made again first")]
    assert out[-1] == Start("u", 2, 4 * GiB)


def test_a_reader_being_placed_when_its_upstream_output_is_lost_is_stopped() -> None:
    s = RunState(["u", "r"], {"r": ["u"]})
    s.start()
    s.placed("u")
    assert starts(s.done("u")) == ["r"]  # r is being placed now
    out = s.outputs_lost(["u"])
    assert Stop("r") in out and starts(out) == ["u"]
    assert s.stopped("r") == []  # it starts again once u is made
    s.placed("u")
    assert starts(s.done("u")) == ["r"]
