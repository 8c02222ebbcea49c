"""Watch a function process's memory and stop it when it goes past its limit.

Memory is the process tree's unique set size: pages only it holds. Pages it
shares with other processes (an input object several functions map, the
pre-imported parent's pages) are not counted against it; a mapped input no
other process maps is, so the scheduler puts mapped inputs into the limit.
A sandboxed function's scratch directory (its ``/tmp``, a tmpfs: memory too)
counts as well (:class:`Scratch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)

INTERVAL = 0.05
# How often, and for how long after a start, the sandbox's /tmp is looked for.
FIND_SCRATCH_EVERY = 0.002
FIND_SCRATCH_FOR = 2.0


def private_bytes(proc: psutil.Process) -> int:
    """Unique memory of a process and its children (RSS where USS is not readable)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            try:
                total += p.memory_full_info().uss
            except (psutil.AccessDenied, AttributeError):
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


_PAGE = os.sysconf("SC_PAGE_SIZE")


# Kernels built without CONFIG_PROC_CHILDREN lack /proc/PID/task/TID/children.
_CHILDREN_LISTED = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from each thread's ``/proc/PID/task/TID/children``
    (microseconds; psutil's ``children()`` reads every process on the host instead)."""
    if not _CHILDREN_LISTED:
        try:
            return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            return []
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # it (or a thread of it) is gone meanwhile
            continue
    return found


def resident_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants, shared pages included: never less
    than :func:`private_bytes`, and read without walking their page maps."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


class Scratch:
    """The bytes in a sandboxed function's ``/tmp``: a tmpfs of ``size`` bytes in its own
    mount namespace (faasd/sandbox.py), found through ``/proc/PID/root`` of a process
    of the sandbox. The descriptor kept on it outlives the sandbox, so what it held
    when the function ended can still be read then."""

    def __init__(self, pid: int, size: int) -> None:
        self.pid = pid
        self.blocks = -(-size // _PAGE)
        self.fd: int | None = None

    def used(self) -> int:
        if self.fd is None:
            self._find()
            if self.fd is None:
                return 0
        try:
            st = os.fstatvfs(self.fd)
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def full(self) -> bool:
        """Whether it was (nearly) filled: the sandbox refuses writes past its size."""
        return self.used() >= (self.blocks - 1) * _PAGE

    def _find(self) -> None:
        # The sandboxed process is a child of the one the worker started (faasd.sandbox);
        # until it has built its root, its /tmp is another filesystem, of another size.
        for p in _tree(self.pid)[1:]:
            try:
                fd = os.open(f"/proc/{p}/root/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstatvfs(fd)
            if st.f_blocks * st.f_frsize == self.blocks * _PAGE and st.f_frsize == _PAGE:
                self.fd = fd
                return
            os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def watch_memory(
    pid: int, limit: Callable[[], int], on_exceed: Callable[[int], None],
    scratch: Scratch | None = None,
) -> None:
    """Poll until the process ends; call ``on_exceed(used)`` once if it passes ``limit()``
    (asked at each poll: the limit may grow; 0 is none). ``scratch``: its sandbox's
    scratch directory, whose bytes count too."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    # Until the sandbox's /tmp is found, look for it often: a function that fills it and
    # ends between two polls must still be known to have filled it.
    eager_until = time.monotonic() + FIND_SCRATCH_FOR
    while True:
        now = limit()
        # Resident memory bounds the private memory from above and costs microseconds: the
        # page maps are read only when it passes the limit.
        written = scratch.used() if scratch is not None else 0
        used = resident_bytes(pid) + written
        if now and used > now:
            try:
                # Reading smaps of a process with gigabytes mapped takes tens of
                # milliseconds: not on the worker's event loop.
                used = await asyncio.to_thread(private_bytes, proc) + written
            except psutil.NoSuchProcess:
                return
            if used > now:
                log.info("process %d used %d bytes, over its limit of %d", pid, used, now)
                on_exceed(used)
                return
        elif not proc.is_running():
            return
        finding = scratch is not None and scratch.fd is None and time.monotonic() < eager_until
        await asyncio.sleep(FIND_SCRATCH_EVERY if finding else INTERVAL)
