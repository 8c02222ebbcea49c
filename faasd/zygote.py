"""A pre-imported parent process per environment that forks one fresh child per function.

Starting ``python -m faas.faasd.runner`` costs an interpreter start plus ``import
pyarrow`` (and pyiceberg, duckdb...) for every function. A zygote pays that
once per environment: ``<python> -m faas.faasd.zygote_server FD MODULES`` imports what
functions need, then waits on a private Unix socket. For each function the
worker sends three file descriptors (``socket.send_fds``: the task socket,
the write ends of the stdout and stderr pipes) and a small header (cwd,
environment, label); the zygote forks, and the child becomes the function
process: its own session and process group, the pipes on fd 1 and 2, the
task's cwd and environment, default signal handlers, then
:func:`faasd.runner.serve_task` and ``os._exit``. Every function still gets a
fresh OS process; the imports are inherited copy-on-write.

The zygote answers each request with the child's pid, reaps its children and
reports each exit (subprocess convention: ``-N`` when killed by signal N).
If the zygote dies, the worker sees EOF on the socket: every child it had is
reported lost (:class:`ZygoteDied`) and killed, and the next spawn starts a
new zygote. If the worker goes away, the zygote sees EOF, kills its children
and exits.

Fork safety: the zygote must be single-threaded when it forks. Importing
pyarrow starts one thread, the bundled jemalloc's background purging thread
(``jemalloc_bg_thd``); the zygote is started with
``JE_ARROW_MALLOC_CONF=background_thread:false`` so it has none. Arrow's CPU
and I/O thread pools start on first use, never on import, and the zygote runs
no Arrow code. Nothing else in the preload list starts a thread (measured:
``/proc/self/task`` holds one entry). :class:`Ready` reports the count.

Wire format: frames of ``protocol.framing`` (length prefix + msgpack). This
channel never leaves the host and both ends are this module, so its messages
live here rather than in ``protocol/``. The three descriptors travel as
ancillary data with the first bytes of their Spawn frame; the kernel never
delivers them after those bytes, so the zygote queues descriptors and takes
three per Spawn frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Self

from faas.faasd.sandbox import SandboxSpec
from faas.faasd.zygote_wire import (
    DEFAULT_PRELOAD,
    FROM_ZYGOTE,
    JEMALLOC_CONF,
    NO_JEMALLOC_THREAD,
    Exited,
    FromZygote,
    Ready,
    Spawn,
    Spawned,
    SpawnFailed,
    ZygoteDied,
    ZygoteStartFailed,
    describe_exit,
    kill_group,
    kill_zygote,
)
from faas.protocol.errors import ClosedByUs, FrameTooLarge, FunctionFailed, MalformedFrame
from faas.protocol.framing import decode_payload, encode, next_frame

log = logging.getLogger("faasd.zygote")

# Imported by every zygote; it cannot serve without them.

# -- worker side -------------------------------------------------------------------


class _ChannelClosed(Exception):
    pass


class Zygote:
    """The worker's handle on one environment's zygote (asyncio).

    ``start()`` and ``close()`` are safe to call twice; ``spawn()`` starts the
    zygote if it is not running (first use, or after it died).
    """

    def __init__(
        self,
        python: str | None = None,
        *,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 120.0,
        spawn_timeout: float = 30.0,
        retry_after: float = 30.0,
    ) -> None:
        self.python = python or sys.executable
        self.preload = tuple(preload)
        self.env = dict(env) if env is not None else None
        self.start_timeout = start_timeout
        self.spawn_timeout = spawn_timeout
        # After a failed start, start() raises the same error for this long
        # instead of paying for another failed start on every spawn.
        self.retry_after = retry_after
        self._start_failure: tuple[float, ZygoteStartFailed] | None = None
        # new → running ⇄ dead → closing → closed
        self.status = "new"
        self.ready: Ready | None = None
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._reader: asyncio.Task[None] | None = None
        self._ready_wait: asyncio.Future[FromZygote] | None = None
        self._cleanup: asyncio.Future[int | None] | None = None
        self._log_pump: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._pending: dict[int, asyncio.Future[int]] = {}
        # child pid → its exit code, or the ZygoteDied that lost it
        self._exits: dict[int, asyncio.Future[int | ZygoteDied]] = {}
        # children nobody will wait for: their exit record goes when they exit
        self._forgotten: set[int] = set()
        self._req = itertools.count(1)
        self._start_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Zygote {self.python} pid={self.pid} {self.status}>"

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    @property
    def alive(self) -> bool:
        return self.status == "running" and self._proc is not None and self._proc.returncode is None

    @property
    def children(self) -> list[int]:
        """Pids of the function processes still running."""
        return [pid for pid, fut in self._exits.items() if not fut.done()]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote and wait until it has imported everything; no-op when running."""
        if self.status in ("closing", "closed"):
            raise ClosedByUs(f"the zygote for {self.python} is closed")
        async with self._start_lock:
            if self.status == "running":
                return
            if self._reader is not None:  # a dead one: let it finish reporting its children lost
                await self._reader
                self._reader = None
            if self.status in ("closing", "closed"):
                raise ClosedByUs(f"the zygote for {self.python} is closed")
            if self._start_failure is not None:
                failed_at, err = self._start_failure
                if time.monotonic() - failed_at < self.retry_after:
                    raise err
            try:
                await self._launch()
            except ZygoteStartFailed as exc:
                self._start_failure = (time.monotonic(), exc)
                raise
            self._start_failure = None

    def _zygote_env(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        conf = env.get(JEMALLOC_CONF)
        env[JEMALLOC_CONF] = f"{conf},{NO_JEMALLOC_THREAD}" if conf else NO_JEMALLOC_THREAD
        return env

    async def _launch(self) -> None:
        t0 = time.perf_counter()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "faas.faasd.zygote_server", str(child.fileno()), ",".join(self.preload),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(),),
                env=self._zygote_env(),
                # Not the worker's directory: it would be first on the zygote's path, and
                # a sandbox shows the directories of its Python's path.
                cwd="/",
                # Out of the worker's session: a Ctrl-C on the worker's terminal
                # is for the worker, which then closes its zygotes.
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._proc, self._sock, self._buf = proc, parent, bytearray()
        self._tail.clear()
        assert proc.stderr is not None
        self._log_pump = asyncio.create_task(self._pump_log(proc.pid, proc.stderr))
        self.starts += 1
        # A task of its own, so that close() can stop the wait (and only the wait).
        ready = self._ready_wait = asyncio.ensure_future(self._recv())
        try:
            await asyncio.wait({ready}, timeout=self.start_timeout)
        except BaseException:  # our caller gave up: leave nothing running
            ready.cancel()
            self._abort()
            self._cleanup = asyncio.ensure_future(self._stop_process())
            raise
        finally:
            self._ready_wait = None
        if not ready.done():
            ready.cancel()
            await asyncio.wait({ready})  # let it leave the socket before the socket closes
        msg: FromZygote | None = None
        why: str | None = None
        if ready.cancelled():
            why = "did not become ready in time"
        elif ready.exception() is not None:
            log.debug("zygote %d: no Ready: %r", proc.pid, ready.exception())
        else:
            msg = ready.result()
            if not isinstance(msg, Ready):
                self._abort()
                why = f"sent {type(msg).__name__} before it was ready"
        if self.status in ("closing", "closed") or not isinstance(msg, Ready):
            code = await self._stop_process()
            if self.status in ("closing", "closed"):
                raise ClosedByUs(f"the zygote for {self.python} was closed while it started")
            self.status = "dead"
            raise ZygoteStartFailed(
                f"the zygote for {self.python} {why or describe_exit(code)} before it was ready",
                detail="\n".join(self._tail),
            )
        self.ready = msg
        self.status = "running"
        self._reader = asyncio.create_task(self._read_loop())
        log.info(
            "zygote %d for %s ready in %.0f ms (imports %.0f ms, %d thread(s))%s",
            msg.pid, self.python, (time.perf_counter() - t0) * 1000, msg.seconds * 1000,
            msg.threads, f"; not preloaded: {', '.join(msg.skipped)}" if msg.skipped else "",
        )
        for name, why in msg.skipped.items():
            log.debug("zygote %d did not preload %s: %s", msg.pid, name, why)

    async def close(self) -> None:
        """Kill every function process of this zygote, stop the zygote. Idempotent."""
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        try:
            if self._ready_wait is not None:  # a start in progress: it sees "closing" and stops
                self._ready_wait.cancel()
                await asyncio.wait({self._ready_wait})
            for pid in self.children:
                kill_group(pid)
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
            await self._stop_process()
            if self._cleanup is not None:
                await self._cleanup
            self._fail_all(ZygoteDied(self.python, self.pid, "was closed"))
        finally:
            self.status = "closed"

    def _stop_process(self) -> Coroutine[Any, Any, int | None]:
        """Close the channel (the zygote exits on EOF), kill it if it lingers, reap it.

        Bound to the current process now, not when the coroutine first runs.
        """
        return self._stop(self._proc, self._sock, self._log_pump)

    @staticmethod
    async def _stop(
        proc: asyncio.subprocess.Process | None,
        sock: socket.socket | None,
        log_pump: asyncio.Task[None] | None,
        grace: float = 5.0,
    ) -> int | None:
        if sock is not None:
            sock.close()
        code: int | None = None
        if proc is not None:
            try:
                code = await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                kill_zygote(proc)
                code = await proc.wait()
        if log_pump is not None:
            with contextlib.suppress(TimeoutError):  # a child still holds the zygote's stderr
                await asyncio.wait_for(log_pump, grace)
        return code

    async def _pump_log(self, pid: int, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # over the limit: drop the rest of it
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self._tail.append(text)
            log.info("zygote %d: %s", pid, text)

    # -- channel -------------------------------------------------------------------

    async def _recv(self) -> FromZygote:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            payload = next_frame(self._buf)
            if payload is not None:
                return decode_payload(payload, FROM_ZYGOTE)
            try:
                data = await loop.sock_recv(sock, 65536)
            except (ConnectionError, OSError) as exc:
                raise _ChannelClosed(str(exc)) from None
            if not data:
                raise _ChannelClosed("end of stream")
            self._buf += data

    async def _read_loop(self) -> None:
        try:
            while True:
                self._dispatch(await self._recv())
        except _ChannelClosed:
            pass  # it died, or is exiting
        except (FrameTooLarge, MalformedFrame) as exc:
            log.error("zygote %d for %s sent a bad frame: %s", self.pid, self.python, exc)
            self._abort()  # it broke the protocol; it is not trusted any more
        await self._on_death()

    def _dispatch(self, msg: FromZygote) -> None:
        loop = asyncio.get_running_loop()
        match msg:
            case Spawned(req=req, pid=pid):
                fut = self._pending.pop(req, None)
                if fut is None or fut.done():  # the caller gave up waiting: nobody owns it
                    log.warning("zygote %d: killing unclaimed function process %d", self.pid, pid)
                    kill_group(pid)
                    return
                self._exits[pid] = loop.create_future()
                fut.set_result(pid)
            case SpawnFailed(req=req, message=message):
                fut = self._pending.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        FunctionFailed(f"the zygote could not start a function process: {message}")
                    )
            case Exited(pid=pid, code=code):
                if pid in self._forgotten:
                    self._forgotten.discard(pid)
                    self._exits.pop(pid, None)
                    return
                exit_fut = self._exits.get(pid)
                if exit_fut is not None and not exit_fut.done():
                    exit_fut.set_result(code)
            case Ready():
                log.warning("zygote %d sent Ready twice", self.pid)

    async def _on_death(self) -> None:
        if self.status == "running":
            self.status = "dead"
        code = await self._stop_process()
        err = ZygoteDied(self.python, self.pid, describe_exit(code))
        lost = self._fail_all(err)
        log.warning("%s; %d function process(es) lost", err, lost)

    def _fail_all(self, err: ZygoteDied) -> int:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        lost = 0
        for pid, exit_fut in self._exits.items():
            if not exit_fut.done():
                # Orphans now (Linux kills them through their parent-death
                # signal): make sure, with everything they started.
                kill_group(pid)
                exit_fut.set_result(err)
                lost += 1
        for pid in self._forgotten:
            self._exits.pop(pid, None)
        self._forgotten.clear()
        return lost

    async def _send(self, data: bytes, fds: Sequence[int]) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                sent = socket.send_fds(sock, [data], list(fds))
                break
            except (BlockingIOError, InterruptedError):
                # Only when the zygote has stopped reading for a while: poll.
                await asyncio.sleep(0.001)
        if sent < len(data):
            try:
                await asyncio.get_running_loop().sock_sendall(sock, data[sent:])
            except BaseException:
                # Cut off mid-frame: the stream's position is unknown now.
                self._abort()
                raise

    def _abort(self) -> None:
        """Kill the zygote; the reader then reports every child lost."""
        if self._proc is not None:
            kill_zygote(self._proc)

    # -- function processes ---------------------------------------------------------

    async def spawn(
        self,
        task_fd: int,
        stdout_fd: int,
        stderr_fd: int,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        label: str = "",
        sandbox: SandboxSpec | None = None,
    ) -> int:
        """Fork a function process serving the task socket ``task_fd``; return its pid.

        The descriptors are copied into the child; the caller closes its own.
        Raises ZygoteStartFailed if the zygote cannot start, ZygoteDied if it
        dies before answering, FunctionFailed if the fork fails.
        """
        await self.start()
        req = next(self._req)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        frame = encode(
            Spawn(req=req, cwd=cwd, env=dict(env) if env is not None else None, label=label,
                  sandbox=sandbox)
        )
        try:
            async with self._send_lock:
                if self.status == "running":
                    try:
                        await self._send(frame, (task_fd, stdout_fd, stderr_fd))
                    except OSError as exc:  # it died: the reader fails ``fut``
                        log.debug("zygote %d: spawn request not sent: %r", self.pid, exc)
                elif not fut.done():
                    fut.set_exception(ZygoteDied(self.python, self.pid, "died"))
            try:
                return await asyncio.wait_for(fut, self.spawn_timeout)
            except TimeoutError:
                self._abort()
                how = f"did not answer a spawn request in {self.spawn_timeout:g} s"
                raise ZygoteDied(self.python, self.pid, how) from None
        finally:
            self._pending.pop(req, None)

    async def wait(self, pid: int) -> int:
        """Wait for a child to exit; its exit code (-N: killed by signal N).

        Raises ZygoteDied if the zygote died first (the child was killed).
        """
        fut = self._exits.get(pid)
        if fut is None:
            raise LookupError(f"process {pid} is not a function process of {self!r}")
        # shield: a caller that stops waiting must not cancel the record.
        outcome = await asyncio.shield(fut)
        if self._exits.get(pid) is fut:
            del self._exits[pid]
        if isinstance(outcome, ZygoteDied):
            raise outcome
        return outcome

    def forget(self, pid: int) -> None:
        """Nobody will wait() for this child (its caller was cancelled): drop its exit record."""
        fut = self._exits.get(pid)
        if fut is None:
            return
        if fut.done():
            del self._exits[pid]
        else:
            self._forgotten.add(pid)

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> bool:
        """Signal a running child's process group; False if it is not running."""
        fut = self._exits.get(pid)
        if fut is None or fut.done():
            return False
        kill_group(pid, sig)
        return True


class ZygotePool:
    """One zygote per interpreter path, created on first use and closed all at once."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.zygotes: dict[str, Zygote] = {}
        self.closed = False

    def get(self, python: str | None = None) -> Zygote:
        """The zygote of ``python`` (default: this interpreter); it starts on its first spawn."""
        if self.closed:
            raise ClosedByUs("the zygote pool is closed")
        key = python or sys.executable
        zygote = self.zygotes.get(key)
        if zygote is None:
            zygote = self.zygotes[key] = Zygote(key, **self.options)
        return zygote

    async def close(self) -> None:
        self.closed = True
        await asyncio.gather(*(z.close() for z in self.zygotes.values()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


