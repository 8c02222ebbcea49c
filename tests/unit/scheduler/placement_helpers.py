"""Shared by the placement tests: requests, a cluster of idle workers, and what came out."""

from __future__ import annotations

from dataclasses import dataclass

from faas.scheduler.placement import Placement, Request, Start

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
