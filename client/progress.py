"""What `faas submit` shows while a run goes: a live table of functions on a terminal,
plain timestamped lines otherwise. Output lines of functions print as they arrive,
tagged with the function's name, in both."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from faas.protocol.messages import LogLine, TaskEvent

STATE_STYLE = {
    "queued": "dim", "running": "cyan", "ready": "cyan", "done": "green", "passed": "green", "warning": "yellow",
    "retrying": "yellow", "failed": "bold red", "cancelled": "red",
}


def _columns(ev: TaskEvent) -> str:
    """How many source columns came from the worker's column cache, if any."""
    if not ev.columns_cached:
        return ""
    total = len(ev.columns_cached) + len(ev.columns_read)
    return f" ({len(ev.columns_cached)}/{total} columns cached)"


class PlainView:
    """One line per event, for pipes, files and CI logs."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, ev: Any) -> None:
        if isinstance(ev, LogLine):
            print(f"  [{ev.node}] {ev.line}", file=self.out, flush=True)
        elif isinstance(ev, TaskEvent) and ev.state != "queued":
            model_done = ev.state in ("done", "ready") and ev.passed is None
            extra = f" ({ev.rows} rows)" if model_done and not ev.cached else ""
            extra += " (from cache)" if ev.cached else ""
            extra += _columns(ev)
            extra += ", readers may start; writing its table" if ev.state == "ready" else ""
            extra += f" on {ev.worker}" if ev.state == "running" else ""
            extra += f" (environment {ev.env})" if ev.state == "running" and ev.env in ("cached", "built") else ""
            extra += f": {ev.error}" if ev.error and ev.state == "retrying" else ""
            extra += f": {ev.error}" if ev.error and ev.state == "warning" and ev.passed is None else ""
            print(f"{time.strftime('%H:%M:%S')} {ev.node}: {ev.shown}{extra}", file=self.out, flush=True)


class LiveView:
    """A table of every function of the run, redrawn in place, with lines printed above it."""

    def __init__(self, run_id: str, nodes: list[str], console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.run_id = run_id
        self.console = console or Console(stderr=True)
        self.rows: dict[str, dict[str, Any]] = {n: {"state": "queued"} for n in nodes}
        self.live = Live(self.render(), console=self.console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self.render())
        self.live.__exit__(None, None, None)

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"run {self.run_id}", title_justify="left", expand=False)
        for col in ("function", "state", "worker", "env", "rows", "time"):
            table.add_column(col)
        now = time.monotonic()
        for name, row in self.rows.items():
            started, ended = row.get("started"), row.get("ended")
            secs = f"{(ended or now) - started:.1f}s" if started else ""
            state = row["state"] + (f": {row['error']}" if row.get("error") else "")
            table.add_row(name, Text(state, style=STATE_STYLE.get(row["state"], "")),
                          row.get("worker", ""), row.get("env", ""), str(row.get("rows", "")), secs)
        return table

    def update(self, ev: Any) -> None:
        if isinstance(ev, LogLine):
            from rich.text import Text

            # A function's output is shown as it is: never read as markup.
            self.live.console.print(Text.assemble((f"[{ev.node}] ", "dim"), ev.line), highlight=False)
        elif isinstance(ev, TaskEvent):
            row = self.rows.setdefault(ev.node, {})
            row["state"] = ev.shown
            if ev.worker:
                row["worker"] = ev.worker
            if ev.env in ("cached", "built"):
                row["env"] = ev.env
            if ev.state == "running":
                row.setdefault("started", time.monotonic())
            if ev.state in ("done", "failed", "cancelled", "warning"):
                row["ended"] = time.monotonic()
            if ev.state == "done" and ev.passed is None:
                row["rows"] = ev.rows
                if ev.cached:
                    row["env"] = "from cache"
                elif ev.columns_cached:
                    row["env"] = (row.get("env", "") + _columns(ev)).strip()
            row["error"] = (
                ev.error if ev.state in ("warning", "retrying", "failed") and ev.passed is None else ""
            )
        self.live.update(self.render())


def view_for(run_id: str, nodes: list[str], *, live: bool | None = None) -> PlainView | LiveView:
    """A live table on a terminal, plain lines elsewhere."""
    if live is None:
        live = sys.stderr.isatty()
    return LiveView(run_id, nodes) if live else PlainView()
