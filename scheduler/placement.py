"""Placement: which worker runs which function, as a pure state machine.

Events go in (a worker joined, sent a heartbeat, was lost; a function is ready,
finished, failed, was withdrawn; an object was stored somewhere); instructions
come out (start this request on that worker; fail this request, it can never
fit; these requests and objects were lost with a worker). Nothing here does
I/O or keeps time, so tests drive it directly and the benchmark simulates a
large cluster with it.

Rules:

- A request reserves its own memory (``reservation``) plus the bytes of the
  inputs it must pull to the chosen worker's host. Objects already in a host's
  shared memory are counted once for the host, whoever reads them.
- It goes to a worker where that fits now, preferring the worker whose host
  holds most of its input bytes (then the producer's own worker, then the one
  running fewest functions, then the most free memory). A worker that already holds
  the request's output (a cache hit)
  needs no memory and wins.
- When it fits nowhere now it waits, in arrival order; requests behind it that
  fit may go first (bounded backfill). When it could fit on no live worker even
  idle, it fails at once.
- A request that declares cores (``@faas.model(cpus=N)``) also reserves them: it goes
  only where that many of the worker's cores are not reserved, so two heavy functions
  never share cores; one that asks for more than any worker has fails at once. Requests
  that declare none reserve none, and prefer the worker with most cores unreserved.
- A function may start before its upstream objects exist (to read its source tables
  meanwhile) only where it fits at once; when those objects come its reservation grows
  by what it then maps.
- Reservations are given back when a request finishes, fails or is withdrawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

# How many waiting requests one placement pass looks at: the oldest first, then smaller
# ones behind it that fit (backfill), without scanning an unbounded queue on every event.
BACKFILL = 64


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


@dataclass
class Worker:
    worker_id: str
    host_id: str
    memory_total: int
    # What the worker's host reports free (psutil), capped at memory_total.
    memory_available: int
    # Bytes of its shared memory that runs are using (heartbeats; new outputs are added as
    # they are reported), and of unpinned cache there, which it gives back on demand.
    shm_bytes: int = 0
    cache_bytes: int = 0
    # Shutting down: it finishes what it runs and gets nothing new.
    draining: bool = False
    reserved: int = 0
    running: set[str] = field(default_factory=set)
    # Cores that functions may reserve (0: cores are not counted here), and reserved now.
    cpus: int = 0
    cpus_reserved: int = 0

    @property
    def cpus_free(self) -> int:
        return self.cpus - self.cpus_reserved


@dataclass(frozen=True)
class Request:
    """A function ready to run."""

    request_id: str
    run_id: str
    node: str
    # How people name it in messages, e.g. "model 'fact_sale'".
    label: str
    reservation: int
    # Upstream objects it reads: object id -> bytes.
    inputs: dict[str, int] = field(default_factory=dict)
    # Workers that produced its inputs in this run (preferred on ties).
    producers: frozenset[str] = frozenset()
    # Its output's object id when a cached copy may be used ("" = it must run).
    cached_output: str = ""
    # Cores it reserves (0: none).
    cpus: int = 0


@dataclass(frozen=True)
class Start:
    request_id: str
    worker_id: str
    # What it reserved there (0 for a cache hit).
    reserved: int
    cpus: int = 0


@dataclass(frozen=True)
class Fail:
    request_id: str
    message: str


@dataclass(frozen=True)
class Lost:
    """A worker is gone: the requests that were running there, and the objects whose
    only copy it held."""

    worker_id: str
    requests: tuple[str, ...]
    objects: tuple[str, ...]


Instruction = Start | Fail | Lost


def _size(n: int) -> str:
    from faas.protocol.sizes import format_size

    return format_size(n)


@dataclass
class _Inputs:
    total: int
    by_host: dict[str, int]  # input bytes already on each host
    hits: set[str]  # workers holding the request's cached output


class Placement:
    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}
        # object id -> worker id -> what that worker reported of it (anything with nbytes).
        self.objects: dict[str, dict[str, Sized]] = {}
        self.waiting: dict[str, Request] = {}  # in arrival order
        # request id -> (request, worker, bytes reserved, cores reserved)
        self.placed: dict[str, tuple[Request, str, int, int]] = {}
        self.decisions = 0

    # -- queries -------------------------------------------------------------------

    def host_shm(self) -> dict[str, tuple[int, int]]:
        """Bytes in use and bytes of cache in each host's shared memory, counted once
        whichever workers hold them and however many functions read them."""
        shm: dict[str, tuple[int, int]] = {}
        for w in self.workers.values():
            used, cache = shm.get(w.host_id, (0, 0))
            shm[w.host_id] = (used + w.shm_bytes, cache + w.cache_bytes)
        return shm

    def free(self, w: Worker, shm: dict[str, tuple[int, int]] | None = None) -> int:
        """What a new request may still reserve on ``w``: cache does not count against it,
        since the worker spills it to make room."""
        used, cache = (shm if shm is not None else self.host_shm()).get(w.host_id, (0, 0))
        return min(w.memory_total - used, w.memory_available + cache) - w.reserved

    def holders(self, object_id: str) -> dict[str, Sized]:
        return self.objects.get(object_id, {})

    def _view(self, request: Request) -> _Inputs:
        """Where a request's inputs are, by host, worked out once per placement pass."""
        by_host: dict[str, int] = {}
        for oid, n in request.inputs.items():
            for host in {self.workers[w].host_id for w in self.holders(oid)}:
                by_host[host] = by_host.get(host, 0) + n
        hits = set(self.holders(request.cached_output)) if request.cached_output else set()
        return _Inputs(sum(request.inputs.values()), by_host, hits)

    def pulled(self, request: Request, w: Worker, view: _Inputs | None = None) -> int:
        """Input bytes ``w`` would have to pull from other hosts for ``request``."""
        v = view or self._view(request)
        return v.total - v.by_host.get(w.host_id, 0)

    def need(self, request: Request, w: Worker, view: _Inputs | None = None) -> int:
        v = view or self._view(request)
        if w.worker_id in v.hits:
            return 0  # a cache hit runs nothing
        return request.reservation + self.pulled(request, w, v)

    def cores(self, request: Request, w: Worker, view: _Inputs | None = None) -> int:
        """Cores ``request`` reserves on ``w``: none for a cache hit, or where cores are
        not counted."""
        v = view or self._view(request)
        if w.worker_id in v.hits or not w.cpus:
            return 0
        return request.cpus

    def affinity(
        self, request: Request, w: Worker, view: _Inputs | None = None
    ) -> tuple[int, int, int]:
        v = view or self._view(request)
        local = v.by_host.get(w.host_id, 0)
        return int(w.worker_id in v.hits), local, int(w.worker_id in request.producers)

    def fits_now(self, request: Request) -> bool:
        """Would ``request`` start at once if submitted now, behind no waiting request?"""
        if self.waiting:
            return False
        shm = self.host_shm()
        view = self._view(request)
        return any(
            self.need(request, w, view) <= self.free(w, shm)
            and self.cores(request, w, view) <= w.cpus_free
            for w in self.workers.values() if not w.draining
        )

    # -- events ----------------------------------------------------------------------

    def worker_joined(
        self, worker_id: str, host_id: str, memory_total: int, memory_available: int,
        shm_bytes: int = 0, cpus: int = 0,
    ) -> list[Instruction]:
        out: list[Instruction] = []
        if worker_id in self.workers:  # a reconnect: whatever it was running is gone
            out.append(self._remove(worker_id))
        self.workers[worker_id] = Worker(
            worker_id=worker_id, host_id=host_id, memory_total=memory_total,
            memory_available=min(memory_available, memory_total), shm_bytes=shm_bytes,
            cpus=cpus,
        )
        return out + self._place()

    def heartbeat(
        self, worker_id: str, memory_total: int, memory_available: int, shm_bytes: int,
        cache_bytes: int = 0, dropped: tuple[str, ...] = (), draining: bool = False,
    ) -> list[Instruction]:
        w = self.workers.get(worker_id)
        if w is None:
            return []
        w.draining = draining
        w.memory_total = memory_total
        w.memory_available = min(memory_available, memory_total)
        w.shm_bytes = shm_bytes
        w.cache_bytes = cache_bytes
        for oid in dropped:  # evicted from its store: no longer a cache hit there
            holders = self.objects.get(oid)
            if holders is not None:
                holders.pop(worker_id, None)
                if not holders:
                    del self.objects[oid]
        return self._place()

    def worker_lost(self, worker_id: str) -> list[Instruction]:
        if worker_id not in self.workers:
            return []
        return [self._remove(worker_id), *self._place()]

    def _remove(self, worker_id: str) -> Lost:
        w = self.workers.pop(worker_id)
        requests = tuple(sorted(w.running))
        for rid in requests:
            self.placed.pop(rid, None)
        only_copies = []
        for oid, holders in list(self.objects.items()):
            if holders.pop(worker_id, None) is not None and not holders:
                only_copies.append(oid)
                del self.objects[oid]
        return Lost(worker_id, requests, tuple(sorted(only_copies)))

    def stored(self, worker_id: str, object_id: str, info: Sized) -> None:
        """An object is in ``worker_id``'s store (an output, a pulled copy, a cached one)."""
        if worker_id in self.workers:
            self.objects.setdefault(object_id, {})[worker_id] = info

    def submit(self, request: Request) -> list[Instruction]:
        self.waiting[request.request_id] = request
        return self._place()

    def finished(
        self, request_id: str, output: tuple[str, Sized] | None = None, new: bool = True
    ) -> list[Instruction]:
        """A request ended well; ``output`` (object id, info) is now on its worker (``new``:
        just written, so its host's shared memory grew by its size)."""
        self._end(request_id, output, new)
        return self._place()

    def _end(self, request_id: str, output: tuple[str, Sized] | None, new: bool) -> None:
        entry = self.placed.pop(request_id, None)
        if entry is not None:
            _, worker_id, reserved, cores = entry
            w = self.workers.get(worker_id)
            if w is not None:
                w.reserved -= reserved
                w.cpus_reserved -= cores
                w.running.discard(request_id)
                if output is not None:
                    self.stored(worker_id, output[0], output[1])
                    if new:
                        w.shm_bytes += output[1].nbytes

    def grow(self, request_id: str, extra: int) -> None:
        """A placed request reserves ``extra`` bytes more on its worker (a function started
        before its upstream objects existed now maps them). Its worker's free memory may go
        below zero for a while: new requests wait until it is back."""
        entry = self.placed.get(request_id)
        if entry is None or extra <= 0:
            return
        request, worker_id, reserved, cores = entry
        w = self.workers.get(worker_id)
        if w is None:
            return
        w.reserved += extra
        self.placed[request_id] = (request, worker_id, reserved + extra, cores)

    def withdraw(self, request_id: str) -> list[Instruction]:
        """A request failed, was cancelled, or is no longer wanted: give back what it held."""
        self.waiting.pop(request_id, None)
        return self.finished(request_id)

    # -- deciding --------------------------------------------------------------------

    def _place(self) -> list[Instruction]:
        out: list[Instruction] = []
        workers = [w for w in self.workers.values() if not w.draining]
        if not workers:
            return out  # nothing to decide until a worker (that is not leaving) joins
        largest = max(workers, key=lambda w: (w.memory_total, w.worker_id))
        shm = self.host_shm()
        free = {w.worker_id: self.free(w, shm) for w in workers}
        most_free = max(free.values())
        for request in list(islice(self.waiting.values(), BACKFILL)):
            hit = bool(request.cached_output) and any(
                w in self.workers for w in self.holders(request.cached_output)
            )
            # Cheap checks first: its own reservation alone rules most workers out.
            if not hit and request.reservation <= largest.memory_total and (
                request.reservation > most_free
            ):
                continue  # fits nowhere now: it waits
            view = self._view(request)
            if not hit and all(self.need(request, w, view) > w.memory_total for w in workers):
                del self.waiting[request.request_id]
                out.append(Fail(
                    request.request_id,
                    f"{request.label} reserves {_size(self.need(request, largest, view))}, more than "
                    f"any worker has: the largest is {largest.worker_id} with "
                    f"{_size(largest.memory_total)} (declare less with "
                    f"@faas.model(memory=...) or start a larger worker)",
                ))
                continue
            counted = [w for w in workers if w.cpus]
            if not hit and request.cpus and counted and all(
                request.cpus > w.cpus for w in counted
            ):
                most = max(counted, key=lambda w: (w.cpus, w.worker_id))
                del self.waiting[request.request_id]
                out.append(Fail(
                    request.request_id,
                    f"{request.label} reserves {request.cpus} cores, more than any worker has: "
                    f"the largest is {most.worker_id} with {most.cpus} (declare fewer with "
                    f"@faas.model(cpus=...) or start a larger worker)",
                ))
                continue
            best: Worker | None = None
            best_key: Any = None
            for w in workers:
                if self.need(request, w, view) > free[w.worker_id]:
                    continue
                if self.cores(request, w, view) > w.cpus_free:
                    continue
                # Then the least busy: work with nothing to stay near spreads out.
                key = (
                    self.affinity(request, w, view), -len(w.running), w.cpus_free,
                    free[w.worker_id], w.worker_id,
                )
                if best_key is None or key > best_key:
                    best, best_key = w, key
            if best is None:
                continue  # waits for memory; smaller requests behind it may fit
            reserved = self.need(request, best, view)
            cores = self.cores(request, best, view)
            del self.waiting[request.request_id]
            best.reserved += reserved
            best.cpus_reserved += cores
            best.running.add(request.request_id)
            free[best.worker_id] -= reserved
            most_free = max(free.values())
            self.placed[request.request_id] = (request, best.worker_id, reserved, cores)
            self.decisions += 1
            out.append(Start(request.request_id, best.worker_id, reserved, cores))
        return out


__all__ = ["Fail", "Instruction", "Lost", "Placement", "Request", "Start", "Worker"]
