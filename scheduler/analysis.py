"""Reading user text off the event loop: projects and query SQL.

Parsing holds the interpreter's lock for as long as it takes (``ast.parse`` of a large
file is one call), so in a thread a large text would still stall every connection,
heartbeat and run of the scheduler. An :class:`Analyzer` parses text larger than SMALL
bytes in one helper process instead (started with the first such text): the event loop
only waits for an answer, as for any I/O. Smaller text, most projects and queries, is
parsed in a thread: a few milliseconds of the lock, and no process to start. A project read lately is kept by a hash of its files, so an unchanged
re-submit (the common case while iterating) parses nothing. If the helper dies on some
input (a parser out of memory, say), that input gets a one-line error and the next one a
new helper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from faas.protocol.errors import InvalidInput
from faas.scheduler.reader import Project, read_project
from faas.store.lakehouse import Recent

log = logging.getLogger(__name__)

T = TypeVar("T")

# Text this small is parsed in a thread: it holds the interpreter's lock a few milliseconds.
SMALL = 256 * 1024


def project_digest(files: dict[str, str]) -> str:
    """A hash of a project's files (names and contents)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{len(name)}:{name}{len(files[name])}:".encode())
        h.update(files[name].encode())
    return h.hexdigest()


def _warm() -> None:
    """What the helper imports before its first request (the query parser's DuckDB)."""
    import faas.store.query  # noqa: F401


def _tables(sql: str) -> list[str]:
    from faas.store.query import referenced_tables

    return referenced_tables(sql)


class Analyzer:
    """One helper process that reads projects and query SQL for the scheduler."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._projects: Recent = Recent(16)

    def start(self) -> None:
        """Start the helper (if it is not running), warming it up in the background."""
        if self._pool is None:
            # spawn: the scheduler has threads, and a fork would copy their locks.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            )
            self._pool.submit(_warm)

    async def project(self, files: dict[str, str]) -> Project:
        """The project these files make (read partially: problems are kept in it)."""
        digest = await asyncio.to_thread(project_digest, files)
        found = self._projects.get(digest)
        if found is None:
            if sum(len(text) for text in files.values()) <= SMALL:
                found = await asyncio.to_thread(read_project, files, partial=True)
            else:
                found = await self._call(
                    read_project, files, what="the project could not be read", partial=True
                )
            self._projects[digest] = found
        return found  # type: ignore[no-any-return]

    async def tables(self, sql: str) -> list[str]:
        """The tables a query reads (store.query.referenced_tables)."""
        if len(sql) <= SMALL:
            return await asyncio.to_thread(_tables, sql)
        return await self._call(_tables, sql, what="the query could not be read")

    async def _call(self, fn: Callable[..., T], *args: Any, what: str, **kwargs: Any) -> T:
        self.start()
        assert self._pool is not None
        pool = self._pool
        try:
            future = pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            future = self._restart(pool).submit(fn, *args, **kwargs)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._restart(pool)
            raise InvalidInput(f"{what}: reading it stopped the scheduler's parser process") from None

    def _restart(self, broken: concurrent.futures.ProcessPoolExecutor) -> (
        concurrent.futures.ProcessPoolExecutor
    ):
        if self._pool is broken:
            log.warning("the parser process died; starting another")
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.start()
        assert self._pool is not None
        return self._pool

    def close(self) -> None:
        """Stop the helper, a parse in flight too."""
        pool, self._pool = self._pool, None
        if pool is not None:
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()


__all__ = ["Analyzer", "project_digest"]
