"""The asyncio client: talks only to the scheduler.

    async with Client("127.0.0.1:8470", token_file="~/.faas/token") as c:
        run = await c.submit("examples/adventureworks", namespace="adventure")
        async for event in run:
            print(event)
        result = await run.result()

Each call opens its own authenticated connection, so calls may run
concurrently and a cancelled call never leaves a half-read connection behind.

``Client(..., blocking=True)`` runs the same coroutines over blocking sockets, without an
event loop (``faas.protocol.blocking.drive``): how the ``faas`` command line uses it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from faas.protocol.auth import load_token, split_credential
from faas.protocol.blocking import BlockingConnection, connect_blocking_conn
from faas.protocol.errors import FaasError, FunctionFailed, ProjectError, RunCancelled, from_wire
from faas.protocol.messages import (
    BulkHeader,
    CancelRun,
    ClusterInfo,
    CreateNamespace,
    CreateRef,
    DeleteRef,
    DeleteSecret,
    Diff,
    DropNamespace,
    DropTable,
    Error,
    FileFormat,
    FollowJob,
    GetJob,
    GetTable,
    ImportMode,
    ImportTable,
    JobLogs,
    ListJobs,
    ListNamespaces,
    ListRefs,
    ListSecrets,
    ListTables,
    Log,
    Merge,
    PlanColumn,
    PruneRuns,
    Query,
    RevertTable,
    RunAccepted,
    RunFinished,
    SetSecret,
    SubmitRun,
)
from faas.protocol.replies import (
    Cancelled,
    ClientReply,
    Cluster,
    Commit,
    Commits,
    Differences,
    Imported,
    ImportPlan,
    Job,
    JobEvent,
    JobEvents,
    JobRecord,
    Jobs,
    JobSummary,
    KeyDifference,
    Merged,
    NamespaceChanged,
    Namespaces,
    PlanDescription,
    PlannedNode,
    Pruned,
    QueryFinished,
    Ref,
    RefDeleted,
    Refs,
    SecretChanged,
    SecretInfo,
    Secrets,
    Table,
    TableDropped,
    TableReverted,
    Tables,
)

_decoder = msgspec.msgpack.Decoder(ClientReply)
R = TypeVar("R")
T = TypeVar("T")

if TYPE_CHECKING:
    from faas.protocol.connection import Connection

    # Either transport: the same coroutine methods.
    AnyConnection = Connection[Any] | BlockingConnection[Any]

PROJECT_SUFFIXES = (".py", ".sql")
PROJECT_FILES = ("faas_project.toml", "bauplan_project.yml", "bauplan_project.yaml")
MAX_PROJECT_BYTES = 8 * 1024 * 1024
SKIP_DIRS = {"data", "__pycache__", ".venv", "venv", "node_modules"}


def pack_project(path: str | Path) -> dict[str, str]:
    """The project's source files (relative path → text), bounded in size."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ProjectError(f"project directory {str(path)!r} does not exist")
    if not root.is_dir():
        raise ProjectError(f"project {str(path)!r} is not a directory")
    files: dict[str, str] = {}
    total = 0
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") or part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if not p.is_file() or not (p.suffix in PROJECT_SUFFIXES or p.name in PROJECT_FILES):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ProjectError(f"{rel}: not UTF-8 text") from None
        total += len(text)
        if total > MAX_PROJECT_BYTES:
            raise ProjectError(
                f"project {str(path)!r} is over {MAX_PROJECT_BYTES // 2**20} MiB of source; keep "
                f"data files out of it"
            )
        files[rel.as_posix()] = text
    if not any(name.endswith(PROJECT_SUFFIXES) for name in files):
        raise ProjectError(f"project directory {str(path)!r} has no .py or .sql files")
    return files


def _raise(err: Error) -> None:
    raise from_wire(err.kind, err.message, err.detail)


class Run:
    """A submitted run: iterate its events as they happen, then await its result."""

    def __init__(
        self, conn: AnyConnection, accepted: RunAccepted, client: Client, *,
        attached: bool,
    ) -> None:
        self.conn = conn
        self.run_id = accepted.run_id
        self.nodes = accepted.nodes
        self.client = client
        # Attached: the run ends with this connection. Otherwise it was detached, or is
        # being followed, and goes on whatever this side does.
        self.attached = attached
        self._result: RunFinished | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        if self.conn.closed and self._result is None:  # detached: follow it from here
            self.conn = (await self.client.follow(self.run_id)).conn
        while self._result is None:
            msg = await self.conn.recv()
            if isinstance(msg, RunFinished):
                self._result = msg
                await self.conn.aclose()
            elif isinstance(msg, Error):
                await self.conn.aclose()
                _raise(msg)
            yield msg

    async def result(self) -> RunFinished:
        """Wait for the end of the run (consuming remaining events)."""
        async for _ in self:
            pass
        assert self._result is not None
        return self._result

    async def wait(self) -> RunFinished:
        """Like result(), but raises the run's error if it did not succeed."""
        result = await self.result()
        if result.status != "success" and result.error is not None:
            if result.status == "cancelled":
                raise RunCancelled(result.error.message, detail=result.error.detail)
            err = from_wire(result.error.kind, result.error.message, result.error.detail)
            if not isinstance(err, FaasError):
                raise FunctionFailed(result.error.message, detail=result.error.detail)
            raise err
        return result

    async def cancel(self) -> None:
        """Cancel the run (for an attached run, by hanging up: the scheduler stops it when
        its connection goes away)."""
        await self.conn.aclose()
        if not self.attached:
            await self.client.cancel_run(self.run_id)


class Client:
    def __init__(
        self,
        address: str | None = None,
        *,
        token: bytes | None = None,
        token_file: str | None = None,
        blocking: bool = False,
    ) -> None:
        """``blocking``: talk over blocking sockets, never suspending; the coroutines then
        run without an event loop through :func:`faas.protocol.blocking.drive` (how the
        ``faas`` command line runs them, so it never loads asyncio)."""
        address = address or os.environ.get("FAAS_CLUSTER")
        if not address:
            raise FaasError("no cluster address: pass one or set FAAS_CLUSTER")
        self.address = address
        if token is None:
            token_file = token_file or os.environ.get("FAAS_TOKEN_FILE")
            if not token_file:
                raise FaasError("no token: pass --token-file or set FAAS_TOKEN_FILE to your "
                                "user's token file (faasd user add)")
            token = load_token(token_file)
            if not split_credential(token)[0]:
                raise FaasError(
                    f"token file {token_file} is not a user's (NAME:SECRET): clients sign in "
                    "as users of the cluster (faasd user add prints a token file); the "
                    "cluster token is for workers"
                )
        self.token = token
        self.host_id = socket.gethostname()
        self.blocking = blocking

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def _connect(self) -> AnyConnection:
        """A connection to the scheduler: a Connection, or a BlockingConnection with the
        same methods."""
        if self.blocking:
            return connect_blocking_conn(
                self.address, _decoder, token=self.token, role="client", host_id=self.host_id,
                expect_role="scheduler",
            )
        from faas.protocol.connection import connect

        return await connect(
            self.address, _decoder, token=self.token, role="client", host_id=self.host_id,
            expect_role="scheduler",
        )

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """``work()`` (file system work) on a thread, so that an event loop goes on; called
        directly by a blocking client, which has no loop to keep going."""
        if self.blocking:
            return work()
        import asyncio

        return await asyncio.to_thread(work)

    async def _call(self, request: Any, expect: type[R]) -> R:
        """Send ``request`` on a connection of its own; its reply, of type ``expect``."""
        conn = await self._connect()
        try:
            await conn.send(request)
            reply = await conn.recv()
            if isinstance(reply, Error):
                _raise(reply)
            if not isinstance(reply, expect):
                raise FaasError(
                    f"unexpected reply {type(reply).__name__} to {type(request).__name__}"
                )
            return reply
        finally:
            await conn.aclose()

    # -- runs --------------------------------------------------------------------

    async def submit(
        self,
        project: str | Path,
        *,
        namespace: str,
        ref: str = "main",
        params: dict[str, str] | None = None,
        strict: bool = False,
        no_cache: bool = False,
        detach: bool = False,
    ) -> Run:
        """Start a run; with ``strict`` a failing expectation fails it (and publishes nothing);
        with ``no_cache`` every function runs, reusing no cached output or column.

        The run ends when this connection does (cancelled, unless it finished) unless
        ``detach``: then it goes on alone, and the Run returned has only its id and
        nodes until iterated, which follows it like :meth:`follow`."""
        files = await self._off_loop(lambda: pack_project(project))
        project_dir = await self._off_loop(lambda: str(Path(project).resolve()))
        run = await self._open_run(
            SubmitRun(
                files=files, namespace=namespace, ref=ref, params=dict(params or {}),
                project_dir=project_dir, strict=strict, no_cache=no_cache, detach=detach,
            )
        )
        if detach:
            await run.conn.aclose()
        return run

    async def follow(self, run_id: str) -> Run:
        """A run, running or finished: its events so far, then the rest as they happen,
        then its result. Leaving early stops following, never the run."""
        return await self._open_run(FollowJob(run_id=run_id))

    async def _open_run(self, request: SubmitRun | FollowJob) -> Run:
        attached = isinstance(request, SubmitRun) and not request.detach
        conn = await self._connect()
        try:
            await conn.send(request)
            reply = await conn.recv()
        except BaseException:
            await conn.aclose()
            raise
        if isinstance(reply, Error):
            await conn.aclose()
            _raise(reply)
        if not isinstance(reply, RunAccepted):
            await conn.aclose()
            raise FaasError(f"unexpected reply {type(reply).__name__}")
        return Run(conn, reply, self, attached=attached)

    async def plan(
        self, project: str | Path, *, namespace: str, ref: str = "main",
        params: dict[str, str] | None = None,
    ) -> list[PlannedNode]:
        """The plan the scheduler would run, without running anything."""
        reply = await self._call(
            SubmitRun(files=await self._off_loop(lambda: pack_project(project)),
                      namespace=namespace, ref=ref,
                      params=dict(params or {}), dry_run=True),
            PlanDescription,
        )
        return reply.plan

    # -- catalog -------------------------------------------------------------------

    async def namespaces(self, ref: str = "main") -> list[str]:
        return (await self._call(ListNamespaces(ref=ref), Namespaces)).names

    async def create_namespace(self, name: str, ref: str = "main") -> NamespaceChanged:
        return await self._call(CreateNamespace(name=name, ref=ref), NamespaceChanged)

    async def tables(self, namespace: str | None = None, ref: str = "main") -> list[str]:
        return (await self._call(ListTables(namespace=namespace, ref=ref), Tables)).keys

    async def table(self, key: str, ref: str = "main") -> Table:
        return await self._call(GetTable(key=key, ref=ref), Table)

    async def import_table(
        self, key: str, paths: list[str], *, ref: str = "main", mode: ImportMode = "replace",
        format: FileFormat | None = None, plan: list[PlanColumn] | None = None,
        partitioned_by: str = "",
    ) -> Imported:
        """Import CSV/Parquet files (paths or globs, readable by the workers) as a table;
        ``format`` (csv, tsv, parquet) for files whose suffix does not say; ``plan``: an
        import plan (:meth:`plan_import`, edited) for files that disagree;
        ``partitioned_by``: the table's partitions ("day(order_date), country"; default:
        those it has)."""
        return await self._call(
            ImportTable(key=key, paths=await self._off_loop(lambda: _resolved(paths)), ref=ref, mode=mode,
                        format=format, plan=plan, partitioned_by=partitioned_by),
            Imported,
        )

    async def create_table(
        self, key: str, paths: list[str], *, ref: str = "main", format: FileFormat | None = None,
        partitioned_by: str = "",
    ) -> Imported:
        """Create table ``key``, empty, with the schema of these files (and partitions);
        import their rows with :meth:`import_table`."""
        return await self._call(
            ImportTable(key=key, paths=await self._off_loop(lambda: _resolved(paths)), ref=ref, format=format,
                        partitioned_by=partitioned_by, create_only=True),
            Imported,
        )

    async def create_external_table(self, key: str, source: str, *, ref: str = "main") -> Imported:
        """Register existing files as table ``key``, copying nothing: Parquet files (a path,
        a glob, ``s3://bucket/path/*.parquet``) or an Iceberg table's ``.metadata.json``."""
        (path,) = await self._off_loop(lambda: _resolved([source]))
        return await self._call(
            ImportTable(key=key, paths=[path], ref=ref, external=True), Imported
        )

    async def plan_import(
        self, key: str, paths: list[str], *, ref: str = "main", format: FileFormat | None = None,
    ) -> ImportPlan:
        """The import plan faas proposes for these files: every column, its types and
        files, the files without it, the type it would get. Nothing is imported."""
        return await self._call(
            ImportTable(key=key, paths=await self._off_loop(lambda: _resolved(paths)), ref=ref, format=format,
                        plan_only=True),
            ImportPlan,
        )

    async def query(
        self, sql: str, *, namespace: str | None = None, ref: str = "main",
        timeout: float | None = None,
    ) -> Any:
        """Run SQL over the tables at ``ref``; returns a pyarrow Table. It is stopped after
        ``timeout`` seconds (default: the scheduler's, 300 unless set otherwise)."""
        import pyarrow as pa

        pieces = [piece async for piece in self.query_pieces(
            sql, namespace=namespace, ref=ref, timeout=timeout,
        )]
        return pa.concat_tables(pieces)  # zero-copy: each piece becomes chunks

    async def query_pieces(
        self, sql: str, *, namespace: str | None = None, ref: str = "main",
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`query`, its result a pyarrow Table at a time as the worker makes it (the
        first may have no rows). Leaving the loop early stops the query."""
        import pyarrow as pa

        conn = await self._connect()
        try:
            await conn.send(Query(sql=sql, namespace=namespace, ref=ref, timeout=timeout))
            while True:
                reply = await conn.recv()
                match reply:
                    case BulkHeader(nbytes=nbytes):
                        data = await conn.recv_bulk(nbytes)
                        yield pa.ipc.open_stream(pa.py_buffer(data)).read_all()
                    case QueryFinished():
                        return
                    case Error():
                        _raise(reply)
                    case _:
                        raise FaasError(f"unexpected reply {type(reply).__name__} to Query")
        finally:
            await conn.aclose()

    async def set_secret(self, name: str, value: str) -> SecretChanged:
        """Store a secret on the scheduler (sealed at rest) for parameters of type secret."""
        return await self._call(SetSecret(name=name, value=value), SecretChanged)

    async def delete_secret(self, name: str) -> SecretChanged:
        return await self._call(DeleteSecret(name=name), SecretChanged)

    async def secrets(self) -> list[SecretInfo]:
        """The secrets stored: names, who set them and when (never their values)."""
        return (await self._call(ListSecrets(), Secrets)).secrets

    async def info(self) -> Cluster:
        return await self._call(ClusterInfo(), Cluster)

    async def drop_namespace(self, name: str, ref: str = "main") -> NamespaceChanged:
        return await self._call(DropNamespace(name=name, ref=ref), NamespaceChanged)

    async def drop_table(self, key: str, ref: str = "main") -> TableDropped:
        return await self._call(DropTable(key=key, ref=ref), TableDropped)

    async def revert_table(self, key: str, *, branch: str, to_ref: str) -> TableReverted:
        """Make ``key`` on ``branch`` what it is at ``to_ref``, in one commit."""
        return await self._call(RevertTable(key=key, branch=branch, to_ref=to_ref), TableReverted)

    # -- branches, tags, history ---------------------------------------------------

    async def branches(self, *, include_runs: bool = False) -> list[Ref]:
        return (await self._call(ListRefs(kind="branch", include_runs=include_runs), Refs)).refs

    async def create_branch(self, name: str, from_ref: str = "main") -> Ref:
        return await self._call(CreateRef(kind="branch", name=name, from_ref=from_ref), Ref)

    async def delete_branch(self, name: str) -> RefDeleted:
        return await self._call(DeleteRef(kind="branch", name=name), RefDeleted)

    async def tags(self) -> list[Ref]:
        return (await self._call(ListRefs(kind="tag"), Refs)).refs

    async def create_tag(self, name: str, from_ref: str = "main") -> Ref:
        return await self._call(CreateRef(kind="tag", name=name, from_ref=from_ref), Ref)

    async def delete_tag(self, name: str) -> RefDeleted:
        return await self._call(DeleteRef(kind="tag", name=name), RefDeleted)

    async def merge(
        self, source: str, into: str = "main", *, message: str | None = None,
        fast_forward: bool = False,
    ) -> Merged:
        """Merge ``source`` into branch ``into``: one commit, or a conflict and nothing written."""
        return await self._call(
            Merge(source=source, into=into, message=message, fast_forward=fast_forward), Merged
        )

    async def diff(self, from_ref: str, to_ref: str) -> list[KeyDifference]:
        """Tables and namespaces that differ going from ``from_ref`` to ``to_ref``."""
        return (await self._call(Diff(from_ref=from_ref, to_ref=to_ref), Differences)).changes

    async def log(self, ref: str = "main", n: int = 20) -> list[Commit]:
        return (await self._call(Log(ref=ref, n=n), Commits)).commits

    # -- runs, past and present ---------------------------------------------------

    async def jobs(self, limit: int = 20) -> list[JobSummary]:
        """Recent runs, newest first."""
        return (await self._call(ListJobs(limit=limit), Jobs)).runs

    async def job(self, run_id: str) -> JobRecord:
        return (await self._call(GetJob(run_id=run_id), Job)).job

    async def job_logs(self, run_id: str) -> list[JobEvent]:
        """Every event and output line of a run, in order (also while it runs)."""
        events: list[JobEvent] = []
        offset: int | None = 0
        while offset is not None:  # a page at a time: a run may print more than a frame holds
            page = await self._call(JobLogs(run_id=run_id, offset=offset), JobEvents)
            events += page.events
            offset = page.next_offset
        return events

    async def cancel_run(self, run_id: str) -> Cancelled:
        """Cancel a running run: its function processes are stopped, nothing is published."""
        return await self._call(CancelRun(run_id=run_id), Cancelled)

    async def prune_runs(self, *, older_than: float | None = None) -> list[str]:
        """Delete the transaction branches of finished runs; returns their names."""
        return (await self._call(PruneRuns(older_than=older_than), Pruned)).branches


def _resolved(paths: list[str]) -> list[str]:
    """Local paths made absolute (the workers read them); URIs as they are."""
    return [str(Path(p).expanduser().resolve()) if "://" not in p else p for p in paths]
