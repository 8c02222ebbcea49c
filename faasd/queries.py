"""A SQL query a worker runs for the scheduler (``faas query``), and stopping one.

The query reads each table it names as Arrow record batches, then runs in DuckDB. It can
be stopped from the event loop at any point (its client went away, or it ran past its
time): between two batches of a scan, or inside DuckDB (``interrupt``).
"""

from __future__ import annotations

import threading
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

    def run(self) -> tuple[bytes, int]:
        """The result as an Arrow IPC stream, and its rows.

        Raises:
            QueryStopped: :meth:`stop` was called.
            InvalidInput: bad SQL, or a result larger than the task allows.
            NotFound, StorageError: as the scans and the query raise them.
        """
        import pyarrow as pa

        from faas.store.query import query_tables
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
        try:
            result = query_tables(self.msg.sql, tables, connected=self._connected)
        except FaasError:
            self._check()  # an interrupted query fails inside DuckDB: say it was stopped
            raise
        self._check()
        limit = self.msg.max_result_bytes
        if limit and result.nbytes > limit:
            raise InvalidInput(
                f"the query's result is {format_size(result.nbytes)} ({result.num_rows:,} rows), "
                f"more than the {format_size(limit)} a query may return: add a LIMIT, or "
                "aggregate (faasd scheduler --query-result-limit sets the limit)"
            )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, result.schema) as writer:
            writer.write_table(result)
        return sink.getvalue().to_pybytes(), result.num_rows
