"""What the worker and a zygote share: the messages of their private channel and helpers.

The worker side is :mod:`faasd.zygote`; the zygote side is :mod:`faasd.zygote_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import msgspec

from faas.faasd.sandbox import SANDBOX_FAILED, SandboxSpec
from faas.protocol.errors import EnvironmentFailed, FunctionFailed

log = logging.getLogger("faasd.zygote")

# Imported by every zygote; it cannot serve without them.

REQUIRED = ("pyarrow", "pyarrow.ipc", "msgspec", "faas.faasd.runner")
# Imported when they import cleanly; a failure is logged and reported in Ready.
# Measured with pyarrow 26 / pyiceberg 0.12 / duckdb 2.0 on Python 3.11: the
# required set costs ~70 ms in-process, these ~360 ms more (store.scan, which
# imports pyiceberg, ~250 ms of it); a child inherits all of it for free.
DEFAULT_PRELOAD = (
    "pyarrow.compute",
    "faas",
    "duckdb",
    "faas.store.scan",
    "faas.store.query",
    "pyiceberg.io.pyarrow",
)

# jemalloc (bundled with pyarrow) starts a background purging thread on
# import; a process must have a single thread when it forks.
JEMALLOC_CONF = "JE_ARROW_MALLOC_CONF"
NO_JEMALLOC_THREAD = "background_thread:false"


# -- messages (worker ↔ zygote) ------------------------------------------------


class ZygoteMessage(msgspec.Struct, frozen=True, tag_field="op", kw_only=True):
    """Base of the messages on a worker's private channel to one of its zygotes."""


class Spawn(ZygoteMessage, frozen=True):
    """Fork a function process; three descriptors travel with this frame (task, stdout, stderr)."""

    req: int
    cwd: str | None = None
    # The child's whole environment; None keeps the zygote's.
    env: dict[str, str] | None = None
    # Shown as the process name (Linux, 15 bytes at most).
    label: str = ""
    # The sandbox the child runs in (faasd/sandbox.py); None: none.
    sandbox: SandboxSpec | None = None


class Ready(ZygoteMessage, frozen=True):
    pid: int
    seconds: float
    preloaded: list[str]
    # module → why it did not import
    skipped: dict[str, str]
    threads: int


class Spawned(ZygoteMessage, frozen=True):
    req: int
    pid: int


class SpawnFailed(ZygoteMessage, frozen=True):
    req: int
    message: str


class Exited(ZygoteMessage, frozen=True):
    pid: int
    # subprocess convention: the exit status, or -N when killed by signal N.
    code: int


FromZygote = Ready | Spawned | SpawnFailed | Exited

FROM_ZYGOTE: msgspec.msgpack.Decoder[FromZygote] = msgspec.msgpack.Decoder(FromZygote)
TO_ZYGOTE = msgspec.msgpack.Decoder(Spawn)


# -- errors ----------------------------------------------------------------------


class ZygoteDied(FunctionFailed):
    """The zygote died (or was closed) while it had function processes or requests."""

    def __init__(self, python: str, pid: int, how: str) -> None:
        super().__init__(f"the zygote (pid {pid}) for {python} {how}")
        self.python = python
        self.pid = pid
        self.how = how


class ZygoteStartFailed(EnvironmentFailed):
    """The zygote did not start or did not become ready; ``detail`` has its last output."""


# -- helpers shared by both sides --------------------------------------------------


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == SANDBOX_FAILED:
        return (f"could not build its sandbox (exit code {code}; what the kernel refused is "
                "the last line of its output)")
    return f"exited with code {code}"


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid``, or ``pid`` alone before it has made its group."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        # A child signals its group into existence with setsid() right after
        # fork; until then only the child itself exists.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_zygote(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        # Not Process.kill(): Popen.send_signal() polls first and so may reap
        # the zygote here, racing asyncio's child watcher, which then reports
        # exit code 255 instead of the real status.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


