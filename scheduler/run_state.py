"""One run's decisions, as a pure state machine: events in, instructions out.

Which node starts now (every upstream made, or early: see below), which runs again and
with how much memory, which early start gives its place back, which outputs are made again
after a worker loss, and when the run fails or is complete: all of it is decided here,
from events the coordinator (``scheduler/run.py``) reports. Nothing here awaits, keeps
time or touches a socket, so tests drive it directly, in any order of events.

A node is, in turn: ``idle`` (not started, or to start again), ``running`` (a Start was
given; once ``placed`` it is on a worker), ``stopping`` (a Stop was given) and ``done``.
Its output is *made* once its object can be read (ObjectReady, or done).

Rules:

- A node starts when every upstream node's output is made.
- Early start: a node that scans a source table may start before that, when every upstream
  output it lacks is being made by a node already on a worker (so waiting holds up nothing
  they need) and ``fits(node)`` says it can be placed at once. It is told the upstream
  nodes it waits for when it goes on a worker, and gets one ``Inputs`` once they are all
  made.
- A node whose worker was lost under it runs again, up to ``max_attempts`` attempts. The
  early starts that wait for it are stopped first (recursively: and those that wait for
  them), so it never waits for a place they hold; a stopped early start does not count as
  an attempt.
- A node stopped by the memory watcher runs once more with twice its reservation, if
  that fits on the largest worker; otherwise, and on any other failure, the run fails.
- Outputs whose only copy was lost are forgotten, and made again, while a node that is not
  done still needs them (and then, their own upstream outputs that are lost too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from faas.protocol.messages import TaskState

MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class Start:
    """Start ``node``: its ``attempt``-th try (task ids stay unique across tries), with
    ``reservation`` bytes (None: the usual estimate)."""

    node: str
    attempt: int
    reservation: int | None = None
    early: bool = False


@dataclass(frozen=True)
class Stop:
    """Stop ``node``'s running try: it will start again (report ``stopped`` when it ends)."""

    node: str


@dataclass(frozen=True)
class Inputs:
    """The upstream outputs ``node`` waited for are all made: send them to it."""

    node: str


@dataclass(frozen=True)
class Say:
    """An event for the run's record and its client."""

    node: str
    state: TaskState
    error: str = ""


@dataclass(frozen=True)
class Fail:
    """The run fails with ``error``: stop everything, publish nothing."""

    error: BaseException


Instruction = Start | Stop | Inputs | Say | Fail


@dataclass
class _Node:
    deps: tuple[str, ...]
    scans: bool
    state: str = "idle"
    made: bool = False
    on_worker: bool = False
    # The upstream nodes it lacked when it went on a worker, until Inputs is given.
    waited: set[str] = field(default_factory=set)
    tries: int = 0  # Starts given
    given_up: int = 0  # of those, early starts stopped (not counted as attempts)
    doubled: bool = False  # already retried after running out of memory


class RunState:
    def __init__(
        self,
        order: Sequence[str],
        deps: Mapping[str, Sequence[str]],
        scans: Iterable[str] = (),
        fits: Callable[[str], bool] = lambda node: False,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        """``order``: every node, upstream first; ``deps``: each node's upstream nodes;
        ``scans``: the nodes that read a source table (they may start early); ``fits``:
        whether a node could be placed at once, asked before an early start."""
        scanning = set(scans)
        self.order = list(order)
        self.nodes = {n: _Node(deps=tuple(deps.get(n, ())), scans=n in scanning) for n in order}
        self.readers: dict[str, list[str]] = {n: [] for n in order}
        for n in order:
            for d in self.nodes[n].deps:
                self.readers[d].append(n)
        self.fits = fits
        self.max_attempts = max_attempts
        self.run_failed = False

    # -- queries ----------------------------------------------------------------------

    def made(self, node: str) -> bool:
        """Whether ``node``'s output can be read."""
        return self.nodes[node].made

    def state(self, node: str) -> str:
        return self.nodes[node].state

    def is_placed(self, node: str) -> bool:
        """Whether ``node``'s current try is on a worker."""
        return self.nodes[node].on_worker

    def waiting_for(self, node: str) -> frozenset[str]:
        """The upstream nodes an early-started node on a worker still waits for."""
        return frozenset(d for d in self.nodes[node].waited if not self.nodes[d].made)

    def attempts(self, node: str) -> int:
        """Tries that counted (early starts given up do not)."""
        n = self.nodes[node]
        return n.tries - n.given_up

    @property
    def complete(self) -> bool:
        return all(n.state == "done" for n in self.nodes.values())

    # -- events -----------------------------------------------------------------------

    def start(self) -> list[Instruction]:
        """The run begins."""
        return self._schedule()

    def placed(self, node: str) -> list[Instruction]:
        """``node``'s try was placed and sent to a worker: what it lacks now, it waits for
        (``waiting_for``); nodes waiting for it may start early."""
        n = self.nodes[node]
        if n.state != "running":
            return []
        n.on_worker = True
        n.waited = {d for d in n.deps if not self.nodes[d].made}
        return self._schedule()

    def object_ready(self, node: str) -> list[Instruction]:
        """``node``'s output can be read (it may still be writing its table)."""
        n = self.nodes[node]
        if n.made or n.state not in ("running", "done"):
            return []
        n.made = True
        out: list[Instruction] = []
        for r in self.readers[node]:
            reader = self.nodes[r]
            if node in reader.waited and reader.state == "running" and not self.waiting_for(r):
                reader.waited = set()
                out.append(Inputs(r))
        return out + self._schedule()

    def done(self, node: str) -> list[Instruction]:
        """``node`` finished (its output, if any, is made)."""
        n = self.nodes[node]
        if n.state != "running":
            return []
        out = self.object_ready(node)
        n.state, n.on_worker, n.made = "done", False, True
        return out + self._schedule()

    def stopped(self, node: str) -> list[Instruction]:
        """A Stop was carried out: ``node`` starts again when it may."""
        n = self.nodes[node]
        if n.state != "stopping":
            return []
        n.state, n.on_worker, n.waited = "idle", False, set()
        return self._schedule()

    def worker_lost(self, node: str, error: BaseException) -> list[Instruction]:
        """``node``'s worker (or the one holding its input) was lost under it."""
        n = self.nodes[node]
        if n.state != "running":
            return []
        n.state, n.on_worker, n.made, n.waited = "idle", False, False, set()
        if self.attempts(node) >= self.max_attempts:
            return self._fail(error)
        out = self._stop_waiting_for(node)
        out.append(Say(node, "retrying", f"{error}; running it again"))
        return out + self._schedule()

    def out_of_memory(
        self, node: str, error: BaseException, reservation: int, largest: int
    ) -> list[Instruction]:
        """The memory watcher stopped ``node`` at ``reservation`` bytes; ``largest``: the
        memory of the largest worker."""
        n = self.nodes[node]
        if n.state != "running":
            return []
        if n.doubled or 2 * reservation > largest:
            n.state, n.on_worker = "idle", False
            return self._fail(error)
        n.doubled = True
        n.tries += 1
        n.waited, n.on_worker = set(), False
        n.made = False
        return [
            # Early readers waiting for it give their place back: it may need it now.
            *self._stop_waiting_for(node),
            Say(node, "retrying", f"{error}; retrying once with {_size(2 * reservation)}"),
            Start(node, n.tries, 2 * reservation),
        ]

    def failed(self, node: str, error: BaseException) -> list[Instruction]:
        """``node`` failed for good (the user's error, a bad input, a refused commit)."""
        n = self.nodes[node]
        if n.state != "running":
            return []
        n.state, n.on_worker = "idle", False
        return self._fail(error)

    def outputs_lost(self, nodes: Iterable[str]) -> list[Instruction]:
        """The only copies of these nodes' outputs are gone (their worker was lost). Each
        that a node not done still needs is made again; readers' needs go up the graph."""
        lost = {n for n in nodes if self.nodes[n].made}
        out: list[Instruction] = []
        changed = True
        while changed:
            changed = False
            for name in [n for n in self.order if n in lost]:
                needing = [r for r in self.readers[name] if self.nodes[r].state != "done"]
                if not needing or not self.nodes[name].made:
                    continue
                n = self.nodes[name]
                if n.state == "running":  # still writing its table: its worker's loss ends it
                    continue
                n.state, n.made = "idle", False
                lost.discard(name)
                changed = True
                out.append(Say(name, "retrying", (
                    f"its output was lost with its worker; {', '.join(sorted(needing))} "
                    f"still need it"
                )))
                # Readers not on a worker yet, or on one still waiting for it, start again
                # once it is made: it must never wait for a place they hold.
                out += self._stop_waiting_for(name)
        return out + self._schedule()

    # -- deciding ---------------------------------------------------------------------

    def _fail(self, error: BaseException) -> list[Instruction]:
        if self.run_failed:
            return []
        self.run_failed = True
        return [Fail(error)]

    def _stop_waiting_for(self, node: str) -> list[Instruction]:
        """``node`` is to be made (again): stop its readers that have not got its output,
        those on a worker still waiting for it and those not on a worker yet, and the
        readers waiting for them in turn."""
        out: list[Instruction] = []
        for r in self.readers[node]:
            reader = self.nodes[r]
            waiting = node in reader.waited if reader.on_worker else True
            if reader.state == "running" and waiting:
                reader.state = "stopping"
                reader.given_up += 1
                out += [Stop(r), Say(r, "retrying", f"{node!r} is made again first")]
                out += self._stop_waiting_for(r)
        return out

    def _schedule(self) -> list[Instruction]:
        if self.run_failed:
            return []
        out: list[Instruction] = []
        for name in self.order:
            n = self.nodes[name]
            if n.state != "idle":
                continue
            missing = [d for d in n.deps if not self.nodes[d].made]
            early = bool(missing) and n.scans and all(
                self.nodes[d].state == "running" and self.nodes[d].on_worker for d in missing
            ) and self.fits(name)
            if missing and not early:
                continue
            n.state = "running"
            n.tries += 1
            out.append(Start(name, n.tries, None, early))
        return out


def _size(n: int) -> str:
    from faas.protocol.sizes import format_size

    return format_size(n)


__all__ = ["Fail", "Inputs", "Instruction", "MAX_ATTEMPTS", "RunState", "Say", "Start", "Stop"]
