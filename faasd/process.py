"""Start one function process, stream its output lines, and collect its reply.

Two ways to start it, same behaviour after: a fresh interpreter
(``python -m faas.faasd.runner FD``), or — with a :class:`faasd.zygote.Zygote` —
a child forked from the environment's pre-imported zygote, which starts in
milliseconds instead of an interpreter start plus ``import pyarrow``. Either
way the function gets a fresh OS process in its own process group, its
stdout/stderr come back line by line as they are written, and its task and
reply travel over a private socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from faas.faasd.sandbox import SandboxSpec
from faas.faasd.zygote import Zygote
from faas.faasd.zygote_wire import ZygoteDied, ZygoteStartFailed, describe_exit
from faas.protocol.errors import FunctionFailed, RunCancelled
from faas.protocol.framing import encode, read_frame
from faas.protocol.messages import Error
from faas.protocol.worker_messages import FunctionReply, FunctionResult, FunctionTask, TaskObjects

log = logging.getLogger(__name__)

_reply_decoder = msgspec.msgpack.Decoder(FunctionReply)

LineSink = Callable[[str, str], Awaitable[None]]
MAX_LINE = 64 * 1024

# Kept under its old name for callers of this module.
_describe_exit = describe_exit


class FunctionProcess:
    """One fresh OS process running one function of one run."""

    def __init__(
        self,
        task: FunctionTask,
        *,
        python: str | None = None,
        cwd: str | None = None,
        zygote: Zygote | None = None,
        env: dict[str, str] | None = None,
        sandbox: SandboxSpec | None = None,
    ):
        self.task = task
        # The function's whole environment (None: this process's); its sandbox (None: none).
        self.environ = env
        self.sandbox = sandbox
        self.python = python or (zygote.python if zygote is not None else sys.executable)
        self.cwd = cwd
        self.zygote = zygote
        self.proc: asyncio.subprocess.Process | None = None
        self.cancelled = False
        # Set when the process came from the zygote (self.proc stays None then).
        self._forked_pid = 0

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        return self._forked_pid

    def _env(self) -> dict[str, str]:
        env = dict(os.environ if self.environ is None else self.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["FAAS_RUN_ID"] = self.task.run_id
        env["FAAS_MODEL"] = self.task.node
        return env

    async def _pump(self, stream: asyncio.StreamReader, name: str, sink: LineSink) -> None:
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raw = exc.partial
                if not raw:
                    return
            except asyncio.LimitOverrunError as exc:
                # A very long line without a newline: pass it on in pieces.
                raw = await stream.readexactly(exc.consumed)
            await sink(name, raw.decode("utf-8", "replace").rstrip("\r\n"))

    async def _exec(
        self, child: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamReader]:
        """A fresh interpreter: ``python -m faas.faasd.runner FD``."""
        sandbox = [] if self.sandbox is None else [msgspec.json.encode(self.sandbox).decode()]
        self.proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "faas.faasd.runner", str(child.fileno()), *sandbox,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(child.fileno(),),
            env=self._env(),
            cwd=self.cwd,
            limit=MAX_LINE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        return self.proc.stdout, self.proc.stderr

    async def _fork(
        self, zygote: Zygote, child: socket.socket, transports: list[asyncio.BaseTransport]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamReader]:
        """A child of the zygote, its stdout/stderr on pipes read here."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._forked_pid = await zygote.spawn(
                child.fileno(), out_w, err_w, cwd=self.cwd, env=self._env(),
                label=f"faas:{self.task.node}", sandbox=self.sandbox,
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            # The child has its own copies: EOF comes when it (and whatever it started) is gone.
            os.close(out_w)
            os.close(err_w)
        loop = asyncio.get_running_loop()
        pending = [out_r, err_r]
        readers = []
        try:
            while pending:
                pipe = open(pending[0], "rb", buffering=0)  # noqa: ASYNC230 - wraps a pipe: no I/O
                pending.pop(0)
                reader = asyncio.StreamReader(limit=MAX_LINE)
                try:
                    transport, _ = await loop.connect_read_pipe(
                        functools.partial(asyncio.StreamReaderProtocol, reader), pipe
                    )
                except BaseException:
                    pipe.close()
                    raise
                transports.append(transport)
                readers.append(reader)
        finally:
            for fd in pending:
                os.close(fd)
        return readers[0], readers[1]

    async def run(
        self, sink: LineSink, started: Callable[[int], Awaitable[None]],
        waited: Coroutine[Any, Any, dict[str, str]] | None = None,
    ) -> FunctionResult:
        """Run to completion; raise FunctionFailed with the user's traceback or the exit status.

        ``waited`` gives the paths of the task's waiting objects once they exist; they are
        sent to the running function then. If it raises, the function is stopped and the
        error is this call's."""
        parent, child = socket.socketpair()
        transports: list[asyncio.BaseTransport] = []
        try:
            try:
                if self.zygote is not None:
                    try:
                        stdout, stderr = await self._fork(self.zygote, child, transports)
                    except ZygoteStartFailed as exc:
                        # A fresh interpreter reports whatever is wrong with this
                        # environment through the usual channels.
                        log.warning("%s; starting model %r in a fresh interpreter\n%s",
                                    exc, self.task.node, exc.detail)
                        stdout, stderr = await self._exec(child)
                    except ZygoteDied as exc:
                        raise FunctionFailed(
                            f"the process of model {self.task.node!r} could not start: "
                            f"the function's parent process died ({exc})"
                        ) from exc
                else:
                    stdout, stderr = await self._exec(child)
            finally:
                child.close()
        except BaseException:
            self.kill()
            for t in transports:
                t.close()
            parent.close()
            raise
        if self.cancelled:  # cancelled while it was starting
            self.kill()
        reply: FunctionResult | Error | None = None
        lost: ZygoteDied | None = None
        code: int | None = None
        pumps: list[asyncio.Task[None]] = []
        writer: asyncio.StreamWriter | None = None
        feeder: asyncio.Task[None] | None = None
        try:
            await started(self.pid)
            pumps = [
                asyncio.create_task(self._pump(stdout, "stdout", sink)),
                asyncio.create_task(self._pump(stderr, "stderr", sink)),
            ]
            reader, writer = await asyncio.open_connection(sock=parent)
            try:
                writer.write(encode(self.task))
                await writer.drain()
                if waited is not None:
                    feeder = asyncio.create_task(self._feed(writer, waited))
                    waited = None
                reply = await read_frame(reader, _reply_decoder)
            except Exception as exc:  # noqa: BLE001 - the process died before answering
                log.debug("no reply from %s: %r", self.task.node, exc)
            if self.proc is not None:
                code = await self.proc.wait()
            else:
                assert self.zygote is not None
                try:
                    code = await self.zygote.wait(self._forked_pid)
                except ZygoteDied as exc:
                    lost = exc
            await asyncio.gather(*pumps)
        finally:
            self.kill()
            if waited is not None:
                waited.close()  # never started: the process died before its task was sent
            if feeder is not None and not feeder.done():
                feeder.cancel()
            if writer is not None:
                writer.close()
            if self.zygote is not None and self._forked_pid:
                self.zygote.forget(self._forked_pid)  # a no-op once wait() has returned
            for p in pumps:
                p.cancel()
            for t in transports:
                t.close()
            parent.close()
        if self.cancelled:
            raise RunCancelled(f"model {self.task.node!r} was cancelled")
        if feeder is not None and feeder.done() and not feeder.cancelled():
            if (failed := feeder.exception()) is not None:
                raise failed  # its inputs could not be had: that is why it stopped
        if isinstance(reply, Error):
            raise FunctionFailed(reply.message, detail=reply.detail)
        if reply is None and lost is not None:
            raise FunctionFailed(
                f"the process of model {self.task.node!r} was lost before it finished: "
                f"the function's parent process died ({lost})"
            ) from lost
        if reply is None:
            raise FunctionFailed(
                f"the process of model {self.task.node!r} {describe_exit(code)} before it finished"
            )
        # A reply with ``lost`` set: the function finished and answered, then
        # its zygote died before reporting the exit. The output is complete.
        return reply

    async def _feed(
        self, writer: asyncio.StreamWriter, waited: Coroutine[Any, Any, dict[str, str]]
    ) -> None:
        """Send the waiting objects' paths once they exist; stop the function if they
        cannot be had."""
        try:
            objects = await waited
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.kill()
            raise
        try:
            writer.write(encode(TaskObjects(objects=objects)))
            await writer.drain()
        except OSError as exc:  # it is gone already: its exit says why
            log.debug("could not send %s its inputs: %r", self.task.node, exc)

    def kill(self) -> None:
        """SIGKILL the function's whole process group, if it is still running."""
        if self.zygote is not None and self._forked_pid:
            self.zygote.kill(self._forked_pid)
        elif self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cancel(self) -> None:
        self.cancelled = True
        self.kill()
