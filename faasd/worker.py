"""The worker daemon: registers with the scheduler and runs what it is given.

It owns the function processes of this host, the shared-memory directory
where their outputs live as Arrow IPC files, and the warehouse writes of
materialized outputs. It reconnects to the scheduler on its own when the
connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import os
import shutil
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import psutil

from faas.faasd.envs import EnvironmentCache
from faas.faasd.objects import ObjectStore
from faas.faasd.peer import PeerServer
from faas.faasd.process import FunctionProcess
from faas.faasd.queries import Query, QueryStopped
from faas.faasd.sandbox import sandbox_unavailable
from faas.faasd.taskbox import TaskBox, base_environ
from faas.faasd.tasks import FunctionTasks, freeing
from faas.faasd.zygote import ZygotePool
from faas.protocol.connection import Connection, connect
from faas.protocol.errors import (
    ConnectionClosed,
    FaasError,
)
from faas.protocol.framing import encode
from faas.protocol.messages import (
    Error,
    ObjectInfo,
    error_message,
)
from faas.protocol.worker_messages import (
    CancelTask,
    Heartbeat,
    ImportDone,
    ImportPlanned,
    ImportTask,
    InputsReady,
    QueryCredit,
    QueryDone,
    QueryPart,
    QueryTask,
    Register,
    Registered,
    ReleaseRun,
    RunTask,
    SchedulerToWorker,
    TaskFailed,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_decoder = msgspec.msgpack.Decoder(SchedulerToWorker)


def default_env_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "faas", "envs")


OWNER_LOCK = ".owner.lock"
# How long a function may run when its model names no timeout (faasd worker
# --function-timeout; 0 there: no limit).
FUNCTION_TIMEOUT = 3600.0
# How function processes are isolated (faasd worker --isolation).
ISOLATION = ("sandbox", "none")


def _hold(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_dead_siblings(root: Path) -> None:
    """Delete the directories of workers that died without cleaning up (kill -9, a crash):
    their objects, spilled files and half-written outputs. A live worker holds its lock."""
    for other in root.parent.glob("faas-w-*"):
        if other == root or not (other / OWNER_LOCK).exists():
            continue
        try:
            fd = _hold(other / OWNER_LOCK)
        except BlockingIOError:
            continue  # alive
        except OSError:
            continue
        try:
            shutil.rmtree(other, ignore_errors=True)
            log.info("removed %s, left by a worker that is gone", other)
        finally:
            os.close(fd)


def default_spill_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "faas", "spill")


def default_shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.path.expanduser("~"), ".faas", "shm")


class Worker(FunctionTasks):
    def __init__(
        self,
        scheduler: str,
        *,
        token: bytes,
        host_id: str | None = None,
        memory: int | None = None,
        shm_dir: str | None = None,
        work_dir: str | None = None,
        env_dir: str | None = None,
        pythons: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        reconnect: bool = True,
        object_memory: int | None = None,
        spill_dir: str | None = None,
        cpus: int | None = None,
        function_timeout: float | None = FUNCTION_TIMEOUT,
        import_roots: Sequence[str] = (),
        isolation: str = "sandbox",
        private_paths: Sequence[str] = (),
    ) -> None:
        self.scheduler = scheduler
        if isolation not in ISOLATION:
            raise FaasError(f"unknown isolation {isolation!r}: expected one of {', '.join(ISOLATION)}")
        self.isolation = isolation
        # The directories `faas table import` may read files from (none: no local files).
        self.import_roots = list(import_roots)
        self.function_timeout = function_timeout or None
        self.token = token
        self.host_id = host_id or socket.gethostname()
        self.worker_id = f"w-{uuid.uuid4().hex[:8]}"
        self.memory = memory or psutil.virtual_memory().total
        # Cores this worker offers: functions reserve them (@faas.model(cpus=N)), and one
        # that reserves none uses those nobody reserved.
        self.cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)
        self.cpus_reserved: dict[str, int] = {}  # task id -> cores
        # Iceberg metadata of the tables functions scan (immutable files, by location):
        # scans are planned here once, so function processes read data files only.
        self._metadata: OrderedDict[str, Any] = OrderedDict()
        # ... and the plans made from them: (location, snapshot, columns, filter) -> plan.
        self._plans: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._metadata_lock = threading.Lock()
        self.shm_root = Path(shm_dir or default_shm_dir()) / f"faas-{self.worker_id}"
        self.work_root = Path(work_dir) if work_dir else self.shm_root / "work"
        # Shared memory for objects: half the worker's memory unless told otherwise.
        self.object_memory = object_memory or self.memory // 2
        self.objects: ObjectStore | None = None
        # Spilled objects go to disk, never to the shared-memory filesystem itself.
        self.spill_root = Path(spill_dir or default_spill_dir()).expanduser() / f"faas-{self.worker_id}"
        # Objects being pulled from other hosts, so concurrent readers share one pull.
        self._pulls: dict[str, tuple[str, asyncio.Future[Path]]] = {}
        # Runs already released: work of theirs that ends late pins nothing.
        self.released: OrderedDict[str, None] = OrderedDict()
        # Memory limits of the functions running now (the store makes room for them).
        self.running_limits: dict[str, int] = {}
        # Early-started tasks waiting for upstream objects: their InputsReady, by task id.
        self.inputs_ready: dict[str, asyncio.Future[InputsReady]] = {}
        self.reconnect = reconnect
        self.envs = EnvironmentCache(
            Path(env_dir or default_env_dir()).expanduser(), extra_interpreters=pythons
        )
        self.python_versions: list[str] = []
        self._versions_told = True  # the scheduler knows python_versions (Register)
        # Set once the warm-up thread has imported the scan modules: work that reads data
        # waits for it, so two threads never import them at once (Python's import locks
        # can take that for a deadlock).
        self.scan_modules = threading.Event()
        # What functions never see, even inside a directory their sandbox shows.
        self.private_paths = [
            str(Path(p).expanduser().absolute()) for p in private_paths
        ] + [str(self.work_root), str(self.shm_root), str(self.spill_root)]
        self.boxes: dict[str, TaskBox] = {}
        # One pre-imported parent per environment: each function is a fork of it. It has
        # none of the worker's environment: a function could read the parent's.
        self.zygotes = ZygotePool(env=base_environ())
        self.peer = PeerServer(token=token, host_id=self.host_id, listen=listen, locate=self._locate)
        self.status = "new"
        self.draining = False
        self.conn: Connection[Any] | None = None
        self.processes: dict[str, FunctionProcess] = {}
        self.jobs: set[asyncio.Task[None]] = set()
        # The job of each task, from the moment it arrives (environment builds included).
        self.task_jobs: dict[str, asyncio.Task[None]] = {}
        # Queries running for the scheduler, by task id (CancelTask stops one).
        self.queries: dict[str, Query] = {}
        self.registered = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._locks: list[int] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        if self.status != "new":
            return
        self.status = "starting"
        if self.isolation == "sandbox":
            why = await sandbox_unavailable()
            if why is not None:
                self.status = "new"
                raise FaasError(
                    f"cannot build function sandboxes on this host: {why}. Start the worker "
                    "with --isolation none to run functions without one (the README's "
                    "Security model says what that gives up)"
                )
        else:
            log.warning(
                "functions run without a sandbox (--isolation none): each can read and write "
                "whatever this worker's user can, its token and other runs' data included"
            )
        for root in (self.shm_root, self.spill_root):
            root.mkdir(parents=True, exist_ok=True)
            # Held while this worker lives: a directory whose lock is free lost its worker.
            self._locks.append(_hold(root / OWNER_LOCK))
            _remove_dead_siblings(root)
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.objects = ObjectStore(self.shm_root, self.spill_root, self.object_memory)
        # The worker's own Python now; the others while it registers (see _warm_up).
        self.python_versions = _supported([self.envs.own_version])
        self._warm_up()
        await self.peer.start()
        self._main = asyncio.create_task(self._serve_forever())
        self.status = "running"

    def _warm_up(self) -> None:
        """On a daemon thread of its own (a worker that stops meanwhile waits for none of
        it): load the modules the worker reads every source scan with (Iceberg's and
        Arrow's dataset modules, about 0.6 s) now rather than in the first run, then search
        for other Python interpreters (uv's search takes a second or more with pyenv
        shims) and tell the scheduler what they offer."""
        loop = asyncio.get_running_loop()

        def found(versions: list[str]) -> None:
            if versions != self.python_versions:
                self.python_versions = versions
                self._versions_told = False  # the next heartbeat tells the scheduler

        def work() -> None:
            try:
                importlib.import_module("faas.faasd.columns")
            finally:
                self.scan_modules.set()
            versions = _supported(self.envs.interpreters())
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(found, versions)

        threading.Thread(target=work, name="faas-warm-up", daemon=True).start()

    async def close(self) -> None:
        if self.status == "new":  # never started (or refused to): nothing to undo
            self.status = "closed"
            return
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        for proc in list(self.processes.values()):
            proc.cancel()
        jobs = list(self.jobs)
        for job in jobs:
            job.cancel()
        if self._main:
            self._main.cancel()
            jobs.append(self._main)
        # Every job has ended (its process reaped, its files closed) before what it used
        # goes; gather swallows their CancelledErrors, never the caller's own.
        await asyncio.gather(*jobs, return_exceptions=True)
        if self.conn:
            await self.conn.aclose()
        await self.peer.close()
        await self.zygotes.close()
        shutil.rmtree(self.shm_root, ignore_errors=True)
        shutil.rmtree(self.work_root, ignore_errors=True)
        shutil.rmtree(self.spill_root, ignore_errors=True)
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        self.status = "closed"
        log.info("worker %s closed", self.worker_id)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_registered(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.registered.wait(), timeout)

    # -- connection to the scheduler -------------------------------------------

    async def _serve_forever(self) -> None:
        delay = 0.2
        while self.status in ("starting", "running"):
            try:
                await self._session()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except FaasError as exc:
                log.warning("worker %s: scheduler connection: %s", self.worker_id, exc)
            except Exception:  # noqa: BLE001 - whatever broke the session, reconnect
                log.exception("worker %s: scheduler session failed", self.worker_id)
            finally:
                self.registered.clear()
                # Work of a scheduler this worker lost: nobody waits for it any more.
                for job in list(self.task_jobs.values()):
                    job.cancel()
                for proc in list(self.processes.values()):
                    proc.cancel()
                # The scheduler counts this worker lost and makes its outputs again
                # elsewhere: the runs it had here hold nothing any more.
                if self.objects is not None and self.status == "running":
                    self._spawn(self._release_all())
            if not self.reconnect:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _session(self) -> None:
        self.conn = await connect(
            self.scheduler, _decoder, token=self.token, role="worker", host_id=self.host_id,
            expect_role="scheduler",
        )
        vm = psutil.virtual_memory()
        self._versions_told = True
        await self.conn.send(
            Register(
                isolation=self.isolation,
                worker_id=self.worker_id,
                host_id=self.host_id,
                memory_total=self.memory,
                memory_available=min(self.memory, vm.available),
                python_versions=self.python_versions,
                shm_dir=str(self.shm_root),
                data_address=self.peer.address,
                env_builds=self.envs.installs,
                cpus=self.cpus,
                objects=[self._info(e.name) for e in self.store.objects()],
            )
        )
        reply = await self.conn.recv(timeout=30)
        if isinstance(reply, Error):
            raise FaasError(f"scheduler refused registration: {reply.message}")
        if not isinstance(reply, Registered):
            raise FaasError(f"unexpected reply to Register: {type(reply).__name__}")
        log.info("worker %s registered with %s (host %s)", self.worker_id, self.scheduler, self.host_id)
        self.registered.set()
        beat = asyncio.create_task(self._heartbeat(self.conn, reply.heartbeat_interval))
        try:
            while True:
                msg = await self.conn.recv()
                self._dispatch(msg)
        finally:
            beat.cancel()
            self.conn.close()

    async def drain(self, grace: float) -> None:
        """Shut down gently: take no new work, give running functions ``grace`` seconds to
        finish (their results reach the scheduler), then stop the rest and close."""
        self.draining = True
        log.info("worker %s draining: %d functions running", self.worker_id, len(self.task_jobs))
        if self.conn is not None and not self.conn.closed:
            try:
                await self._beat(self.conn)  # the scheduler hears it now, not in a second
            except FaasError:
                pass
        if self.task_jobs:
            await asyncio.wait(list(self.task_jobs.values()), timeout=grace)
        if self.task_jobs:
            log.warning(
                "worker %s: stopping %d functions still running after %gs",
                self.worker_id, len(self.task_jobs), grace,
            )
        await self.close()

    async def _heartbeat(self, conn: Connection[Any], interval: float) -> None:
        while not conn.closed:
            await asyncio.sleep(interval)
            try:
                await self._beat(conn)
            except FaasError:
                return  # the session ends; the receive loop notices

    async def _beat(self, conn: Connection[Any]) -> None:
        vm = psutil.virtual_memory()
        versions, self._versions_told = (
            None if self._versions_told else self.python_versions), True
        await conn.send(
            Heartbeat(
                memory_total=self.memory,
                memory_available=min(self.memory, vm.available),
                running=len(self.processes),
                env_builds=self.envs.installs,
                shm_bytes=self.store.pinned_bytes,
                cache_bytes=self.store.shm_bytes - self.store.pinned_bytes,
                spilled_bytes=self.store.spilled_bytes,
                dropped=self.store.take_dropped(),
                draining=self.draining,
                python_versions=versions,
            )
        )

    def _spawn(self, coro: Any, task_id: str | None = None) -> None:
        """Run a job, keeping a reference until it ends (and, for a task, its job by id)."""
        job = asyncio.create_task(coro)
        self.jobs.add(job)
        if task_id is not None:
            self.task_jobs[task_id] = job

        def done(j: asyncio.Task[None]) -> None:
            self.jobs.discard(j)
            if task_id is not None:
                self.task_jobs.pop(task_id, None)

        job.add_done_callback(done)

    def _dispatch(self, msg: Any) -> None:
        match msg:
            case RunTask():
                if msg.waiting:
                    self.inputs_ready[msg.task_id] = asyncio.get_running_loop().create_future()
                self._spawn(self._run_task(msg), msg.task_id)
            case InputsReady(task_id=task_id):
                waiting = self.inputs_ready.get(task_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(msg)
            case CancelTask(task_id=task_id):
                proc = self.processes.get(task_id)
                if task_id in self.queries:
                    self.queries[task_id].stop()
                elif proc:
                    proc.cancel()
                elif task_id in self.task_jobs:
                    self.task_jobs[task_id].cancel()  # still building its environment
            case ReleaseRun(run_id=run_id):
                self._spawn(self._release(run_id))
            case ImportTask():
                self._spawn(self._import(msg))
            case QueryTask():
                self._spawn(self._query(msg))
            case QueryCredit(task_id=task_id):
                if task_id in self.queries:
                    self.queries[task_id].credit()
            case Error():
                log.warning("scheduler reported: %s", msg.message)
            case _:
                log.warning("unexpected message from scheduler: %s", type(msg).__name__)

    async def _send(self, msg: Any) -> None:
        """Send to the scheduler if connected; a lost connection is the session's to notice."""
        if self.conn is not None and not self.conn.closed:
            try:
                await self.conn.send(msg)
            except FaasError as exc:
                log.debug("could not send %s: %s", type(msg).__name__, exc)

    # -- runs -------------------------------------------------------------------

    @property
    def store(self) -> ObjectStore:
        assert self.objects is not None, "the worker is not started"
        return self.objects

    def _locate(self, object_id: str) -> Path | None:
        return self.store.locate(object_id)

    def _info(self, object_id: str) -> ObjectInfo:
        e = self.store.entries[object_id]
        return ObjectInfo(
            object_id=object_id, path=str(self.store.locate(object_id)), rows=e.rows,
            nbytes=e.nbytes, schema=e.schema,
        )

    async def _release_all(self) -> None:
        runs = {pin for e in self.store.entries.values() for pin in e.pins}
        if self.work_root.is_dir():
            runs |= {d.name for d in self.work_root.iterdir() if d.name.startswith("run-")}
        for run_id in sorted(runs):
            await self._release(run_id)

    async def _release(self, run_id: str) -> None:
        self.released[run_id] = None
        while len(self.released) > 10_000:
            self.released.popitem(last=False)
        shutil.rmtree(self.work_root / run_id, ignore_errors=True)
        await self.store.release(run_id)

    # -- catalog helpers run on the data plane ---------------------------------

    async def warmed(self) -> None:
        """Once the scan modules are imported (at once, after the first time)."""
        if not self.scan_modules.is_set():
            await asyncio.to_thread(self.scan_modules.wait)

    async def _import(self, msg: ImportTask) -> None:
        await self.warmed()
        def work() -> ImportDone | ImportPlanned:
            from faas.store.files import read_source_files, write_parquet_parts
            from faas.store.importer import expand_paths, plan_files

            if msg.plan_only:
                files = expand_paths(msg.paths, self.import_roots)
                return ImportPlanned(task_id=msg.task_id, files=files,
                                     columns=plan_files(files, msg.format))
            if msg.external:
                return self._external(msg)
            table = read_source_files(msg.paths, msg.format, roots=self.import_roots,
                                      plan=msg.plan)
            if msg.create_only:
                return ImportDone(task_id=msg.task_id, files=[], rows=0,
                                  schema=table.schema.serialize().to_pybytes())
            files, _ = write_parquet_parts(
                table, msg.directory, f"import-{uuid.uuid4().hex[:8]}", threads=self.cpus,
                partitioned_by=msg.partitioned_by, what=msg.key,
            )
            return ImportDone(
                task_id=msg.task_id, files=files, rows=table.num_rows,
                schema=table.schema.serialize().to_pybytes(),
            )

        try:
            await self._send(await asyncio.to_thread(freeing(work)))
        except Exception as exc:  # noqa: BLE001 - reported to the scheduler
            await self._send(TaskFailed(task_id=msg.task_id, error=error_message(exc)))

    def _external(self, msg: ImportTask) -> ImportDone:
        """An external table's files, checked here (under the import roots): Parquet files
        with one schema, or one Iceberg table's metadata file. Blocking."""
        from faas.store.importer import external_files

        (source,) = msg.paths
        files, schema, rows = external_files(source, self.import_roots)
        return ImportDone(task_id=msg.task_id, files=files, rows=rows,
                          schema=schema.serialize().to_pybytes())

    async def _query(self, msg: QueryTask) -> None:
        await self.warmed()
        query = self.queries[msg.task_id] = Query(msg)
        loop = asyncio.get_running_loop()
        conn = self.conn

        def emit(piece: Any, rows: int) -> None:  # in the query's thread
            if conn is None or conn.closed:
                raise ConnectionClosed("the scheduler connection closed during a query")
            header = encode(QueryPart(task_id=msg.task_id, nbytes=piece.size, rows=rows))
            asyncio.run_coroutine_threadsafe(conn.send_raw(header, memoryview(piece)), loop).result()

        try:
            rows, nbytes = await asyncio.to_thread(freeing(query.run), emit)
        except QueryStopped:
            log.info("query %s stopped", msg.task_id)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the scheduler
            await self._send(TaskFailed(task_id=msg.task_id, error=error_message(exc)))
            return
        finally:
            self.queries.pop(msg.task_id, None)
        await self._send(QueryDone(task_id=msg.task_id, nbytes=nbytes, rows=rows))


def _supported(versions: Any) -> list[str]:
    """The versions faas runs on (3.11 and later), in order."""
    return sorted(
        (v for v in versions if tuple(int(x) for x in v.split(".")) >= (3, 11)),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
