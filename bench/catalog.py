"""Catalog latency: commit, merge and branch creation as the catalog grows.

For catalogs holding 10, 1,000 and 10,000 tables (built in commits of up to
100 tables, so history grows too), measures on the versioned catalog itself
(SQLite file, as embedded mode uses):
- ``commit_ms``: a commit changing one table on main;
- ``merge_ms``: a three-way merge of a branch that changed one table into a
  main that changed another;
- ``branch_create_ms``: creating a branch;
and, as the baseline in the same run and on the same database file, the cost
of the bare SQL a compare-and-swap commit cannot avoid: one transaction that
inserts a row and updates another (``baseline_sql_txn_ms``).

For histories of 10, 1,000 and 10,000 commits on main, what a run asks of the catalog
(``history``): the check a table's publish makes when the run's branch moved under it
(``publish_check_ms``), the run's merge into main (``run_merge_ms``), and reading a table
last changed at the bottom of the history (``oldest_table_lookup_ms``), against the same
baseline.

Prints JSON and writes bench/results/catalog.json.

    python -m bench.catalog [--sizes 10,1000,10000] [--depths 10,1000,10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from bench import machine, save
from faas.store.catalog import Change, VersionedCatalog

BATCH = 100


def _median_ms(fn: Callable[[int], None], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def _location(key: str, version: int) -> str:
    return f"file:///warehouse/{key}/metadata/{version:05d}.metadata.json"


def build(cat: VersionedCatalog, tables: int) -> None:
    cat.commit("main", cat.head("main"), [Change("bench", "namespace", "{}")], "namespace bench")
    for start in range(0, tables, BATCH):
        keys = [f"bench.t{i}" for i in range(start, min(start + BATCH, tables))]
        cat.commit("main", cat.head("main"), [Change(k, "table", _location(k, 0)) for k in keys],
                   f"create {len(keys)} tables")


def measure(tables: int, repeat: int, tmp: Path) -> dict[str, float | int]:
    cat = VersionedCatalog(f"sqlite:///{tmp / f'catalog-{tables}.db'}")
    build(cat, tables)

    def commit(i: int) -> None:
        key = f"bench.t{i % tables}"
        cat.commit("main", cat.head("main"), [Change(key, "table", _location(key, i + 1))], "update")

    def merge(i: int) -> None:
        name = f"feature-{i}"
        cat.create_branch(name, "main")
        mine, theirs = f"bench.t{(2 * i) % tables}", f"bench.t{(2 * i + 1) % tables}"
        cat.commit(name, cat.head(name), [Change(mine, "table", _location(mine, 10_000 + i))], "branch work")
        cat.commit("main", cat.head("main"), [Change(theirs, "table", _location(theirs, 20_000 + i))], "main work")
        t0 = time.perf_counter()
        cat.merge(name, "main")
        merge_times.append((time.perf_counter() - t0) * 1000)

    merge_times: list[float] = []
    commit_ms = _median_ms(commit, repeat)
    for i in range(repeat):
        merge(i)
    branch_ms = _median_ms(lambda i: cat.create_branch(f"b-{i}", "main"), repeat)

    baseline = bare_sql_txn_ms(cat, repeat)
    cat.close()
    return {
        "tables": tables,
        "commit_ms": commit_ms,
        "merge_ms": round(statistics.median(merge_times), 3),
        "branch_create_ms": branch_ms,
        "baseline_sql_txn_ms": baseline,
    }


def bare_sql_txn_ms(cat: VersionedCatalog, repeat: int) -> float:
    """The baseline: one transaction inserting a row and updating another, on the same
    database file and connection settings."""
    engine = cat._engine
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_a (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_b (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT OR REPLACE INTO bench_b VALUES (0, '')"))

    def bare(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_a VALUES (:k, :v)"), {"k": i, "v": "x" * 64})
            conn.execute(text("UPDATE bench_b SET v = :v WHERE k = 0"), {"v": str(i)})

    return _median_ms(bare, repeat)


def measure_history(depth: int, repeat: int, tmp: Path) -> dict[str, float | int]:
    """What a run asks of the catalog, with ``depth`` commits of history on main (each
    changing one of 20 tables): the check a table's publish makes when the run's branch
    moved under it, the run's merge into main, and reading a table last changed at the
    bottom of the history (a key's value is found by walking back to its last change)."""
    cat = VersionedCatalog(f"sqlite:///{tmp / f'history-{depth}.db'}")
    cat.commit("main", cat.head("main"), [Change("bench", "namespace", "{}"),
                                          Change("bench.first", "table", _location("first", 0))],
               "namespace bench")
    for i in range(depth):
        key = f"bench.t{i % 20}"
        cat.commit("main", cat.head("main"), [Change(key, "table", _location(key, i))], "update")
    check, merge, lookup = [], [], []
    for i in range(repeat):
        run = f"run-{i}"
        cat.create_branch(run, "main")
        base = cat.head(run)
        head = cat.commit(run, base, [Change("bench.out1", "table", _location("out1", i))], "out1")
        t0 = time.perf_counter()
        cat.changed_keys(base, head)
        check.append((time.perf_counter() - t0) * 1000)
        cat.commit(run, head, [Change("bench.out2", "table", _location("out2", i))], "out2")
        t0 = time.perf_counter()
        cat.merge(run, "main")
        merge.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        cat.get(cat.head("main"), "bench.first")
        lookup.append((time.perf_counter() - t0) * 1000)
    baseline = bare_sql_txn_ms(cat, repeat)
    cat.close()
    return {
        "commits": depth,
        "publish_check_ms": round(statistics.median(check), 3),
        "run_merge_ms": round(statistics.median(merge), 3),
        "oldest_table_lookup_ms": round(statistics.median(lookup), 3),
        "baseline_sql_txn_ms": baseline,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--depths", default="10,1000,10000", help="commits of history")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="faas-bench-catalog-") as d:
        rows = [measure(n, args.repeat, Path(d)) for n in sizes]
        history = [measure_history(int(n), args.repeat, Path(d)) for n in args.depths.split(",")]
    out = {
        "benchmark": "catalog",
        "backend": "sqlite",
        "repeat": args.repeat,
        "machine": machine(),
        "results": rows,
        "history": history,
    }
    save("catalog", out)


if __name__ == "__main__":
    main()
