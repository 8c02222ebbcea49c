"""Records of runs, kept under the scheduler's home so they outlive the client and the daemon.

``HOME/runs/<run id>/run.json`` holds the run's summary (status, times, ref, node
states); ``events.jsonl`` every task event and output line, in order, as they
happened. A run still marked running when the scheduler starts was cut off by
a restart: it is marked failed.

The event loop never writes a file: it keeps a running run's record in memory and
hands the writes, in order, to one writer thread (a summary that changes faster than it
is written is written once, as it is by then). Reading from disk first waits for the
writes asked for before it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgspec

from faas.protocol.errors import InvalidInput, NotFound
from faas.protocol.messages import Error, LogLine, RunFinished, TaskEvent

log = logging.getLogger(__name__)

_RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def _replace(path: Path, record: bytes) -> None:
    """Write a run's summary (JSON) at ``path`` whole: readers never see half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(record, indent=1))
    os.replace(tmp, path)


class _Writer:
    """One thread doing file writes in the order they are asked for."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="faas-jobs", daemon=True)
        self._thread.start()

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def flush(self) -> None:
        """Return once every write asked for so far is done."""
        done = threading.Event()
        self.put(done.set)
        done.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except OSError as exc:  # a full disk, say: the run goes on, its record lags
                log.warning("could not write a run record: %s", exc)


class JobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        self._logs: dict[str, IO[str]] = {}
        # The latest summary of a run not written yet (the writer takes it when it comes to it).
        self._pending: dict[str, bytes] = {}
        self._writer = _Writer()
        # Several schedulers may share a home (a hand-started one beside the resident
        # daemon, say). Only a scheduler alone on it may call a run that is still marked
        # running interrupted.
        self._lock = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        if alone:
            self._fail_interrupted()
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        # Every scheduler holds it shared while it lives, so the next one can tell.
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_SH)

    def _dir(self, run_id: str) -> Path:
        if not run_id or set(run_id) - _RUN_ID_CHARS:
            raise InvalidInput(f"{run_id!r} is not a run id (like run-20260101-120000-ab12cd)")
        return self.root / run_id

    def _write(self, record: dict[str, Any], path: Path | None = None) -> None:
        _replace(path or self._dir(record["run_id"]) / "run.json", msgspec.json.encode(record))

    def _save(self, record: dict[str, Any]) -> None:
        """Have the writer write ``record`` as it is now (once, however often it changes
        before the writer gets to it)."""
        run_id = record["run_id"]
        first = run_id not in self._pending
        self._pending[run_id] = msgspec.json.encode(record)
        if first:
            self._writer.put(self._write_pending, run_id, self._dir(run_id) / "run.json")

    def _write_pending(self, run_id: str, path: Path) -> None:
        _replace(path, self._pending.pop(run_id))

    def _append(self, out: IO[str], event: dict[str, Any]) -> None:
        self._writer.put(out.write, json.dumps(event) + "\n")

    def _fail_interrupted(self) -> None:
        for path in self.root.glob("*/run.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("status") == "running":
                record.update(status="failed", finished=time.time(),
                              error="the scheduler stopped while the run was in flight")
                self._write(record, path)
                log.info("run %s was in flight when the scheduler stopped: marked failed",
                         path.parent.name)

    # -- recording -------------------------------------------------------------

    def start(self, run_id: str, **meta: Any) -> None:
        d = self._dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        record = {"run_id": run_id, "status": "running", "started": time.time(), "finished": None,
                  "error": None, "commit": None, "tables": [], "branch": None, "nodes": {}, **meta}
        self._records[run_id] = record
        self._logs[run_id] = open(d / "events.jsonl", "a", buffering=1)
        # Written at once (once per run, nothing of it pending): `faas job ls` in another
        # process sees the run from the moment it is accepted.
        self._write(record)

    def record(self, msg: Any) -> None:
        """Keep one event or output line of a running run."""
        run_id = getattr(msg, "run_id", "")
        out = self._logs.get(run_id)
        if out is None:
            return
        if isinstance(msg, LogLine):
            self._append(out, {"t": msg.time, "node": msg.node, "stream": msg.stream,
                               "line": msg.line})
        elif isinstance(msg, TaskEvent):
            event = {"t": msg.time, "node": msg.node, "state": msg.state, "worker": msg.worker,
                     "error": msg.error}
            if msg.passed is not None:
                event["passed"] = msg.passed
            self._append(out, event)
            record = self._records[run_id]
            record["nodes"][msg.node] = {
                # Absent values are JSON nulls, never empty strings.
                "state": msg.shown, "worker": msg.worker or None, "rows": msg.rows,
                "error": msg.error or None,
                "cached": msg.cached, "columns_cached": msg.columns_cached,
                "columns_read": msg.columns_read,
                "phases": {k: round(v, 6) for k, v in msg.phases.items()},
                "inputs": [msgspec.to_builtins(i) for i in msg.inputs],
            }
            if msg.state != "queued":
                self._save(record)

    def finish(self, run_id: str, result: RunFinished | None, status: str = "") -> None:
        record = self._records.pop(run_id, None)
        out = self._logs.pop(run_id, None)
        if out is not None:
            self._writer.put(out.close)
        if record is None:
            return
        record["finished"] = time.time()
        if result is not None:
            record.update(status=result.status, commit=result.commit or None,
                          tables=result.tables, branch=result.branch or None, seconds=result.seconds,
                          error=result.error.message if result.error else None,
                          error_kind=result.error.kind if result.error else None)
        else:
            record.update(status=status or "failed",
                          error="the scheduler stopped while the run was in flight")
        self._save(record)

    def flush(self) -> None:
        """Return once every record and line kept so far is on disk."""
        self._writer.flush()

    def close(self) -> None:
        for run_id in list(self._logs):
            self.finish(run_id, None, "failed")
        self._writer.close()
        self._lock.close()

    # -- reading ---------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any]:
        if run_id in self._records:
            return dict(self._records[run_id])
        self.flush()
        path = self._dir(run_id) / "run.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise NotFound(f"no run {run_id!r} (see 'faas job ls')") from None

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The ``limit`` runs started last, newest first (their summaries)."""
        records = []
        self.flush()
        for path in self.root.glob("*/run.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        records.sort(key=lambda r: r.get("started") or 0, reverse=True)
        return [
            {k: r.get(k) for k in ("run_id", "status", "started", "finished", "ref", "namespace",
                                   "project", "commit", "error")}
            for r in records[:limit]
        ]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        self.get(run_id)  # NotFound for unknown runs
        self.flush()
        path = self._dir(run_id) / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return out

    def replay(self, run_id: str) -> list[LogLine | TaskEvent]:
        """A run's recorded events and output lines, as the messages they were."""
        out: list[LogLine | TaskEvent] = []
        for e in self.events(run_id):
            if "line" in e:
                out.append(LogLine(run_id=run_id, node=e["node"], stream=e.get("stream", "stdout"),
                                   line=e["line"], time=e.get("t") or 0.0))
            elif "state" in e:
                out.append(TaskEvent(run_id=run_id, node=e["node"], state=e["state"],
                                     worker=e.get("worker") or "", time=e.get("t") or 0.0,
                                     error=e.get("error") or "", passed=e.get("passed")))
        return out

    def outcome(self, run_id: str) -> RunFinished:
        """How a finished run ended, as the message its client was sent."""
        r = self.get(run_id)
        error = None
        if r.get("error"):
            error = Error(kind=r.get("error_kind") or "FaasError", message=r["error"])
        return RunFinished(
            run_id=run_id, status=r["status"], commit=r.get("commit") or "",
            tables=r.get("tables") or [], error=error, branch=r.get("branch") or "",
            seconds=r.get("seconds") or ((r.get("finished") or 0) - (r.get("started") or 0)),
        )
