"""Catalog requests a worker does the work of: importing files and running queries.

The scheduler sends one task to the worker with the most free memory. An import has one
answer. A query's result streams back in pieces, each passed on to the client as it
comes; the worker stays at most QUERY_WINDOW pieces ahead (a QueryCredit for each piece
sent on), so the scheduler holds a few pieces per query, never a whole result. A query
is bounded: it stops (on the worker too) when it runs past its time, when its client
hangs up, or when its result grows past what a query may return.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from faas.protocol.errors import (
    AlreadyExists,
    ConnectionClosed,
    InvalidInput,
    NotFound,
    TimedOut,
    from_wire,
)
from faas.protocol.framing import encode
from faas.protocol.messages import BulkHeader, ImportTable, Query, ScanInput
from faas.protocol.replies import Imported, ImportPlan, QueryFinished
from faas.protocol.worker_messages import (
    CancelTask,
    ImportDone,
    ImportPlanned,
    ImportTask,
    QueryCredit,
    QueryDone,
    QueryPart,
    QueryTask,
    TaskFailed,
)
from faas.scheduler import catalog_ops
from faas.scheduler.analysis import Analyzer
from faas.store.transaction import missing_namespace

if TYPE_CHECKING:
    from faas.scheduler.server import WorkerHandle


class QueryClient(Protocol):
    """Who a query's result goes to: a client's connection, or the console's reader of it."""

    def hung_up(self) -> bool: ...

    async def send(self, msg: Any) -> None: ...

    async def send_raw(self, header: bytes, data: bytes) -> None: ...

T = TypeVar("T")

# Seconds a query may run unless it asks for another bound (--query-timeout).
QUERY_TIMEOUT = 300.0
# The most bytes (Arrow IPC) a query's result may have (--query-result-limit).
QUERY_RESULT_LIMIT = 1 << 30
# Pieces of a query's result a worker may send before the scheduler passed them on.
QUERY_WINDOW = 4
# How often a running query looks whether its client is still there.
HANGUP_POLL = 0.25


class HelperTasks:
    """Imports and queries, run on a worker. The scheduler provides its state."""

    analysis: Analyzer
    lakehouse: Any
    query_timeout: float
    query_result_limit: int

    if TYPE_CHECKING:
        async def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

        async def choose_worker(self) -> WorkerHandle: ...

        def watch_task(self, task_id: str, worker: WorkerHandle) -> asyncio.Queue[Any]: ...

        def unwatch_task(self, task_id: str) -> None: ...

        def background(self, coro: Any) -> None: ...

    async def _worker_task(self, msg: Any) -> Any:
        """Send a helper task to some worker and wait for its one answer. Cancelled, it
        tells the worker to stop the task."""
        worker = await self.choose_worker()
        queue = self.watch_task(msg.task_id, worker)
        try:
            await worker.conn.send(msg)
            reply = await queue.get()
        except asyncio.CancelledError:
            self.background(_quietly(worker.conn.send(CancelTask(task_id=msg.task_id))))
            raise
        finally:
            self.unwatch_task(msg.task_id)
        if isinstance(reply, TaskFailed):
            raise from_wire(reply.error.kind, reply.error.message, reply.error.detail)
        return reply

    async def _import(self, request: ImportTable, user: str = "") -> Imported | ImportPlan:
        lh = self.lakehouse
        namespace = request.key.rpartition(".")[0]
        if not namespace:
            raise InvalidInput(f"table {request.key!r} needs a namespace: use NAMESPACE.TABLE")
        if namespace not in await self.store_call(lh.namespaces, request.ref):
            raise missing_namespace(namespace, request.ref)
        tx = await self.store_call(lh.begin, request.ref, user or "faas")
        # Only an import writes files: a plan writes nothing, an external table keeps its own.
        writes = not (request.plan_only or request.external or request.create_only)
        directory = await self.store_call(tx.data_location, request.key) if writes else ""
        partitioned_by = await self.store_call(_partitioning, tx, request)
        task_id = f"import-{uuid.uuid4().hex[:12]}"
        done: ImportDone | ImportPlanned = await self._worker_task(
            ImportTask(task_id=task_id, key=request.key, paths=request.paths, directory=directory,
                       format=request.format, plan=request.plan, plan_only=request.plan_only,
                       external=request.external, partitioned_by=partitioned_by,
                       create_only=request.create_only)
        )
        if isinstance(done, ImportPlanned):  # a survey: nothing was written
            return ImportPlan(key=request.key, files=done.files, columns=done.columns)
        import pyarrow as pa

        schema = pa.ipc.read_schema(pa.py_buffer(done.schema))

        def commit() -> str:
            if request.external:
                return _register_external(tx, request, done.files, schema)
            tx.add_files(request.key, done.files, schema, request.mode,
                         partitioned_by=partitioned_by)
            if request.create_only:
                return str(tx.publish(f"create {request.key}"))
            return str(tx.publish(f"import {request.key} from {len(request.paths)} files"))

        commit_hash = await self.store_call(commit)
        info = await self.store_call(lh.table_info, request.key, request.ref)
        return Imported(**catalog_ops.table_fields(info), commit=commit_hash)

    async def _query(self, conn: QueryClient, request: Query) -> None:
        names = await self.analysis.tables(request.sql)
        # The ref is checked even when the SQL reads no table: a typo must not pass.
        await self.store_call(self.lakehouse.catalog.resolve, request.ref)
        tables: dict[str, ScanInput] = {}
        for name in names:
            if "." not in name and not request.namespace:
                raise NotFound(
                    f"table {name!r} has no namespace: write NAMESPACE.{name} or pass --namespace"
                )
            key = name if "." in name else f"{request.namespace}.{name}"
            info = await self.store_call(self.lakehouse.table_info, key, request.ref)
            tables[name] = ScanInput(
                param=name, key=key, metadata_location=info.metadata_location,
                snapshot_id=info.snapshot_id,
            )
        timeout = request.timeout or self.query_timeout
        task = QueryTask(
            task_id=f"query-{uuid.uuid4().hex[:12]}", sql=request.sql, tables=tables,
            max_result_bytes=self.query_result_limit, window=QUERY_WINDOW,
        )
        loop = asyncio.get_running_loop()
        started, deadline = loop.time(), loop.time() + timeout
        worker = await self.choose_worker()
        queue = self.watch_task(task.task_id, worker)
        finished = False
        getter: asyncio.Future[Any] | None = None
        try:
            await worker.conn.send(task)
            while True:
                # The next piece, unless the time runs out or the client hangs up first
                # (seen without reading from its connection, which stays in step for the
                # next request).
                getter = getter or asyncio.ensure_future(queue.get())
                while not getter.done() and not conn.hung_up() and loop.time() < deadline:
                    await asyncio.wait({getter}, timeout=min(HANGUP_POLL, deadline - loop.time()))
                if not getter.done():
                    if conn.hung_up():
                        raise ConnectionClosed("the client went away during its query")
                    raise TimedOut(f"the query ran past its timeout of {timeout:g}s and was "
                                   "stopped (faas query --timeout sets another)")
                reply, getter = getter.result(), None
                match reply:
                    case (QueryPart(rows=rows), bytes() as data):
                        # Passed on as it comes; the worker may send one more piece.
                        await conn.send_raw(encode(BulkHeader(nbytes=len(data), rows=rows)), data)
                        await worker.conn.send(QueryCredit(task_id=task.task_id))
                    case QueryDone(rows=rows, nbytes=nbytes):
                        finished = True
                        await conn.send(QueryFinished(rows=rows, nbytes=nbytes,
                                                      seconds=round(loop.time() - started, 4)))
                        return
                    case TaskFailed(error=error):
                        finished = True
                        raise from_wire(error.kind, error.message, error.detail)
        finally:
            if getter is not None:
                getter.cancel()
            self.unwatch_task(task.task_id)
            if not finished:  # its client went, it ran out of time, or the scheduler stops
                self.background(_quietly(worker.conn.send(CancelTask(task_id=task.task_id))))


def _partitioning(tx: Any, request: ImportTable) -> str:
    """The partitions an import writes: those asked for, else the table's own (store
    thread). Checked before any file is read.

    Raises:
        InvalidInput: partitions asked of an external table (its files stay as they are),
            or a bad partitioned_by.
        AlreadyExists: faas table create of a table that exists.
    """
    from faas.store.partitions import describe_partitioning, parse_partitioning

    asked = describe_partitioning(parse_partitioning(request.partitioned_by, "--partitioned-by"))
    if request.external and asked:
        raise InvalidInput("an external table keeps its files as they are: it cannot be "
                           "partitioned by faas (--partitioned-by)")
    try:
        info = tx.table_info(request.key)
    except NotFound:
        return asked
    if request.create_only:
        raise AlreadyExists(f"table {request.key!r} already exists at {request.ref!r}: import "
                            f"into it with faas table import, or drop it first")
    return asked or info.partitioned_by


def _register_external(tx: Any, request: ImportTable, files: list[str], schema: Any) -> str:
    """An external table: the files as they are, or the Iceberg table's metadata file as
    the table; one commit. On the store's thread."""
    if tx.view.table_exists(request.key):
        raise AlreadyExists(f"table {request.key!r} already exists at ref {request.ref!r}: "
                            "drop it first, or import into it")
    (source,) = request.paths
    if files[0].endswith(".metadata.json"):
        tx.view.register_table(request.key, files[0])
    else:
        tx.add_files(request.key, files, schema, "replace")
    return str(tx.publish(f"create external table {request.key} from {source}"))


async def _quietly(send: Any) -> None:
    try:
        await send
    except Exception:  # noqa: BLE001 - a worker gone meanwhile has nothing to stop
        pass
