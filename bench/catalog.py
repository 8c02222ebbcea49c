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

Prints JSON and writes bench/results/catalog.json.

    python -m bench.catalog [--sizes 10,1000,10000] [--repeat 20]
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

    engine = cat._engine  # the same database file and connection settings
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_a (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_b (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT OR REPLACE INTO bench_b VALUES (0, '')"))

    def bare(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_a VALUES (:k, :v)"), {"k": i, "v": "x" * 64})
            conn.execute(text("UPDATE bench_b SET v = :v WHERE k = 0"), {"v": str(i)})

    baseline = _median_ms(bare, repeat)
    cat.close()
    return {
        "tables": tables,
        "commit_ms": commit_ms,
        "merge_ms": round(statistics.median(merge_times), 3),
        "branch_create_ms": branch_ms,
        "baseline_sql_txn_ms": baseline,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="faas-bench-catalog-") as d:
        rows = [measure(n, args.repeat, Path(d)) for n in sizes]
    out = {
        "benchmark": "catalog",
        "backend": "sqlite",
        "repeat": args.repeat,
        "machine": machine(),
        "results": rows,
    }
    save("catalog", out)


if __name__ == "__main__":
    main()
