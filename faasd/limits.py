"""Watch a function process's memory and stop it when it goes past its limit.

Memory is the process tree's unique set size: pages only it holds. Pages it
shares with other processes (an input object several functions map, the
pre-imported parent's pages) are not counted against it; a mapped input no
other process maps is, so the scheduler puts mapped inputs into the limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import psutil

log = logging.getLogger(__name__)

INTERVAL = 0.05


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


async def watch_memory(pid: int, limit: int, on_exceed: Callable[[int], None]) -> int:
    """Poll until the process ends; call ``on_exceed(used)`` once if it passes ``limit``.

    Returns the peak seen.
    """
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    peak = 0
    while True:
        try:
            # Reading smaps of a process with gigabytes mapped takes tens of milliseconds:
            # not on the worker's event loop.
            used = await asyncio.to_thread(private_bytes, proc)
        except psutil.NoSuchProcess:
            return peak
        peak = max(peak, used)
        if limit and used > limit:
            log.info("process %d used %d bytes, over its limit of %d", pid, used, limit)
            on_exceed(used)
            return peak
        await asyncio.sleep(INTERVAL)
