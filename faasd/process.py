"""Start one function process, stream its output lines, and collect its reply."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Awaitable, Callable

import msgspec

from protocol.errors import FunctionFailed
from protocol.framing import encode, read_frame
from protocol.messages import Error, FunctionReply, FunctionResult, FunctionTask

log = logging.getLogger(__name__)

_reply_decoder = msgspec.msgpack.Decoder(FunctionReply)

LineSink = Callable[[str, str], Awaitable[None]]
MAX_LINE = 64 * 1024


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class FunctionProcess:
    """One fresh OS process running one function of one run."""

    def __init__(self, task: FunctionTask, *, python: str | None = None, cwd: str | None = None):
        self.task = task
        self.python = python or sys.executable
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.cancelled = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

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

    async def run(self, sink: LineSink, started: Callable[[int], Awaitable[None]]) -> FunctionResult:
        """Run to completion; raise FunctionFailed with the user's traceback or the exit status."""
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["FAAS_RUN_ID"] = self.task.run_id
        env["FAAS_MODEL"] = self.task.node
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "faasd.runner", str(child.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(),),
                env=env,
                cwd=self.cwd,
                limit=MAX_LINE,
                start_new_session=True,
            )
        finally:
            child.close()
        await started(self.proc.pid)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(self.proc.stdout, "stdout", sink)),
            asyncio.create_task(self._pump(self.proc.stderr, "stderr", sink)),
        ]
        reply: FunctionResult | Error | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=parent)
            writer.write(encode(self.task))
            await writer.drain()
            try:
                reply = await read_frame(reader, _reply_decoder)
            except Exception as exc:  # noqa: BLE001 - the process died before answering
                log.debug("no reply from %s: %r", self.task.node, exc)
            writer.close()
            code = await self.proc.wait()
            await asyncio.gather(*pumps)
        finally:
            self.kill()
            for p in pumps:
                p.cancel()
            parent.close()
        if self.cancelled:
            from protocol.errors import RunCancelled

            raise RunCancelled(f"model {self.task.node!r} was cancelled")
        if isinstance(reply, Error):
            raise FunctionFailed(reply.message, detail=reply.detail)
        if reply is None:
            raise FunctionFailed(
                f"the process of model {self.task.node!r} {_describe_exit(code)} before it finished"
            )
        return reply

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cancel(self) -> None:
        self.cancelled = True
        self.kill()
