"""A SQL query a worker runs for the scheduler (``faas query``), and stopping one.

The query reads each table it names as Arrow record batches, then runs in DuckDB, whose
result is read a batch at a time and sent on as it comes: each batch becomes a piece of
the result (an Arrow IPC stream of its own), handed to ``emit``. ``emit`` blocks while
the scheduler is ``window`` pieces behind (it sends a credit for each piece its client
took), so a slow client slows the query instead of filling anyone's memory. The result
is capped at ``max_result_bytes``, counted as it goes.

A query can be stopped from the event loop at any point (its client went away, or it ran
past its time): between two batches of a scan or of the result, inside DuckDB
(``interrupt``), or while it waits for a credit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from faas.protocol.errors import FaasError, InvalidInput
from faas.protocol.sizes import format_size
from faas.protocol.worker_messages import QueryTask


class QueryStopped(FaasError):
    """The scheduler stopped the query before it ended."""


class Query:
    """One query: :meth:`run` in a worker thread, :meth:`stop` from anywhere."""

    def __init__(self, msg: QueryTask) -> None:
        self.msg = msg
        self.stopped = threading.Event()
        self._credits = threading.Semaphore(max(1, msg.window))
        self._lock = threading.Lock()
        self._con: Any = None

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            if self._con is not None:
                self._con.interrupt()

    def _connected(self, con: Any) -> None:
        with self._lock:
            self._con = con
            if self.stopped.is_set():
                con.interrupt()

    def _check(self) -> None:
        if self.stopped.is_set():
            raise QueryStopped(f"query {self.msg.task_id} was stopped")

    def credit(self) -> None:
        """The scheduler took one more piece: one more may be sent."""
        self._credits.release()

    def run(self, emit: Callable[[Any, int], None]) -> tuple[int, int]:
        """Run the query, handing each piece of the result (an Arrow IPC stream as a
        buffer, and its rows) to ``emit``, from this thread. Returns the rows and bytes
        sent.

        Raises:
            QueryStopped: :meth:`stop` was called.
            InvalidInput: bad SQL, or a result larger than the task allows.
            NotFound, StorageError: as the scans and the query raise them.
        """
        import pyarrow as pa

        from faas.store.query import query_batches
        from faas.store.scan import open_metadata, scan_table

        tables = {}
        for name, s in self.msg.tables.items():
            reader = scan_table(open_metadata(s.metadata_location), snapshot_id=s.snapshot_id,
                                name=s.key, stream=True)
            batches = []
            for batch in reader:  # a batch at a time, so a stop ends the scan
                self._check()
                batches.append(batch)
            tables[name] = pa.Table.from_batches(batches, schema=reader.schema)
        limit = self.msg.max_result_bytes
        rows = nbytes = 0
        try:
            with query_batches(self.msg.sql, tables, connected=self._connected) as result:
                for batch in result:
                    self._check()
                    if not batch.num_rows:
                        continue
                    piece = _ipc(result.schema, [batch])
                    if limit and nbytes + piece.size > limit:
                        raise InvalidInput(
                            f"the query's result is more than the {format_size(limit)} a query "
                            f"may return (past {rows + batch.num_rows:,} rows): add a LIMIT, or "
                            "aggregate (faasd scheduler --query-result-limit sets the limit)"
                        )
                    self._send(emit, piece, batch.num_rows)
                    rows, nbytes = rows + batch.num_rows, nbytes + piece.size
                if not rows:  # the schema alone: an empty result still has columns
                    piece = _ipc(result.schema, [])
                    self._send(emit, piece, 0)
                    nbytes += piece.size
        except FaasError:
            self._check()  # an interrupted query fails inside DuckDB: say it was stopped
            raise
        self._check()
        return rows, nbytes

    def _send(self, emit: Callable[[Any, int], None], piece: Any, rows: int) -> None:
        """Wait for a credit (or a stop), then emit."""
        while not self._credits.acquire(timeout=0.1):
            self._check()
        self._check()
        emit(piece, rows)


def _ipc(schema: Any, batches: list[Any]) -> Any:
    """An Arrow IPC stream of ``batches`` (schema first), as one buffer."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()
