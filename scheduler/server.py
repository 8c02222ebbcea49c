"""The scheduler daemon: one per cluster, owns the catalog and coordinates runs.

Workers and clients connect to the same port; the handshake says which is
which. Catalog and Iceberg calls block, so they run on one store thread, one
at a time, in the order they were asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from faas.protocol.connection import Connection, RefusalLog, accept
from faas.protocol.errors import (
    ClosedByUs,
    ConnectionClosed,
    FaasError,
    HandshakeFailed,
    MalformedFrame,
    NoWorkers,
    PeerVanished,
)
from faas.protocol.messages import (
    CancelRun,
    ClientRequest,
    ClusterInfo,
    DeleteSecret,
    Error,
    FollowJob,
    GetJob,
    ImportTable,
    JobLogs,
    ListJobs,
    ListSecrets,
    ObjectInfo,
    Query,
    RunFinished,
    SetSecret,
    SubmitRun,
    error_message,
)
from faas.protocol.replies import (
    Cluster,
    Job,
    JobEvents,
    Jobs,
    RunningFunction,
    SecretChanged,
    SecretInfo,
    Secrets,
    WorkerInfo,
)
from faas.protocol.version import build_id
from faas.protocol.worker_messages import (
    Heartbeat,
    QueryPart,
    Register,
    Registered,
    TaskFailed,
    WorkerToScheduler,
)
from faas.scheduler import catalog_ops
from faas.scheduler.analysis import Analyzer
from faas.scheduler.helper_tasks import QUERY_RESULT_LIMIT, QUERY_TIMEOUT, HelperTasks
from faas.scheduler.jobs import RUN_LOG_LIMIT, JobStore
from faas.scheduler.placement import Fail, Instruction, Lost, Placement, Request, Start
from faas.scheduler.run import RunCoordinator
from faas.scheduler.runs import RunRequests
from faas.scheduler.secret_store import SecretStore
from faas.scheduler.users import Users, check
from faas.store.refs import run_branch_name

log = logging.getLogger(__name__)

T = TypeVar("T")

_client_decoder = msgspec.msgpack.Decoder(ClientRequest)
_worker_decoder = msgspec.msgpack.Decoder(WorkerToScheduler)

WORKER_WAIT = 30.0
HEARTBEAT_INTERVAL = 1.0
# A worker not heard from for this long is lost; its tasks fail.
WORKER_DEADLINE = 10 * HEARTBEAT_INTERVAL
# Clients open a connection per call: one idle this long is closed (--client-idle-timeout).
CLIENT_IDLE_TIMEOUT = 300.0


@dataclass
class WorkerHandle:
    """A registered worker's connection and what it said of itself that placement does
    not use. Its memory, cores and reservations are placement's (``placement.workers``); the
    tasks it runs are the scheduler's watch table (``Scheduler.watched``)."""

    worker_id: str
    host_id: str
    conn: Connection[Any]
    python_versions: list[str]
    shm_dir: str
    data_address: str = ""
    env_builds: int = 0
    isolation: str = "sandbox"
    last_seen: float = field(default_factory=time.monotonic)
    data_spilled: int = 0


@dataclass
class Watched:
    """A task sent to a worker, and where what the worker says of it goes."""

    worker: WorkerHandle
    queue: asyncio.Queue[Any]


class Scheduler(RunRequests, HelperTasks):
    def __init__(
        self,
        *,
        home: str | Path,
        token: bytes,
        listen: str = "127.0.0.1:0",
        warehouse: str | None = None,
        catalog: str | None = None,
        host_id: str | None = None,
        run_log_limit: int = RUN_LOG_LIMIT,
        client_idle_timeout: float = CLIENT_IDLE_TIMEOUT,
        query_timeout: float = QUERY_TIMEOUT,
        query_result_limit: int = QUERY_RESULT_LIMIT,
        worker_wait: float = WORKER_WAIT,
        protect: Sequence[str] = ("main",),
        http: str | None = None,
    ) -> None:
        self.home = Path(home).expanduser()
        # The worker credential: workers prove it; clients prove their user's secret.
        self.token = token
        self.users = Users(self.home)
        self.secrets = SecretStore(self.home)
        # Branches only an admin may change (faasd scheduler --protect).
        self.protect = list(protect)
        self.listen = listen
        # Where the Iceberg REST catalog listens (faasd scheduler --http); None: nowhere.
        self.http = http
        self.iceberg: IcebergRest | None = None
        self.warehouse = warehouse
        self.catalog = catalog
        self.host_id = host_id or socket.gethostname()
        self.run_log_limit = run_log_limit
        # A client connection that sends no request for this long is closed.
        self.client_idle_timeout = client_idle_timeout
        self.query_timeout = query_timeout
        self.query_result_limit = query_result_limit
        # How long work waits for a worker while none is registered (--worker-wait).
        self.worker_wait = worker_wait
        self.status = "new"
        self.address = ""
        self.lakehouse: Any = None
        self.jobs: JobStore | None = None
        self.workers: dict[str, WorkerHandle] = {}
        self.worker_joined = asyncio.Condition()
        # Every task a worker runs for us, by task id: the one record of what runs where.
        self.watched: dict[str, Watched] = {}
        self.runs: dict[str, asyncio.Task[RunFinished]] = {}
        # Who runs what, and where every object is (the cache index).
        self.placement = Placement()
        self._placing: dict[str, asyncio.Future[str]] = {}
        self.coordinators: dict[str, RunCoordinator] = {}
        # Queues of the clients following each running run (FollowJob).
        self.followers: dict[str, set[asyncio.Queue[Any]]] = {}
        # For an idle timer: when a client or a run was last seen, clients connected now.
        self.started = time.time()
        self.last_active = time.monotonic()
        self.clients = 0
        self._server: asyncio.Server | None = None
        self._store = ThreadPoolExecutor(1, thread_name_prefix="faas-store")
        # Projects and query SQL are parsed in a helper process, never on the loop.
        self.analysis = Analyzer()
        self._connections: set[asyncio.Task[Any]] = set()
        self._refusals = RefusalLog(log, "scheduler")
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> str:
        if self.status != "new":
            return self.address
        self.status = "starting"
        from faas.store import Lakehouse

        self.home.mkdir(parents=True, exist_ok=True)
        admin = await self.store_call(self.users.ensure_admin)
        if admin is not None:
            log.info("no users yet: made user 'admin', its token file is %s", admin)
        self.jobs = JobStore(self.home / "runs")
        self.lakehouse = await self.store_call(
            Lakehouse, self.home, warehouse=self.warehouse, catalog=self.catalog
        )
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._on_connection, host or "127.0.0.1", int(port or 0), limit=2**20
        )
        sock = self._server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"
        if self.http is not None:
            from faas.scheduler.iceberg_rest import IcebergRest  # aiohttp: only when served

            self.iceberg = IcebergRest(self, self.http)
            await self.iceberg.start()
        self.status = "running"
        log.info("scheduler listening on %s (home %s)", self.address, self.home)
        return self.address

    async def close(self) -> None:
        if self.status in ("closing", "closed", "new"):
            self.status = "closed"
            return
        self.status = "closing"
        if self._server:
            self._server.close()
        if self.iceberg is not None:
            await self.iceberg.close()
        for run in list(self.runs.values()):
            run.cancel()
        for w in list(self.workers.values()):
            w.conn.close()
        for t in list(self._connections):
            t.cancel()
        # Runs end first (one publishing finishes its merge and is recorded as it ended),
        # then what they started in the background; then what everything used, in the
        # reverse order of its creation.
        await asyncio.gather(*self._connections, *self.runs.values(), return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.jobs is not None:
            self.jobs.close()
        self.analysis.close()
        if self.lakehouse is not None:
            await self.store_call(self.lakehouse.close)
        await asyncio.to_thread(self._store.shutdown, True)
        self.status = "closed"
        log.info("scheduler closed")

    def idle_for(self, asking: int = 0) -> float:
        """Seconds since the last client left or the last run ended; 0 while either is on
        (but the ``asking`` clients, which are asking this)."""
        if self.clients > asking or self.runs:
            return 0.0
        return time.monotonic() - self.last_active

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store, lambda: fn(*args, **kwargs))

    # -- connections -----------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                conn: Connection[Any] = await accept(
                    reader, writer, _client_decoder, token=self.token, role="scheduler",
                    host_id=self.host_id, allowed_roles=("client", "worker"),
                    users=self.users.secret,
                )
            except HandshakeFailed as exc:
                self._refusals.refused(writer.get_extra_info("peername"), exc)
                return
            if conn.peer_role == "worker":
                conn.decoder = _worker_decoder
                await self._serve_worker(conn)
            else:
                self.clients += 1
                try:
                    await self._serve_client(conn)
                finally:
                    self.clients -= 1
                    self.last_active = time.monotonic()
        except (ConnectionClosed, ClosedByUs, PeerVanished, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not stop the daemon
            log.exception("connection handler failed")
        finally:
            writer.close()
            self._connections.discard(task)

    # -- workers ---------------------------------------------------------------

    async def _serve_worker(self, conn: Connection[Any]) -> None:
        first = await conn.recv(timeout=30)
        if not isinstance(first, Register):
            await conn.send(Error(kind="MalformedFrame", message="a worker must Register first"))
            return
        handle = WorkerHandle(
            worker_id=first.worker_id, host_id=first.host_id, conn=conn,
            python_versions=first.python_versions, shm_dir=first.shm_dir,
            data_address=first.data_address, env_builds=first.env_builds,
            isolation=first.isolation,
        )
        self.workers[handle.worker_id] = handle
        self._apply(self.placement.worker_joined(
            handle.worker_id, handle.host_id, first.memory_total, first.memory_available,
            cpus=first.cpus,
        ))
        for info in first.objects:
            self.placement.stored(handle.worker_id, info.object_id, info)
        await conn.send(Registered(worker_id=handle.worker_id, heartbeat_interval=HEARTBEAT_INTERVAL))
        log.info("worker %s joined from %s (host %s)", handle.worker_id, conn.peer, handle.host_id)
        if handle.isolation == "none":
            log.warning("worker %s runs functions without a sandbox (--isolation none)",
                        handle.worker_id)
        async with self.worker_joined:
            self.worker_joined.notify_all()
        try:
            while True:
                try:
                    # Heartbeats come every interval: a worker silent for long is gone.
                    msg = await conn.recv(timeout=WORKER_DEADLINE)
                except MalformedFrame as exc:
                    log.warning("worker %s sent a malformed frame: %s", handle.worker_id, exc)
                    continue
                handle.last_seen = time.monotonic()
                if isinstance(msg, Heartbeat):
                    handle.env_builds = msg.env_builds
                    if msg.python_versions is not None:
                        handle.python_versions = msg.python_versions
                    handle.data_spilled = msg.spilled_bytes
                    self._apply(self.placement.heartbeat(
                        handle.worker_id, msg.memory_total, msg.memory_available, msg.shm_bytes,
                        msg.cache_bytes, tuple(msg.dropped), msg.draining,
                    ))
                    continue
                if isinstance(msg, QueryPart):
                    data = await conn.recv_bulk(msg.nbytes, timeout=300)
                    self._route(msg.task_id, (msg, data))
                    continue
                task_id = getattr(msg, "task_id", None)
                if task_id is None:
                    log.warning("unexpected %s from worker %s", type(msg).__name__, handle.worker_id)
                    continue
                self._route(task_id, msg)
        finally:
            # A worker that reconnected has a new handle under the same id: keep that one.
            conn.close()
            log.info("worker %s left", handle.worker_id)
            # Runs hear which objects went with it before its tasks fail, so what must be
            # made again is known when they look.
            if self.workers.get(handle.worker_id) is handle:
                del self.workers[handle.worker_id]
                self._apply(self.placement.worker_lost(handle.worker_id))
            lost = Error(kind="PeerVanished", message=f"worker {handle.worker_id} was lost")
            for task_id in self.tasks_on(handle):
                self._route(task_id, TaskFailed(task_id=task_id, error=lost))

    def _route(self, task_id: str, msg: Any) -> None:
        watched = self.watched.get(task_id)
        if watched is not None:
            watched.queue.put_nowait(msg)
        else:
            log.debug("message for finished task %s dropped", task_id)

    def watch_task(self, task_id: str, worker: WorkerHandle) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.watched[task_id] = Watched(worker, queue)
        return queue

    def tasks_on(self, worker: WorkerHandle) -> list[str]:
        """The ids of the tasks ``worker`` (this connection of it) runs, sorted."""
        return sorted(t for t, w in self.watched.items() if w.worker is worker)

    def fail_task(self, task_id: str, kind: str, message: str) -> None:
        """End a watched task from the scheduler's side, as if its worker had said so."""
        self._route(task_id, TaskFailed(task_id=task_id, error=Error(kind=kind, message=message)))

    def stored(self, worker_id: str, object_id: str, info: ObjectInfo) -> None:
        """An object is in a worker's store now (placement.stored)."""
        self.placement.stored(worker_id, object_id, info)

    def largest_memory(self) -> int:
        """The memory of the largest live worker (0 with none)."""
        return max((w.memory_total for w in self.placement.workers.values()), default=0)

    def fits_now(self, request: Request) -> bool:
        """Would ``request`` be placed at once (placement.fits_now)?"""
        return self.placement.fits_now(request)

    def grow(self, task_id: str, extra: int) -> None:
        """A placed task reserves ``extra`` bytes more where it runs (placement.grow)."""
        self.placement.grow(task_id, extra)

    def unwatch_task(self, task_id: str) -> None:
        self.watched.pop(task_id, None)

    # -- placement ---------------------------------------------------------------

    def _apply(self, instructions: list[Instruction]) -> None:
        """Carry out what the placement state machine decided."""
        for ins in instructions:
            match ins:
                case Start(request_id=rid, worker_id=worker_id):
                    fut = self._placing.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(worker_id)
                    else:  # nobody waits for it any more
                        self._apply(self.placement.withdraw(rid))
                case Fail(request_id=rid, message=message):
                    fut = self._placing.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(NoWorkers(message))
                case Lost(worker_id=worker_id, objects=objects):
                    for coordinator in list(self.coordinators.values()):
                        coordinator.worker_lost(worker_id, objects)

    def holders(self, object_id: str) -> dict[str, Any]:
        """Live workers holding an object, by worker id."""
        return self.placement.holders(object_id)

    async def place(self, request: Request) -> WorkerHandle:
        """Wait until the placement puts ``request`` on a worker; that worker's handle.

        With no worker registered at all it waits ``worker_wait`` for one, then fails."""
        while True:
            fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._placing[request.request_id] = fut
            self._apply(self.placement.submit(request))
            try:
                while not fut.done():
                    if self.workers:
                        await asyncio.wait({fut})
                        continue
                    done, _ = await asyncio.wait({fut}, timeout=self.worker_wait)
                    if not done and not self.workers:
                        raise NoWorkers(
                            f"no worker registered within {self.worker_wait:g}s: start one with "
                            f"'faasd worker --scheduler {self.address}'"
                        )
                worker_id = fut.result()
            except BaseException:
                self._placing.pop(request.request_id, None)
                self._apply(self.placement.withdraw(request.request_id))
                raise
            worker = self.workers.get(worker_id)
            if worker is not None and not worker.conn.closed:
                return worker
            self._apply(self.placement.withdraw(request.request_id))  # gone meanwhile: again

    def release(self, request_id: str, output: ObjectInfo | None = None, new: bool = False) -> None:
        """A placed request ended: its reservation goes back; its output is now stored."""
        self._apply(self.placement.finished(
            request_id, (output.object_id, output) if output is not None else None, new=new
        ))

    async def choose_worker(self) -> WorkerHandle:
        """A worker for a catalog helper task (import, query): the one with most free memory."""
        async with self.worker_joined:
            try:
                await asyncio.wait_for(
                    self.worker_joined.wait_for(lambda: bool(self.workers)), self.worker_wait
                )
            except TimeoutError:
                raise NoWorkers(
                    f"no worker registered within {self.worker_wait:g}s: start one with "
                    f"'faasd worker --scheduler {self.address}'"
                ) from None
        shm = self.placement.host_shm()

        def rank(w: WorkerHandle) -> tuple[bool, int, str]:
            state = self.placement.workers.get(w.worker_id)
            if state is None:
                return (False, 0, w.worker_id)
            # A draining worker only if every worker is draining.
            return (not state.draining, self.placement.free(state, shm), w.worker_id)

        return max(self.workers.values(), key=rank)

    def background(self, coro: Any) -> None:
        """Run a fire-and-forget coroutine, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- clients ---------------------------------------------------------------

    async def _serve_client(self, conn: Connection[Any]) -> None:
        while True:
            try:
                # Idle for too long: PeerVanished, and the connection is closed.
                request = await conn.recv(timeout=self.client_idle_timeout)
            except MalformedFrame as exc:
                await conn.send(error_message(exc))
                continue
            log.debug("client %s: %s", conn.peer, type(request).__name__)
            try:
                check(conn.peer_user, self.users.role(conn.peer_user), request, self.protect)
                match request:
                    case SubmitRun():
                        await self._submit(conn, request)
                    case Query():
                        await self._query(conn, request)
                    case FollowJob():
                        await self._follow(conn, request)
                    case _:
                        await conn.send(await self._catalog_op(request, conn.peer_user))
            except (ConnectionClosed, PeerVanished):
                raise
            except FaasError as exc:
                await conn.send(error_message(exc))
            except Exception as exc:  # noqa: BLE001 - reported, the daemon goes on
                log.exception("request %s failed", type(request).__name__)
                await conn.send(Error(kind="FaasError", message=f"internal error: {exc!r}"))

    async def _catalog_op(self, request: Any, user: str = "") -> Any:
        """The reply to a request that is neither a run, a follow nor a query."""
        assert self.jobs is not None
        match request:
            case ListJobs(limit=limit):
                return Jobs(runs=self.jobs.recent(limit))
            case GetJob(run_id=run_id):
                return Job(job=self.jobs.get(run_id))
            case JobLogs(run_id=run_id, offset=offset):
                events, next_offset = self.jobs.page(run_id, offset)
                return JobEvents(events=events, next_offset=next_offset)
            case CancelRun(run_id=run_id):
                return await self._cancel_run(run_id)
            case ImportTable():
                return await self._import(request, user)
            case ClusterInfo():
                return self._cluster()
            case SetSecret(name=name, value=value):
                await self.store_call(self.secrets.set, name, value, user)
                return SecretChanged(name=name)
            case DeleteSecret(name=name):
                await self.store_call(self.secrets.remove, name)
                return SecretChanged(name=name, deleted=True)
            case ListSecrets():
                found = await self.store_call(self.secrets.describe)
                return Secrets(secrets=[SecretInfo(name=n, set_by=b, set_at=t)
                                        for n, b, t in found])
        running = [run_branch_name(run_id) for run_id in self.runs]
        return await self.store_call(
            catalog_ops.handle, self.lakehouse, request, running, user or "faas"
        )

    def _cluster(self) -> Cluster:
        workers = []
        for w in self.workers.values():
            state = self.placement.workers[w.worker_id]
            tasks = self.tasks_on(w)
            workers.append(WorkerInfo(
                worker_id=w.worker_id, host_id=w.host_id, memory_total=state.memory_total,
                memory_available=state.memory_available, memory_reserved=state.reserved,
                cpus=state.cpus, cpus_reserved=state.cpus_reserved, shm_bytes=state.shm_bytes,
                cache_bytes=state.cache_bytes, draining=state.draining,
                spilled_bytes=w.data_spilled, python_versions=w.python_versions,
                running=len(tasks), env_builds=w.env_builds,
                functions=[_describe_task(t) for t in tasks], isolation=w.isolation,
            ))
        return Cluster(
            scheduler=self.address, version=build_id(), pid=os.getpid(), started=self.started,
            runs=len(self.runs), idle_seconds=self.idle_for(asking=1), workers=workers,
            iceberg=self.iceberg.url if self.iceberg is not None else "",
            console=self.iceberg.console_url if self.iceberg is not None else "",
        )

def _describe_task(task_id: str) -> RunningFunction:
    """What a worker is running, from its task id (``run:node:attempt``, or a helper task)."""
    run_id, sep, rest = task_id.partition(":")
    if not sep:
        return RunningFunction(task_id=task_id, run_id="", node=task_id)
    return RunningFunction(task_id=task_id, run_id=run_id, node=rest.rpartition(":")[0])


__all__ = ["Scheduler", "WorkerHandle", "RunFinished"]


if TYPE_CHECKING:
    from faas.scheduler.iceberg_rest import IcebergRest
    from faas.scheduler.run_host import RunHost

    def _hosts_runs(scheduler: Scheduler) -> RunHost:
        return scheduler  # mypy checks here that a Scheduler is all a run needs
