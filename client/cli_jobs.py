"""``faas job``: runs past and present, their logs, and cancelling one."""

from __future__ import annotations

import datetime as dt
import json
import sys

import msgspec
import typer

from faas.client.cli_common import app, group, json_flag, print_json, run
from faas.client.client import Client
from faas.protocol.replies import JobEvent, NodeRecord

job_app = group("Runs: list, inspect, replay logs, cancel.")
app.add_typer(job_app, name="job")


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


@job_app.command("ls")
def job_ls(
    n: int = typer.Option(20, "-n", help="how many runs"),
    as_json: bool = json_flag(),
) -> None:
    """Recent runs, newest first."""
    jobs = run(lambda c: c.jobs(n))
    if as_json:
        print_json(jobs)
        return
    for j in jobs:
        secs = f"{j.finished - (j.started or j.finished):.1f}s" if j.finished else "running"
        typer.echo(f"{j.run_id}  {j.status:<9} {_when(j.started)}  {secs:>8}  "
                   f"{j.namespace}@{j.ref}")


@job_app.command("get")
def job_get(run_id: str, as_json: bool = json_flag()) -> None:
    """One run: status, ref, commit, and each function's state."""
    j = run(lambda c: c.job(run_id))
    if as_json:
        print_json(j)
        return
    typer.echo(f"{j.run_id}: {j.status} (namespace {j.namespace}, ref {j.ref})")
    typer.echo(f"started {_when(j.started)}, finished {_when(j.finished)}")
    if j.commit:
        typer.echo(f"commit {j.commit[:12]}: {', '.join(j.tables)}")
    if j.error:
        typer.echo(f"error: {j.error}")
    for name, node in j.nodes.items():
        typer.echo(f"  {name}: {node.state}" + (f" ({node.error})" if node.error else ""))
    timed = {name: node for name, node in j.nodes.items() if node.phases}
    if timed:
        typer.echo("")
        _print_phases(timed, color=sys.stdout.isatty())


# Phases of a function in the order they happen, with the letter that draws each.
PHASES = (
    ("queued", "q"), ("scan", "r"), ("environment", "e"), ("process_start", "s"), ("inputs", "i"),
    ("waiting", "w"), ("code", "c"), ("output_shm", "o"), ("output_parquet", "p"), ("commit", "m"),
)
_ANSI = {"q": 90, "r": 94, "e": 35, "s": 33, "i": 34, "w": 37, "c": 32, "o": 36, "p": 31, "m": 95}
BAR_WIDTH = 40


def _print_phases(nodes: dict[str, NodeRecord], *, color: bool) -> None:
    """Seconds per phase per function, then how each input was read, then a bar each."""
    width = max(len(n) for n in nodes)
    head = "".join(f"{p[:9]:>10}" for p, _ in PHASES)
    typer.echo(f"{'seconds':<{width}}{head}{'total':>10}")
    totals = {}
    for name, node in nodes.items():
        ph = node.phases
        totals[name] = sum(ph.get(p, 0.0) for p, _ in PHASES)
        cells = "".join(f"{ph[p]:>10.3f}" if p in ph else f"{'-':>10}" for p, _ in PHASES)
        typer.echo(f"{name:<{width}}{cells}{totals[name]:>10.3f}")
    for name, node in nodes.items():
        for i in node.inputs:
            read = ("streamed, opened" if i.streamed
                    else f"{i.rows:,} rows, {i.nbytes / 2**20:,.1f} MiB")
            typer.echo(f"  {name}.{i.param} <- {i.source} {i.name}: {read} in {i.seconds:.3f}s")
    longest = max(totals.values()) or 1.0
    typer.echo("")
    for name, node in nodes.items():
        bar = ""
        for phase, letter in PHASES:
            cells = round(BAR_WIDTH * node.phases.get(phase, 0.0) / longest)
            if cells:
                bar += f"\x1b[{_ANSI[letter]}m{letter * cells}\x1b[0m" if color else letter * cells
        typer.echo(f"{name:<{width}} |{bar}")
    typer.echo(" " * width + "  " + ", ".join(f"{letter} {phase}" for phase, letter in PHASES))


@job_app.command("logs")
def job_logs(
    run_id: str,
    follow: bool = typer.Option(
        False, "--follow", "-f",
        help="then stream the rest live, and exit with the run's status (Ctrl-C stops "
        "following, not the run)",
    ),
    as_json: bool = json_flag(),
) -> None:
    """Replay a run's output lines and events, as they happened."""
    if follow:
        _follow(run_id, as_json)
        return
    events = run(lambda c: c.job_logs(run_id))
    if as_json:
        print_json(events)
        return
    for e in events:
        _print_event(e)


def _print_event(e: JobEvent) -> None:
    stamp = dt.datetime.fromtimestamp(e.t).strftime("%H:%M:%S") if e.t else "--:--:--"
    if e.line is not None:
        typer.echo(f"{stamp} [{e.node}] {e.line}")
    elif e.state != "queued":
        if e.passed is not None and e.state in ("done", "warning"):  # an expectation
            typer.echo(f"{stamp} {e.node}: {'passed' if e.passed else 'failed'}")
            return
        typer.echo(f"{stamp} {e.node}: {e.state}" + (f": {e.error}" if e.error else ""))


def _follow(run_id: str, as_json: bool) -> None:
    from faas.protocol.messages import LogLine, RunFinished, TaskEvent

    async def work(c: Client) -> RunFinished:
        followed = await c.follow(run_id)
        async for ev in followed:
            if isinstance(ev, LogLine):
                e = JobEvent(t=ev.time, node=ev.node, stream=ev.stream, line=ev.line)
            elif isinstance(ev, TaskEvent):
                e = JobEvent(t=ev.time, node=ev.node, state=ev.state, worker=ev.worker,
                             error=ev.error, passed=ev.passed)
            else:
                continue
            if as_json:
                typer.echo(msgspec.json.encode(e).decode())
            else:
                _print_event(e)
        return await followed.wait()  # raises the run's error

    result = run(work)
    if as_json:
        typer.echo(json.dumps({"run_id": result.run_id, "status": result.status,
                               "commit": result.commit or None, "tables": result.tables}))
    else:
        typer.echo(f"run {result.run_id} succeeded in {result.seconds:.2f}s"
                   + (f"; committed {', '.join(result.tables)} at {result.commit[:12]}"
                      if result.commit else ""))


@job_app.command("cancel")
def job_cancel(run_id: str, as_json: bool = json_flag()) -> None:
    """Cancel a running run: its functions are stopped and nothing is published."""
    out = run(lambda c: c.cancel_run(run_id))
    if as_json:
        print_json(out)
    else:
        typer.echo(f"cancelled {run_id}")
