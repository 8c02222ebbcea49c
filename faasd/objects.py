"""The worker's object store: immutable Arrow IPC files in shared memory.

Every output of a function is one file, ``<root>/objects/<object id>.arrow``,
written once by the function process and then only ever mapped
(``pyarrow.memory_map``): readers on this host share its pages, so four
readers of an object use one object's memory. Source-table columns cached by
function processes live beside them in ``<root>/columns`` (faasd/columns.py).

Objects are pinned by the runs that use them and unpinned when a run is
released. Unpinned entries stay as a cache, least recently used first out,
under the store's memory budget: objects over the budget are spilled to local
disk (still served and mapped from there, and moved back when used again),
columns are dropped (storage has them). Spilled objects over the disk budget
are deleted last.

Every process that reads an object holds a shared ``flock`` on its file for as
long as it may touch the bytes (:func:`hold`): the function processes that map
it, the peer server sending it, the worker writing its Parquet file. The kernel
keeps that count of readers, and drops a reader's lock when the process dies
however it dies. A deleted object that no process holds keeps its pages: its
file moves to ``<root>/free`` and the next object pulled from another host is
received into those pages rather than into freshly allocated ones, which is
what a transfer into shared memory mostly costs (as Ray's plasma store reuses
its arena). Once the worker pulls objects, a kept file is also mapped into it,
every page's entry made (``MAP_POPULATE``), on a thread of its own as soon as it is
kept: a pull then receives straight into pages that are already mapped, one copy of
each byte, as into a preallocated buffer. The free pages count against the store's budget and
are the first thing given back when memory is needed.

Every method runs on the worker's event loop but :meth:`ObjectStore.claim`, which a pull
calls from its thread; files move in a thread, and kept pages are mapped on a thread of
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_COLUMN_FILE = re.compile(r"col-[0-9a-f]{32}\.arrow")
# Keep this much of the shm filesystem free whatever the budget says.
SHM_RESERVE = 64 * 2**20
# Deleted objects' pages kept for reuse: at most this share of the budget...
FREE_SHARE = 4
# ...and only files at least this large (small ones cost little to allocate afresh).
FREE_MIN = 4 * 2**20
# Mappings of kept and pulled objects' pages (Pages) a worker keeps at most, made or being
# made: each holds a file descriptor (Python's mmap keeps a duplicate) and page tables.
MAPPED_MAX = 256


def hold(path: str | os.PathLike[str]) -> int:
    """Open an object file for reading and hold a shared lock on it for as long as the
    returned fd is open (by this process or any child that inherits it).

    The store reuses an object's pages only when it can lock the file exclusively, so
    holding this fd keeps the bytes behind every mapping of the object stable. Raises
    FileNotFoundError if the object was deleted before the lock was taken."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # Deleted (and perhaps already reused) between the open and the lock?
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(f"object file {path} was replaced while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def holding(path: str | os.PathLike[str]) -> Iterator[int]:
    """:func:`hold` for the length of a ``with`` block."""
    fd = hold(path)
    try:
        yield fd
    finally:
        os.close(fd)


class Pages:
    """This worker's writable mapping of one object file's pages in shared memory, made on
    the pages thread with every page-table entry filled (``MAP_POPULATE``), and only when
    the file has no hole, is worth it (FREE_MIN) and a slot is free (MAPPED_MAX). The file
    may shrink later (a pull into it truncates it to the new object's size), so a writer
    through the mapping keeps to :func:`backed` bytes of the file as it finds it: those
    never need a new page, so they cannot fault for want of room. A pull receives into it
    in place. Whoever holds a Pages hands it on (to an entry, to the free list, to a pull)
    or calls :meth:`done`."""

    def __init__(self) -> None:
        self._made: Future[mmap.mmap | None] | None = None
        self.inode = -1  # of the file mapped (-1: none)
        self._own = -1  # the file the mapping is made from, until the pages thread takes it

    @classmethod
    def map(cls, fd: int) -> Pages:
        """Start mapping the file open at ``fd`` (which stays the caller's), if it is worth
        it and a slot is free. The mapping holds a file of its own, opened anew: a lock
        taken through ``fd`` (the store's exclusive one while it recycles a file) must not
        live on in it, or every reader's shared lock would wait for it."""
        pages = cls()
        if backed(fd) < FREE_MIN or not _slots.take():
            return pages
        try:
            pages._own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
            pages.inode = os.fstat(fd).st_ino
            pages._made = _pages().submit(pages._map)
        except (OSError, RuntimeError):  # no procfs, or the interpreter is shutting down
            pages._let_go()
            return cls()
        return pages

    def mapping(self) -> mmap.mmap | None:
        """The mapping, waiting for it if it is still being made; None if there is none."""
        return self._made.result() if self._made is not None else None

    def done(self) -> None:
        """Nothing will touch the mapping again: it is unmapped now, so pages being given
        back are free when this returns (a mapping not yet begun is never made; one being
        made is unmapped as soon as it is). Every view of it must have been released."""
        if self._made is None:
            return
        made, self._made, self.inode = self._made, None, -1
        if made.cancel():  # never begun: its file and slot are let go here
            self._let_go()
        else:
            made.add_done_callback(_unmap)  # called here and now if it is made

    def __del__(self) -> None:  # a holder that forgot: the slot and pages come back
        with contextlib.suppress(Exception):  # at exit, what it needs may be gone already
            self.done()

    def _map(self) -> mmap.mmap | None:
        """On the pages thread: the mapping, or None (the slot given back)."""
        made = None
        try:
            if (size := backed(self._own)) >= FREE_MIN:
                made = mmap.mmap(
                    self._own, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                )
        except Exception as exc:  # a pull waits for this: it must not fail it
            log.debug("kept pages not mapped: %s", exc)
        finally:
            if made is None:
                self._let_go()
            else:
                os.close(self._own)
                self._own = -1
        return made

    def _let_go(self) -> None:
        if self._own >= 0:
            os.close(self._own)
            self._own = -1
        _slots.give()


class _Slots:
    """How many Pages may hold a mapping, made or being made (each holds a descriptor)."""

    def __init__(self) -> None:
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= MAPPED_MAX:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


_slots = _Slots()


def backed(fd: int) -> int:
    """How many bytes of the file ``fd``, from its start, lie in allocated pages: its size
    if it has no hole, else 0."""
    try:
        size = os.fstat(fd).st_size
        return size if size and os.lseek(fd, 0, os.SEEK_HOLE) >= size else 0
    except OSError:  # no SEEK_HOLE here: nothing is known to be allocated
        return 0


def _unmap(made: Future[mmap.mmap | None]) -> None:
    if not made.cancelled() and made.exception() is None and (m := made.result()) is not None:
        m.close()
        _slots.give()


_pager: ThreadPoolExecutor | None = None
_pager_lock = threading.Lock()


def _forget(path: Path, pages: Pages | None) -> None:
    """Delete a kept file taken off the free list (outside its lock, so that no pull's
    claim waits for this): its pages are given back now (or, if it is still being mapped,
    once the pages thread has mapped and unmapped it)."""
    if pages is not None:
        pages.done()
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete free pages %s: %s", path, exc)


def _pages() -> ThreadPoolExecutor:
    """The thread that maps kept pages, off the event loop and off every pull's path."""
    global _pager
    with _pager_lock:
        if _pager is None:
            _pager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faas-pages")
        return _pager


@dataclass
class Entry:
    name: str
    nbytes: int
    kind: str  # "object" | "column"
    rows: int = 0
    schema: bytes = b""
    # Kept after its runs end, for runs with the same cache key.
    cacheable: bool = True
    spilled: bool = False
    # Set while its file moves between shared memory and disk; fires when the move ends.
    moving: asyncio.Event | None = None
    pins: set[str] = field(default_factory=set)
    # The worker's own mapping of the object's pages, for an object it pulled: they go on
    # to the free list with it when it is deleted.
    pages: Pages | None = None

    def unmap(self) -> None:
        if self.pages is not None:
            self.pages.done()
            self.pages = None


def shm_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class ObjectStore:
    def __init__(self, root: Path, spill_root: Path, budget: int, spill_budget: int | None = None) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.columns_dir = root / "columns"
        self.free_dir = root / "free"
        self.spill_dir = spill_root
        for d in (self.objects_dir, self.columns_dir, self.free_dir, self.spill_dir):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.free_dir.iterdir():  # an earlier worker's: not accounted
            stale.unlink(missing_ok=True)
        free = shm_free(self.objects_dir)
        if budget > free - SHM_RESERVE:
            log.warning(
                "object store budget %d MiB is more than the %d MiB free in %s: using what is free",
                budget >> 20, free >> 20, root,
            )
            budget = max(free - SHM_RESERVE, 0)
        self.budget = budget
        self.spill_budget = spill_budget if spill_budget is not None else 4 * budget
        # Least recently used first.
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.dropped: list[str] = []
        # Free pages: file -> allocated bytes, oldest first. Pulls claim them from a thread.
        self.free: OrderedDict[Path, int] = OrderedDict()
        # Their mappings in this process (Pages), once it pulls objects.
        self._mapped: dict[Path, Pages] = {}
        self.pulling = False
        self._free_lock = threading.RLock()

    # -- paths -----------------------------------------------------------------

    def path(self, name: str) -> Path:
        """Where a new object is written (in shared memory)."""
        return self.objects_dir / f"{name}.arrow"

    def _spill_path(self, name: str) -> Path:
        return self.spill_dir / f"{name}.arrow"

    def _where(self, e: Entry) -> Path:
        if e.kind == "column":
            return self.columns_dir / e.name  # the file name the function process wrote
        return self._spill_path(e.name) if e.spilled else self.path(e.name)

    def locate(self, name: str) -> Path | None:
        """The file of a sealed object, in shared memory or spilled to disk; None if unknown."""
        e = self.entries.get(name)
        if e is None or e.kind != "object":
            return None
        return self._where(e)

    # -- accounting --------------------------------------------------------------

    @property
    def shm_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if not e.spilled) + self.free_bytes

    @property
    def free_bytes(self) -> int:
        """Pages of deleted objects kept for reuse."""
        with self._free_lock:  # a pull's claim may take one meanwhile
            return sum(self.free.values())

    @property
    def spilled_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if e.spilled)

    @property
    def pinned_bytes(self) -> int:
        """Shared memory that runs are using: it cannot be given back until they end."""
        return sum(e.nbytes for e in self.entries.values() if e.pins and not e.spilled)

    def take_dropped(self) -> list[str]:
        """Object ids deleted since the last call (the scheduler's cache index forgets them)."""
        dropped, self.dropped = self.dropped, []
        return dropped

    def stats(self) -> dict[str, int]:
        objects = [e for e in self.entries.values() if e.kind == "object"]
        return {
            "shm_bytes": self.shm_bytes,
            "spilled_bytes": self.spilled_bytes,
            "budget": self.budget,
            "free_bytes": self.free_bytes,
            "objects": len(objects),
            "pinned": sum(1 for e in objects if e.pins),
            "columns": len(self.entries) - len(objects),
        }

    # -- entries -------------------------------------------------------------------

    def add(
        self, name: str, run_id: str | None, *, rows: int = 0, schema: bytes = b"",
        cacheable: bool = True, pages: Pages | None = None,
    ) -> Entry:
        """Register a sealed object at :meth:`path` (pinned by ``run_id``); ``pages``: this
        process's mapping of it, if it has one (a pull's), which the entry now owns."""
        e = Entry(
            name=name, nbytes=self.path(name).stat().st_size, kind="object", rows=rows,
            schema=schema, cacheable=cacheable, pages=pages,
        )
        old = self.entries.pop(name, None)
        if old is not None:
            e.pins |= old.pins
            if old.pages is not pages:
                old.unmap()
        if run_id is not None:
            e.pins.add(run_id)
        self.entries[name] = e
        return e

    def add_columns(self, sizes: dict[str, int]) -> None:
        """Register column files a function process wrote into :attr:`columns_dir`
        (file name -> bytes)."""
        for name, nbytes in sizes.items():
            if not _COLUMN_FILE.fullmatch(name):
                # The report comes from a process running user code: names are checked.
                log.warning("ignoring column cache entry %r: not a cache file name", name)
                continue
            self.entries.pop(name, None)
            self.entries[name] = Entry(name=name, nbytes=nbytes, kind="column")

    async def use(self, name: str, run_id: str) -> Entry | None:
        """Pin a held object for ``run_id`` (a cache hit); None if this worker lacks it."""
        e = self.entries.get(name)
        if e is None or e.kind != "object":
            return None
        if not self._where(e).exists():
            log.warning("object %s vanished from the store", name)
            del self.entries[name]
            e.unmap()
            return None
        others = bool(e.pins - {run_id})
        e.pins.add(run_id)
        self.entries.move_to_end(name)
        while e.moving is not None:  # a move under way: its path is settled when it ends
            await e.moving.wait()
        # Other runs may be reading it where it is: only an object nobody uses moves.
        if e.spilled and not others and self.shm_bytes + e.nbytes <= self.budget:
            # Back into shared memory; readers can map it from disk meanwhile.
            moving = e.moving = asyncio.Event()
            try:
                await asyncio.to_thread(shutil.move, self._spill_path(name), self.path(name))
                e.spilled = False
            except OSError as exc:
                log.warning("could not bring object %s back from disk: %s", name, exc)
            finally:
                e.moving = None
                moving.set()
        return e

    def objects(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == "object" and e.cacheable]

    async def release(self, run_id: str) -> None:
        """Unpin everything ``run_id`` held; objects only it could use are deleted."""
        for e in list(self.entries.values()):
            if run_id in e.pins:
                e.pins.discard(run_id)
                if not e.pins and not e.cacheable:
                    self._delete(e)
        await self.enforce()

    def _delete(self, e: Entry) -> None:
        self.entries.pop(e.name, None)
        if e.kind == "object" and not e.spilled:
            pages, e.pages = e.pages, None
            self._recycle(self.path(e.name), pages)
        else:
            self._where(e).unlink(missing_ok=True)
            e.unmap()
        if e.kind == "object":
            self.dropped.append(e.name)

    # -- free pages ----------------------------------------------------------------

    def _recycle(self, path: Path, pages: Pages | None = None) -> None:
        """Delete an object file, keeping its pages for reuse if no process holds it, with
        ``pages``, this process's mapping of them, if it has one (else, once this worker
        pulls, a mapping is begun on the pages thread)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if pages is not None:
                pages.done()
            return
        evicted = []
        try:
            if pages is not None and pages.inode != os.fstat(fd).st_ino:
                pages.done()  # not this file's: never written through again
                pages = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # someone reads it: its pages go when they are done
                path.unlink(missing_ok=True)
                return
            size = os.fstat(fd).st_blocks * 512
            cap = self.budget // FREE_SHARE
            if size < FREE_MIN or size > cap:
                path.unlink(missing_ok=True)
                return
            with self._free_lock:
                while self.free and self.free_bytes + size > cap:
                    old, _, old_pages = self._take_oldest()
                    evicted.append((old, old_pages))
                kept = self.free_dir / f"{uuid.uuid4().hex}.free"
                os.rename(path, kept)
                self.free[kept] = size
                if pages is not None or self.pulling:
                    self._mapped[kept] = pages if pages is not None else Pages.map(fd)
                pages = None
        finally:
            for old, old_pages in evicted:
                _forget(old, old_pages)
            if pages is not None:
                pages.done()
            os.close(fd)  # the exclusive lock goes with it; the old name is gone

    def claim(self, dest: Path, nbytes: int) -> Pages | None:
        """Move kept pages to ``dest`` for a new object of ``nbytes``: the smallest kept
        file that holds it, else the largest. None if none is kept, or if the move fails.
        Thread-safe.

        The first claim also has every kept file mapped: a worker maps its kept pages only
        once it pulls objects (one on a single host never does)."""
        with self._free_lock:
            if not self.pulling:
                self.pulling = True
                for path in self.free:
                    self._map_kept(path)
            if not self.free:
                return None
            fits = [p for p, n in self.free.items() if n >= nbytes]
            pick = (
                min(fits, key=self.free.__getitem__) if fits
                else max(self.free, key=self.free.__getitem__)
            )
            del self.free[pick]
            pages = self._mapped.pop(pick, None) or Pages()
            try:
                os.rename(pick, dest)
            except OSError as exc:
                log.warning("could not reuse free pages %s: %s", pick, exc)
                pages.done()
                pick.unlink(missing_ok=True)
                return None
            return pages

    def _map_kept(self, path: Path) -> None:
        if path in self._mapped:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("could not map free pages %s: %s", path, exc)
            return
        try:
            self._mapped[path] = Pages.map(fd)
        finally:
            os.close(fd)

    def _trim_free(self, nbytes: int) -> int:
        """Give back up to ``nbytes`` (or a little more) of kept pages; returns how much."""
        given = 0
        taken = []
        with self._free_lock:
            while self.free and given < nbytes:
                path, size, pages = self._take_oldest()
                taken.append((path, pages))
                given += size
        for path, pages in taken:
            _forget(path, pages)
        return given

    def _take_oldest(self) -> tuple[Path, int, Pages | None]:
        """The oldest kept file, its size and its mapping, off the free list (under its
        lock)."""
        path, size = self.free.popitem(last=False)
        return path, size, self._mapped.pop(path, None)

    async def make_room(self, nbytes: int) -> None:
        """Spill unpinned entries so that ``nbytes`` more fit under the budget."""
        await self.enforce(self.budget - nbytes)

    async def enforce(self, budget: int | None = None) -> None:
        """Spill or drop least recently used unpinned entries until within the budgets."""
        budget = self.budget if budget is None else max(budget, 0)
        free = shm_free(self.objects_dir)
        over = max(self.shm_bytes - budget, SHM_RESERVE - free, 0)
        over -= self._trim_free(over)
        for e in list(self.entries.values()):
            if over <= 0:
                break
            if e.pins or e.spilled or e.moving is not None:
                continue
            over -= e.nbytes
            if e.kind == "column":
                self._delete(e)
                continue
            moving = e.moving = asyncio.Event()
            e.unmap()  # the pages it moves from are given back
            try:
                await asyncio.to_thread(shutil.move, self.path(e.name), self._spill_path(e.name))
                e.spilled = True
                log.info("object %s (%d MiB) spilled to %s", e.name, e.nbytes >> 20, self.spill_dir)
            except OSError as exc:
                log.warning("could not spill object %s, dropping it: %s", e.name, exc)
                self._delete(e)
            finally:
                e.moving = None
                moving.set()
        spilled_over = self.spilled_bytes - self.spill_budget
        for e in list(self.entries.values()):
            if spilled_over <= 0:
                break
            if e.spilled and not e.pins and e.moving is None:
                spilled_over -= e.nbytes
                self._delete(e)


__all__ = ["Entry", "ObjectStore", "Pages", "backed", "hold", "holding", "shm_free"]
