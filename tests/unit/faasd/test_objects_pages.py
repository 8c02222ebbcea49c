"""The object store's free pages: kept for the next claim unless a process still holds them."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from faas.faasd import objects
from faas.faasd.objects import ObjectStore
from tests.conftest import ROOT
from tests.unit.faasd.objects_helpers import MiB, add_object, make_store, write_object

pytestmark = pytest.mark.timeout(60)

REPO = ROOT


# --------------------------------------------------------------------------- free pages


def release(store: ObjectStore, run_id: str) -> None:
    asyncio.run(store.release(run_id))


def test_a_deleted_object_nobody_holds_keeps_its_pages_for_the_next_claim(tmp_path: Path) -> None:
    store = make_store(tmp_path, 256 * MiB)
    add_object(store, "a", "run-1", nbytes=8 * MiB, cacheable=False)
    release(store, "run-1")

    assert not store.path("a").exists() and "a" not in store.entries
    (kept,) = store.free
    assert kept.parent == store.free_dir and kept.exists()
    assert store.free_bytes >= 8 * MiB and store.shm_bytes == store.free_bytes
    assert store.stats()["free_bytes"] == store.free_bytes

    dest = tmp_path / "new.part"
    assert store.claim(dest, 4 * MiB)
    assert dest.exists() and not kept.exists()
    assert store.free_bytes == 0 and store.shm_bytes == 0
    assert not store.claim(tmp_path / "other.part", 4 * MiB)


def test_claim_picks_the_smallest_file_that_holds_the_object_else_the_largest(tmp_path: Path) -> None:
    store = make_store(tmp_path, 512 * MiB)
    for name, mib in (("s", 6), ("m", 12), ("l", 24)):
        add_object(store, name, "run-1", nbytes=mib * MiB, cacheable=False)
    release(store, "run-1")
    sizes = sorted(store.free.values())
    assert len(sizes) == 3

    assert store.claim(tmp_path / "one", 10 * MiB)  # the 12 MiB file
    assert sorted(store.free.values()) == [sizes[0], sizes[2]]
    assert store.claim(tmp_path / "two", 100 * MiB)  # none holds it: the largest
    assert list(store.free.values()) == [sizes[0]]


def test_an_object_a_process_holds_is_deleted_and_its_pages_not_reused(tmp_path: Path) -> None:
    """A reader in another process (as a function process maps its inputs) holds the
    object: deleting it unlinks the file, and the reader's bytes stay what they were."""
    store = make_store(tmp_path, 256 * MiB)
    table = add_object(store, "a", "run-1", nbytes=8 * MiB, seed=3, cacheable=False)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store.path("a"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "holding"
        release(store, "run-1")
        assert not store.path("a").exists()
        assert store.free == {}  # a reader holds it: not kept
        # New bytes in new pages do not reach the reader's mapping.
        add_object(store, "b", "run-2", nbytes=8 * MiB, seed=4)
        out, _ = reader.communicate("go\n", timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert out.split() == [str(table.column("x")[0].as_py()), str(table.num_rows)]


READER = """
import sys
import pyarrow as pa
from faas.faasd.objects import hold
path = sys.argv[1]
fd = hold(path)
table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
print("holding", flush=True)
sys.stdin.readline()
print(table.column("x")[0].as_py(), table.num_rows)
"""


def test_a_reader_that_exits_lets_the_pages_be_reused(tmp_path: Path) -> None:
    store = make_store(tmp_path, 256 * MiB)
    add_object(store, "a", "run-1", nbytes=8 * MiB, cacheable=False)
    subprocess.run(
        [sys.executable, "-c", "import sys; from faas.faasd.objects import hold; hold(sys.argv[1])",
         str(store.path("a"))],
        check=True, cwd=REPO, timeout=30,
    )
    release(store, "run-1")
    assert len(store.free) == 1


def test_hold_refuses_an_object_deleted_or_replaced_before_it_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, 256 * MiB)
    add_object(store, "a", "run-1", nbytes=8 * MiB, cacheable=False)
    path = store.path("a")
    with objects.holding(path) as fd:  # a held object reads as usual
        assert os.fstat(fd).st_size == path.stat().st_size
    release(store, "run-1")
    with pytest.raises(FileNotFoundError):
        objects.hold(path)

    # Replaced between the open and the lock (its old pages may be reused already).
    write_object(store, "b", nbytes=MiB, seed=1)
    other = tmp_path / "other.arrow"
    shutil.copy(store.path("b"), other)
    real_flock = objects.fcntl.flock

    def swap_then_lock(fd: int, op: int) -> None:
        os.replace(other, store.path("b"))
        real_flock(fd, op)

    monkeypatch.setattr(objects.fcntl, "flock", swap_then_lock)
    with pytest.raises(FileNotFoundError, match="replaced"):
        objects.hold(store.path("b"))


def test_free_pages_are_given_back_before_any_object_is_spilled(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "gone", "run-1", nbytes=8 * MiB, cacheable=False)
    add_object(store, "kept", "run-2", nbytes=8 * MiB)
    release(store, "run-1")
    release(store, "run-2")
    assert store.free and not store.entries["kept"].spilled

    asyncio.run(store.make_room(48 * MiB))  # room for 48 MiB: the free pages must go
    assert store.free == {} and not any(store.free_dir.iterdir())
    assert not store.entries["kept"].spilled and store.path("kept").exists()


def test_free_pages_stay_under_a_share_of_the_budget(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)  # at most 16 MiB kept
    for i in range(3):
        add_object(store, f"o{i}", f"run-{i}", nbytes=7 * MiB, seed=i, cacheable=False)
        release(store, f"run-{i}")
        assert store.free_bytes <= 16 * MiB
    assert len(store.free) == 2 and len(list(store.free_dir.iterdir())) == 2
    add_object(store, "small", "run-9", nbytes=MiB, cacheable=False)
    add_object(store, "huge", "run-9", nbytes=20 * MiB, cacheable=False)
    release(store, "run-9")  # too small to be worth keeping; larger than the share
    assert len(store.free) == 2


def test_a_new_store_drops_free_pages_an_earlier_worker_left(tmp_path: Path) -> None:
    store = make_store(tmp_path, 256 * MiB)
    add_object(store, "a", "run-1", nbytes=8 * MiB, cacheable=False)
    release(store, "run-1")
    assert any(store.free_dir.iterdir())
    again = make_store(tmp_path, 256 * MiB)
    assert again.free == {} and not any(again.free_dir.iterdir())


# --------------------------------------------------------------------------- kept pages, mapped


def settle() -> None:
    """Wait until the pages thread has done everything asked of it so far."""
    objects._pages().submit(lambda: None).result(timeout=30)


def pulling_store(tmp_path: Path, budget: int) -> ObjectStore:
    """A store whose worker pulls objects (it has claimed pages once): it maps kept pages."""
    store = make_store(tmp_path, budget)
    assert store.claim(tmp_path / "nothing.part", MiB) is None and store.pulling
    return store


def test_kept_pages_are_mapped_once_the_worker_pulls(tmp_path: Path) -> None:
    """A worker that never pulls (one host) maps nothing; its first claim maps every kept
    file, and files kept after it are mapped as they are kept."""
    store = make_store(tmp_path, 256 * MiB)
    for i in range(2):
        add_object(store, f"o{i}", "run-1", nbytes=8 * MiB, seed=i, cacheable=False)
    release(store, "run-1")
    assert len(store.free) == 2 and store._mapped == {}

    pages = store.claim(tmp_path / "new.part", 4 * MiB)
    assert pages is not None and pages.mapping() is not None
    (left,) = store.free
    assert store._mapped[left].mapping() is not None
    add_object(store, "later", "run-2", nbytes=8 * MiB, cacheable=False)
    release(store, "run-2")
    assert all(store._mapped[p].mapping() is not None for p in store.free)
    pages.done()


def test_kept_pages_are_mapped_whole_and_a_claim_hands_the_mapping_over(tmp_path: Path) -> None:
    store = pulling_store(tmp_path, 256 * MiB)
    add_object(store, "a", "run-1", nbytes=8 * MiB, cacheable=False)
    size = store.path("a").stat().st_size
    release(store, "run-1")

    dest = tmp_path / "new.part"
    pages = store.claim(dest, 4 * MiB)
    assert pages is not None
    mapped = pages.mapping()
    assert mapped is not None and len(mapped) == size
    mapped[:4] = b"faas"  # the claimed file's own pages
    with open(dest, "rb") as f:
        assert f.read(4) == b"faas"
        # The store locked the file to recycle it; its mapping must not keep that lock,
        # or no reader could hold the object the file becomes.
        objects.fcntl.flock(f.fileno(), objects.fcntl.LOCK_SH | objects.fcntl.LOCK_NB)
    pages.done()
    settle()
    assert mapped.closed


def test_a_kept_file_with_a_hole_is_not_mapped(tmp_path: Path) -> None:
    """A write through a mapping into a hole would need a new page, and on a full tmpfs
    that is a SIGBUS: such a file is reused through writes only."""
    store = pulling_store(tmp_path, 256 * MiB)
    write_object(store, "a", nbytes=6 * MiB)
    with open(store.path("a"), "r+b") as f:
        f.truncate(10 * MiB)  # the last 4 MiB are a hole
        assert objects.backed(f.fileno()) == 0
    store.add("a", "run-1", cacheable=False)
    release(store, "run-1")
    assert len(store.free) == 1

    pages = store.claim(tmp_path / "new.part", 4 * MiB)
    assert pages is not None and pages.mapping() is None
    with open(tmp_path / "new.part", "rb") as f:
        assert objects.backed(f.fileno()) == 0


def test_pages_given_back_are_unmapped_before_make_room_returns(tmp_path: Path) -> None:
    store = pulling_store(tmp_path, 64 * MiB)
    add_object(store, "gone", "run-1", nbytes=8 * MiB, cacheable=False)
    release(store, "run-1")
    (kept,) = store.free
    mapped = store._mapped[kept].mapping()
    assert mapped is not None and not mapped.closed

    asyncio.run(store.make_room(60 * MiB))
    assert store.free == {} and store._mapped == {}
    assert mapped.closed  # at once: the pages are free now, not when a thread gets to it


def test_an_entrys_pages_go_to_the_free_list_with_it_or_are_let_go(tmp_path: Path) -> None:
    store = make_store(tmp_path, 256 * MiB)

    def pulled(name: str, run_id: str, seed: int) -> objects.Pages:
        write_object(store, name, nbytes=8 * MiB, seed=seed)
        with open(store.path(name), "r+b") as f:
            pages = objects.Pages.map(f.fileno())
        store.add(name, run_id, cacheable=False, pages=pages)
        return pages

    # Deleted: the same mapping now stands for the kept file (nothing is mapped again).
    pages = pulled("a", "run-1", 1)
    mapped = pages.mapping()
    release(store, "run-1")
    (kept,) = store.free
    assert store._mapped[kept] is pages and pages.mapping() is mapped and not mapped.closed

    # Deleted while a reader holds it: unlinked, not kept, and the mapping let go.
    pages = pulled("b", "run-2", 2)
    mapped = pages.mapping()
    with objects.holding(store.path("b")):
        release(store, "run-2")
    assert len(store.free) == 1 and not store.path("b").exists()
    settle()
    assert mapped is not None and mapped.closed

    # Spilled to disk: its shared-memory pages are let go.
    pages = pulled("c", "run-3", 3)
    store.entries["c"].cacheable = True
    mapped = pages.mapping()
    release(store, "run-3")  # unpinned, kept as a cache
    asyncio.run(store.make_room(250 * MiB))
    assert store.entries["c"].spilled and store.entries["c"].pages is None
    settle()
    assert mapped is not None and mapped.closed

    # Replaced by an entry of the same name with other pages: the old ones are let go.
    old = pulled("d", "run-4", 4)
    mapped = old.mapping()
    pulled("d", "run-4", 5)
    settle()
    assert mapped is not None and mapped.closed


def test_pages_of_another_file_never_go_to_the_free_list(tmp_path: Path) -> None:
    """An entry whose file was replaced behind its back: its mapping is of the old file,
    so the kept file is mapped afresh and the old mapping let go."""
    store = pulling_store(tmp_path, 256 * MiB)
    write_object(store, "a", nbytes=8 * MiB, seed=1)
    with open(store.path("a"), "r+b") as f:
        stale = objects.Pages.map(f.fileno())
    mapped = stale.mapping()
    store.add("a", "run-1", cacheable=False, pages=stale)
    write_object(store, "other", nbytes=8 * MiB, seed=2)
    os.replace(store.path("other"), store.path("a"))
    release(store, "run-1")
    (kept,) = store.free
    assert store._mapped[kept] is not stale
    settle()
    assert mapped is not None and mapped.closed
    fresh = store._mapped[kept].mapping()
    assert fresh is not None and len(fresh) == kept.stat().st_size


def test_small_files_are_not_mapped_and_mappings_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each mapping holds a file descriptor: a worker with many cached objects must not run
    out of them. Files too small to be worth it are never mapped, and past MAPPED_MAX
    mappings pages are reused through writes."""
    store = make_store(tmp_path, 256 * MiB)
    write_object(store, "small", nbytes=MiB)
    with open(store.path("small"), "r+b") as f:
        assert objects.Pages.map(f.fileno()).mapping() is None

    settle()  # mappings other tests let go are closed by now
    monkeypatch.setattr(objects, "MAPPED_MAX", objects._slots.used + 1)
    store = pulling_store(tmp_path / "bounded", 256 * MiB)
    for i in range(2):
        add_object(store, f"o{i}", "run-1", nbytes=8 * MiB, seed=i, cacheable=False)
    release(store, "run-1")
    made = [store._mapped[p].mapping() for p in store.free]
    assert len(made) == 2 and sum(m is not None for m in made) == 1

    first = store.claim(tmp_path / "a.part", 4 * MiB)
    second = store.claim(tmp_path / "b.part", 4 * MiB)
    assert first is not None and second is not None
    for pages in (first, second):
        pages.done()
    # The one mapping is closed: the next file kept is mapped again.
    add_object(store, "o2", "run-2", nbytes=8 * MiB, cacheable=False)
    release(store, "run-2")
    (kept,) = store.free
    assert store._mapped[kept].mapping() is not None


def test_pages_given_back_before_the_pages_thread_maps_them_are_free_at_once(
    tmp_path: Path,
) -> None:
    """While the pages thread is busy (filling a big mapping), kept files queue up to be
    mapped. Giving them back must not wait for it: no descriptor of a deleted file is left
    open, and the mapping slots come back."""
    store = pulling_store(tmp_path, 256 * MiB)
    go = threading.Event()
    busy = objects._pages().submit(go.wait, 30)
    used = objects._slots.used
    try:
        for i in range(3):
            add_object(store, f"o{i}", f"run-{i}", nbytes=8 * MiB, seed=i, cacheable=False)
            release(store, f"run-{i}")
        assert len(store.free) == 3 and objects._slots.used == used + 3
        asyncio.run(store.make_room(256 * MiB))
        assert store.free == {} and objects._slots.used == used
        deleted = [
            link for fd in os.listdir("/proc/self/fd")
            if (link := _link(f"/proc/self/fd/{fd}")).endswith("(deleted)")
            and str(tmp_path) in link
        ]
        assert deleted == []
    finally:
        go.set()
        busy.result(30)
    settle()
    assert objects._slots.used == used


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
