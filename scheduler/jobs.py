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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import msgspec

from faas.protocol.errors import InvalidInput, NotFound
from faas.protocol.messages import Error, LogLine, RunFinished, TaskEvent
from faas.protocol.replies import JobEvent, JobRecord, JobSummary, NodeRecord, RunStatus
from faas.protocol.sizes import format_size

log = logging.getLogger(__name__)

_RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
# A page of `faas job logs`: well under the largest frame (protocol.sizes).
PAGE_BYTES = 4 * 2**20
# What a run may print before its later lines are dropped (faasd scheduler --run-log-limit).
RUN_LOG_LIMIT = 16 * 2**20


class LogBudget:
    """The output a run may still print. Past its limit a run gets one line saying so, on
    its record and to its clients alike, and its later lines are dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.dropped = 0

    def admit(self, msg: LogLine) -> LogLine | None:
        """``msg``, the line saying the limit was reached, or None (dropped)."""
        if self.dropped:
            self.dropped += 1
            return None
        size = len(msg.line.encode()) + 1
        if size <= self.left:
            self.left -= size
            return msg
        self.dropped = 1
        return LogLine(
            run_id=msg.run_id, node=msg.node, stream="stderr", time=msg.time,
            line=f"[faas] this run printed more than {format_size(self.limit)}: its later output "
                 "is dropped (faasd scheduler --run-log-limit sets the limit)",
        )


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
        self._records: dict[str, JobRecord] = {}
        self._logs: dict[str, IO[bytes]] = {}
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

    def _save(self, record: JobRecord) -> None:
        """Have the writer write ``record`` as it is now (once, however often it changes
        before the writer gets to it)."""
        run_id = record.run_id
        first = run_id not in self._pending
        self._pending[run_id] = msgspec.json.encode(record)
        if first:
            self._writer.put(self._write_pending, run_id, self._dir(run_id) / "run.json")

    def _write_pending(self, run_id: str, path: Path) -> None:
        _replace(path, self._pending.pop(run_id))

    def _append(self, out: IO[bytes], event: JobEvent) -> None:
        self._writer.put(out.write, msgspec.json.encode(event) + b"\n")

    def _fail_interrupted(self) -> None:
        # Plain JSON, not JobRecord: a record of any shape left running is marked failed.
        for path in self.root.glob("*/run.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("status") == "running":
                record.update(status="failed", finished=time.time(),
                              error="the scheduler stopped while the run was in flight")
                _replace(path, msgspec.json.encode(record))
                log.info("run %s was in flight when the scheduler stopped: marked failed",
                         path.parent.name)

    # -- recording -------------------------------------------------------------

    def start(self, run_id: str, *, ref: str, namespace: str, project: str,
              nodes: Iterable[str] = (), shape: dict[str, tuple[str, list[str]]] | None = None,
              user: str | None = None) -> None:
        """Record a run that begins; ``shape``: each node's kind and the nodes it reads."""
        d = self._dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        shape = shape or {}
        record = JobRecord(run_id=run_id, started=time.time(), ref=ref, namespace=namespace,
                           project=project, user=user, nodes={
                               n: NodeRecord(kind=shape.get(n, ("", []))[0],
                                             depends_on=shape.get(n, ("", []))[1])
                               for n in nodes})
        self._records[run_id] = record
        self._logs[run_id] = open(d / "events.jsonl", "ab", buffering=0)
        # Written at once (once per run, nothing of it pending): `faas job ls` in another
        # process sees the run from the moment it is accepted.
        _replace(d / "run.json", msgspec.json.encode(record))

    def record(self, msg: Any) -> None:
        """Keep one event or output line of a running run."""
        run_id = getattr(msg, "run_id", "")
        out = self._logs.get(run_id)
        if out is None:
            return
        if isinstance(msg, LogLine):
            self._append(out, JobEvent(t=msg.time, node=msg.node, stream=msg.stream, line=msg.line))
        elif isinstance(msg, TaskEvent):
            self._append(out, JobEvent(t=msg.time, node=msg.node, state=msg.state,
                                       worker=msg.worker, error=msg.error, passed=msg.passed))
            record = self._records[run_id]
            before = record.nodes.get(msg.node) or NodeRecord()
            when = msg.time or time.time()
            record.nodes[msg.node] = NodeRecord(
                # Absent values are JSON nulls, never empty strings.
                state=msg.shown, worker=msg.worker or None, rows=msg.rows,
                error=msg.error or None, cached=msg.cached, columns_cached=msg.columns_cached,
                columns_read=msg.columns_read,
                phases={k: round(v, 6) for k, v in msg.phases.items()}, inputs=msg.inputs,
                kind=before.kind, depends_on=before.depends_on,
                started=before.started if before.started is not None or msg.state != "running"
                else when,
                finished=when if msg.state in ("done", "failed", "cancelled", "warning")
                else before.finished,
            )
            if msg.state != "queued":
                self._save(record)

    def finish(self, run_id: str, result: RunFinished | None, status: RunStatus = "failed") -> None:
        record = self._records.pop(run_id, None)
        out = self._logs.pop(run_id, None)
        if out is not None:
            self._writer.put(out.close)
        if record is None:
            return
        record.finished = time.time()
        if result is not None:
            record.status = result.status
            record.commit = result.commit or None
            record.tables = result.tables
            record.branch = result.branch or None
            record.seconds = result.seconds
            record.error = result.error.message if result.error else None
            record.error_kind = result.error.kind if result.error else None
        else:
            record.status = status
            record.error = "the scheduler stopped while the run was in flight"
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

    def get(self, run_id: str) -> JobRecord:
        """A run's summary (a copy: a running run's record goes on changing).

        Raises:
            NotFound: no such run. InvalidInput: not a run id, or its record is unreadable.
        """
        if run_id in self._records:
            return msgspec.structs.replace(self._records[run_id])
        self.flush()
        path = self._dir(run_id) / "run.json"
        try:
            return _read_record(path)
        except FileNotFoundError:
            raise NotFound(f"no run {run_id!r} (see 'faas job ls')") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidInput(f"the record of run {run_id!r} ({path}) is unreadable: {exc}") from None

    def recent(self, limit: int = 20) -> list[JobSummary]:
        """The ``limit`` runs started last, newest first (their summaries)."""
        records = []
        self.flush()
        for path in self.root.glob("*/run.json"):
            try:
                records.append(_read_record(path))
            except (OSError, msgspec.ValidationError, msgspec.DecodeError):
                continue
        records.sort(key=lambda r: r.started or 0, reverse=True)
        return [
            JobSummary(**{f: getattr(r, f) for f in JobSummary.__struct_fields__})
            for r in records[:limit]
        ]

    def events(self, run_id: str) -> list[JobEvent]:
        """Every event and output line of a run, in order."""
        out: list[JobEvent] = []
        offset: int | None = 0
        while offset is not None:
            page, offset = self.page(run_id, offset)
            out += page
        return out

    def page(self, run_id: str, offset: int = 0,
             max_bytes: int = PAGE_BYTES) -> tuple[list[JobEvent], int | None]:
        """A run's events from byte ``offset`` of its event file, about ``max_bytes`` of
        them (at least one), and where the next page starts (None: that was the last)."""
        self.get(run_id)  # NotFound for unknown runs
        self.flush()
        path = self._dir(run_id) / "events.jsonl"
        out: list[JobEvent] = []
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return out, None
        with f:
            f.seek(max(0, offset))
            taken = 0
            for line in f:
                if taken and taken + len(line) > max_bytes:
                    return out, offset + taken
                taken += len(line)
                try:
                    out.append(_EVENT.decode(line))
                except (msgspec.ValidationError, msgspec.DecodeError):
                    continue  # a line cut short by a crash
        return out, None

    def replay(self, run_id: str) -> list[LogLine | TaskEvent]:
        """A run's recorded events and output lines, as the messages they were."""
        out: list[LogLine | TaskEvent] = []
        for e in self.events(run_id):
            if e.line is not None:
                out.append(LogLine(run_id=run_id, node=e.node, stream=e.stream or "stdout",
                                   line=e.line, time=e.t))
            elif e.state is not None:
                out.append(TaskEvent(run_id=run_id, node=e.node, state=e.state,
                                     worker=e.worker or "", time=e.t, error=e.error or "",
                                     passed=e.passed))
        return out

    def outcome(self, run_id: str) -> RunFinished:
        """How a finished run ended, as the message its client was sent."""
        r = self.get(run_id)
        error = None
        if r.error:
            error = Error(kind=r.error_kind or "FaasError", message=r.error)
        assert r.status != "running", run_id
        return RunFinished(
            run_id=run_id, status=r.status, commit=r.commit or "", tables=r.tables, error=error,
            branch=r.branch or "",
            seconds=r.seconds or ((r.finished or 0) - (r.started or 0)),
        )


_EVENT = msgspec.json.Decoder(JobEvent)
_RECORD = msgspec.json.Decoder(JobRecord)


def _read_record(path: Path) -> JobRecord:
    return _RECORD.decode(path.read_bytes())
