"""The worker's shared-memory object store (faasd/objects.py), driven directly.

Objects are real Arrow IPC files written at ``store.path(name)`` under tmp_path;
the async methods run with ``asyncio.run``. No daemons.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from faas.faasd import objects
from faas.faasd.objects import SHM_RESERVE
from tests.unit.faasd.objects_helpers import (
    MiB,
    add_object,
    column_name,
    make_store,
    read_table,
    size,
    spill_file,
    write_column,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- add, locate, use, pin


def test_add_registers_file_size_rows_schema_and_pin(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    table = add_object(store, "a", "r1", 2 * MiB)
    e = store.entries["a"]
    assert e.nbytes == size(store.path("a")) >= 2 * MiB
    assert e.rows == table.num_rows
    assert pa.ipc.read_schema(pa.py_buffer(e.schema)) == table.schema
    assert e.kind == "object" and not e.spilled and e.pins == {"r1"}
    assert store.locate("a") == store.path("a") == store.objects_dir / "a.arrow"
    assert store.locate("nope") is None


def test_add_again_keeps_existing_pins(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "a", "r1")
    add_object(store, "a", "r2")
    add_object(store, "a", None)
    assert store.entries["a"].pins == {"r1", "r2"}
    assert list(store.entries) == ["a"]


def test_use_unknown_name_returns_none(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "a", None)
    assert asyncio.run(store.use("missing", "r1")) is None
    assert "missing" not in store.entries
    assert store.entries["a"].pins == set()


def test_use_pins_and_returns_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "a", None)
    e = asyncio.run(store.use("a", "r1"))
    assert e is store.entries["a"]
    assert e is not None and e.pins == {"r1"}


def test_use_of_object_deleted_behind_the_stores_back_forgets_it(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "a", None)
    add_object(store, "b", None)
    store.path("a").unlink()
    assert asyncio.run(store.use("a", "r1")) is None
    assert "a" not in store.entries
    assert store.locate("a") is None
    assert store.stats()["objects"] == 1
    assert store.shm_bytes == size(store.path("b"))


def test_pinned_objects_are_never_spilled_or_deleted(tmp_path: Path) -> None:
    store = make_store(tmp_path, 0, spill_budget=0)  # every byte is over both budgets
    add_object(store, "u", None, seed=0)  # oldest and unpinned: the only one enforce may move
    add_object(store, "p1", "r1", seed=1)
    add_object(store, "p2", "r2", seed=2)
    t3 = add_object(store, "p3", "r1", seed=3)
    asyncio.run(store.enforce())
    for name in ("p1", "p2", "p3"):
        assert store.locate(name) == store.path(name)
        assert store.path(name).exists()
        assert not spill_file(store, name).exists()
        assert not store.entries[name].spilled
    assert read_table(store.path("p3")).equals(t3)
    # The unpinned one went: spilled, then deleted for being over the (zero) spill budget.
    assert "u" not in store.entries
    assert not store.path("u").exists() and not spill_file(store, "u").exists()
    assert store.stats()["pinned"] == 3


# --------------------------------------------------------------------------- release


def test_release_keeps_cacheable_and_deletes_non_cacheable(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    ta = add_object(store, "a", "r1", seed=0)
    add_object(store, "b", "r1", seed=1, cacheable=False)
    tc = add_object(store, "c", "r1", seed=2, cacheable=False)
    assert asyncio.run(store.use("c", "r2")) is not None

    asyncio.run(store.release("r1"))
    # a: unpinned, cacheable, within budget: kept as cache.
    assert store.locate("a") == store.path("a") and store.path("a").exists()
    assert store.entries["a"].pins == set()
    assert read_table(store.path("a")).equals(ta)
    # b: no run pins it and nobody else could use it: gone.
    assert "b" not in store.entries and store.locate("b") is None
    assert not store.path("b").exists()
    # c: r2 still pins it.
    assert store.locate("c") == store.path("c") and store.entries["c"].pins == {"r2"}
    assert read_table(store.path("c")).equals(tc)
    assert [e.name for e in store.objects()] == ["a"]  # only cacheable objects are offered

    asyncio.run(store.release("r2"))
    assert "c" not in store.entries and not store.path("c").exists()
    assert store.locate("a") == store.path("a")
    assert store.stats()["objects"] == 1 and store.stats()["pinned"] == 0
    assert store.shm_bytes == size(store.path("a"))


def test_release_of_unknown_run_changes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    add_object(store, "a", "r1", cacheable=False)
    asyncio.run(store.release("other"))
    assert store.entries["a"].pins == {"r1"} and store.path("a").exists()


# --------------------------------------------------------------------------- LRU spill


def test_enforce_spills_least_recently_used_by_add_and_use_order(tmp_path: Path) -> None:
    store = make_store(tmp_path, int(2.5 * MiB))
    tables = {name: add_object(store, name, None, seed=i) for i, name in enumerate("abcd")}
    sizes = {name: size(store.path(name)) for name in "abcd"}
    # Using a (and ending that run) makes it the most recently used: order b, c, d, a.
    assert asyncio.run(store.use("a", "r1")) is not None
    asyncio.run(store.release("r1"))  # release enforces the budget

    for name in "bc":
        assert store.entries[name].spilled
        assert not store.path(name).exists()
        assert spill_file(store, name).exists()
        assert store.locate(name) == spill_file(store, name)
        assert read_table(store.locate(name)).equals(tables[name])  # type: ignore[arg-type]
    for name in "ad":
        assert not store.entries[name].spilled
        assert store.locate(name) == store.path(name)
        assert not spill_file(store, name).exists()
    assert store.shm_bytes == sizes["a"] + sizes["d"] <= store.budget
    assert store.spilled_bytes == sizes["b"] + sizes["c"]
    stats = store.stats()
    assert stats["spilled_bytes"] == sizes["b"] + sizes["c"]
    assert stats["shm_bytes"] == sizes["a"] + sizes["d"]
    assert stats["objects"] == 4 and stats["pinned"] == 0 and stats["columns"] == 0
    assert stats["budget"] == int(2.5 * MiB)


def test_use_brings_spilled_object_back_when_it_fits(tmp_path: Path) -> None:
    store = make_store(tmp_path, int(2.5 * MiB))
    ta = add_object(store, "a", None, seed=0)
    add_object(store, "b", None, seed=1)
    add_object(store, "c", None, seed=2)
    add_object(store, "d", "r", seed=3, cacheable=False)  # pinned: stays in shm
    asyncio.run(store.enforce())
    assert store.entries["a"].spilled and store.entries["b"].spilled
    assert not store.entries["c"].spilled and not store.entries["d"].spilled

    # Not enough room yet: a is served from disk and stays there (pinned now).
    e = asyncio.run(store.use("a", "r2"))
    assert e is not None and e.spilled and e.pins == {"r2"}
    assert store.locate("a") == spill_file(store, "a")
    asyncio.run(store.release("r2"))

    asyncio.run(store.release("r"))  # d is deleted: room for one more
    assert "d" not in store.entries
    e = asyncio.run(store.use("a", "r3"))
    assert e is not None and not e.spilled
    assert store.locate("a") == store.path("a")
    assert store.path("a").exists() and not spill_file(store, "a").exists()
    assert read_table(store.path("a")).equals(ta)
    assert store.shm_bytes == size(store.path("a")) + size(store.path("c"))
    assert store.spilled_bytes == size(spill_file(store, "b"))
    asyncio.run(store.release("r3"))

    # a is now the most recently used: a new object pushes c (older) out, not a.
    add_object(store, "e", None, seed=4)
    asyncio.run(store.enforce())
    assert store.entries["c"].spilled and store.locate("c") == spill_file(store, "c")
    assert not store.entries["a"].spilled and store.locate("a") == store.path("a")
    assert not store.entries["e"].spilled


def test_object_pinned_while_being_spilled_gets_a_path_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enforce() moves a file in a thread after checking pins; a run that pins the object
    meanwhile (use + locate, as the worker does for an input or a cache hit) waits for
    the move to end, so the path it is given is where the object really is."""
    store = make_store(tmp_path, int(1.5 * MiB))
    ta = add_object(store, "a", None, seed=0)
    add_object(store, "b", None, seed=1)
    started, proceed = threading.Event(), threading.Event()
    real_move = shutil.move

    def gated_move(src: str, dst: str) -> object:
        started.set()
        proceed.wait(10)
        return real_move(src, dst)

    monkeypatch.setattr(objects.shutil, "move", gated_move)

    async def scenario() -> tuple[object, Path | None]:
        spilling = asyncio.create_task(store.enforce())
        assert await asyncio.to_thread(started.wait, 10), "enforce did not start spilling a"
        using = asyncio.create_task(store.use("a", "r"))  # a cache hit while the spill runs
        await asyncio.sleep(0.05)
        assert not using.done(), "use() returned while the object was moving"
        proceed.set()
        entry = await using
        given = store.locate("a")
        await spilling
        return entry, given

    entry, given = asyncio.run(scenario())
    assert entry is not None and given is not None
    assert store.entries["a"].pins == {"r"}
    assert given.exists() and read_table(given).equals(ta)
    # Pinned now: further enforcement leaves it where it is.
    asyncio.run(store.enforce())
    assert given.exists()


def test_spilled_bytes_over_spill_budget_are_deleted_lru_first_never_pinned(tmp_path: Path) -> None:
    store = make_store(tmp_path, int(1.5 * MiB), spill_budget=int(1.5 * MiB))
    add_object(store, "a", None, seed=0)
    add_object(store, "b", None, seed=1)
    asyncio.run(store.enforce())
    assert store.entries["a"].spilled and not store.entries["b"].spilled

    # a is pinned while spilled (no room to bring it back): order b, a.
    e = asyncio.run(store.use("a", "r"))
    assert e is not None and e.spilled
    ta_size = size(spill_file(store, "a"))

    add_object(store, "c", None, seed=2)
    add_object(store, "d", None, seed=3)
    asyncio.run(store.enforce())
    # b and c were spilled; with a that is 3 MiB on disk, over 1.5 MiB: b (LRU) and c
    # were deleted, a (pinned, between them in LRU order) was skipped.
    for name in "bc":
        assert name not in store.entries and store.locate(name) is None
        assert not spill_file(store, name).exists() and not store.path(name).exists()
    assert store.entries["a"].spilled and spill_file(store, "a").exists()
    assert store.locate("a") == spill_file(store, "a")
    assert store.locate("d") == store.path("d")
    assert store.spilled_bytes == ta_size
    assert store.shm_bytes == size(store.path("d"))
    assert store.stats()["objects"] == 2

    asyncio.run(store.release("r"))  # within the spill budget now: a stays on disk
    assert store.locate("a") == spill_file(store, "a")


def test_spill_budget_defaults_to_four_budgets(tmp_path: Path) -> None:
    store = make_store(tmp_path, 8 * MiB)
    assert store.budget == 8 * MiB
    assert store.spill_budget == 32 * MiB


# --------------------------------------------------------------------------- columns


def test_columns_count_against_budget_and_are_deleted_not_spilled(tmp_path: Path) -> None:
    store = make_store(tmp_path, int(1.5 * MiB))
    c1, c2 = column_name(1), column_name(0xABC)
    store.add_columns({c1: write_column(store, c1), c2: write_column(store, c2)})
    assert store.entries[c1].kind == "column" and store.entries[c1].nbytes == MiB
    assert store.locate(c1) is None  # columns are not objects
    assert asyncio.run(store.use(c1, "r")) is None
    stats = store.stats()
    assert stats["columns"] == 2 and stats["objects"] == 0
    assert store.shm_bytes == 2 * MiB

    asyncio.run(store.enforce())
    assert c1 not in store.entries
    assert not (store.columns_dir / c1).exists()
    assert not any(store.spill_dir.iterdir())  # dropped, not spilled
    assert (store.columns_dir / c2).exists() and store.entries[c2].kind == "column"
    assert store.shm_bytes == MiB and store.spilled_bytes == 0
    assert store.stats()["columns"] == 1


def test_columns_are_evicted_in_lru_order_with_objects(tmp_path: Path) -> None:
    store = make_store(tmp_path, int(1.5 * MiB))
    add_object(store, "a", None)
    col = column_name(7)
    store.add_columns({col: write_column(store, col)})
    asyncio.run(store.enforce())
    # a is older: spilled; the column stays.
    assert store.entries["a"].spilled and store.locate("a") == spill_file(store, "a")
    assert (store.columns_dir / col).exists() and col in store.entries


@pytest.mark.parametrize("bad", ["../x", "col-zz.arrow", "objects/a.arrow"])
def test_column_entries_that_are_not_cache_file_names_are_ignored(tmp_path: Path, bad: str) -> None:
    store = make_store(tmp_path, 0)  # anything registered would be deleted by enforce
    target = (store.columns_dir / bad).resolve()
    assert tmp_path.resolve() in target.parents
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"keep me")
    good = column_name(3)
    store.add_columns({bad: 10 * MiB, good: write_column(store, good, 1024)})
    assert bad not in store.entries
    assert list(store.entries) == [good]
    asyncio.run(store.enforce())
    assert target.read_bytes() == b"keep me"
    assert good not in store.entries and not (store.columns_dir / good).exists()


def test_column_file_name_must_match_exactly(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    names = {
        f"col-{'a' * 32}.arrow": True,
        f"col-{'A' * 32}.arrow": False,  # upper-case hex is not what the cache writes
        f"col-{'a' * 31}.arrow": False,
        f"col-{'a' * 33}.arrow": False,
        f"col-{'a' * 32}.arrow.tmp": False,
        f"xcol-{'a' * 32}.arrow": False,
        f"sub/col-{'a' * 32}.arrow": False,
    }
    store.add_columns({n: 1 for n in names})
    assert set(store.entries) == {n for n, ok in names.items() if ok}


# --------------------------------------------------------------------------- accounting


def test_byte_counts_match_file_sizes(tmp_path: Path) -> None:
    store = make_store(tmp_path, 64 * MiB)
    for i, (name, nbytes) in enumerate([("a", MiB), ("b", 2 * MiB), ("c", 3 * MiB), ("d", 4 * MiB)]):
        add_object(store, name, "r" if name in "ab" else None, nbytes, seed=i)
    col = column_name(1)
    store.add_columns({col: write_column(store, col, 512 * 1024)})
    files = sum(size(store.path(n)) for n in "abcd")
    assert store.shm_bytes == files + 512 * 1024
    assert store.spilled_bytes == 0
    assert store.stats() == {
        "shm_bytes": files + 512 * 1024, "spilled_bytes": 0, "budget": 64 * MiB,
        "objects": 4, "pinned": 2, "columns": 1, "free_bytes": 0,
    }
    # Shrink the budget so c and d must go to disk (a and b are pinned, the column is newest).
    store.budget = size(store.path("a")) + size(store.path("b")) + 512 * 1024
    asyncio.run(store.enforce())
    assert store.spilled_bytes == size(spill_file(store, "c")) + size(spill_file(store, "d"))
    on_shm = sum(size(p) for p in store.objects_dir.iterdir())
    on_shm += sum(size(p) for p in store.columns_dir.iterdir())
    on_disk = sum(size(p) for p in store.spill_dir.iterdir())
    assert store.shm_bytes == on_shm
    assert store.spilled_bytes == on_disk
    assert store.shm_bytes + store.spilled_bytes == files + 512 * 1024


# --------------------------------------------------------------------------- budget vs free space


def test_budget_is_capped_by_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []

    def fake_free(path: Path) -> int:
        seen.append(Path(path))
        return 100 * MiB

    monkeypatch.setattr(objects, "shm_free", fake_free)
    store = make_store(tmp_path, 2**30)
    assert store.budget == 100 * MiB - SHM_RESERVE
    assert store.spill_budget == 4 * store.budget
    assert seen and all(p == store.root or store.root in p.parents for p in seen)

    # A budget that fits is kept as given.
    assert make_store(tmp_path / "2", 10 * MiB).budget == 10 * MiB


def test_budget_is_zero_when_less_than_the_reserve_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "shm_free", lambda path: SHM_RESERVE // 2)
    store = make_store(tmp_path, 8 * MiB, spill_budget=16 * MiB)
    assert store.budget == 0
    assert store.spill_budget == 16 * MiB
