"""The data plane end to end: zero-copy handoff, shared pages, cross-host pulls, caches.

Real scheduler and worker processes; "hosts" are workers with distinct host ids
(and their own shared-memory directories), so cross-host paths are really taken.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    GATE_CODE,
    ROOT,
    Cluster,
    Gate,
    import_territories,
    scheduler_only,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.timeout(300)


def _submit(c: Cluster, project: Path, *args: str) -> dict[str, Any]:
    proc = c.faas("submit", str(project), "-n", "adventure", "--json", *args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _lines(result: dict[str, Any], node: str) -> list[str]:
    return [entry["line"] for entry in result["logs"] if entry["node"] == node]


# Prints the file that backs a column's values, as /proc/self/maps tells: a mapped object
# file when the input is zero-copy, nothing when it was copied into private memory.
WHERE = '''
def _backing_file(table):
    address = table.column(0).chunks[0].buffers()[1].address
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else "anonymous"
    return "unmapped"
'''


def test_a_consumer_maps_the_producers_output_without_copying(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = write_project(tmp_path, WHERE + '''
import faas
import pyarrow as pa


@faas.model()
def big(t=faas.Model("territories")):
    n = 2_000_000
    return pa.table({"k": pa.array(range(n), pa.int64()), "v": pa.array(range(n), pa.float64())})


@faas.model(materialize="replace")
def reader(big=faas.Model("big")):
    import os

    backing = _backing_file(big)
    print("BACKED BY", os.stat(backing).st_ino, backing)
    return pa.table({"n": [big.num_rows]})
''')
    result = _submit(cluster, project)
    (line,) = [ln for ln in _lines(result, "reader") if ln.startswith("BACKED BY")]
    inode, backing = int(line.split()[2]), Path(line.split()[3])
    # The consumer's buffers are the pages of the producer's object file in shared memory:
    # a link to it in the task's own directory, the same file.
    assert backing.parent.name == "in", line
    assert cluster.shm_dir is not None and cluster.shm_dir in backing.parents, line
    object_id = _plan_object_id(cluster, project, "big")
    assert backing.stem == object_id, backing
    (stored,) = cluster.shm_dir.glob(f"faas-w-*/objects/{object_id}.arrow")
    assert stored.stat().st_ino == inode


def _plan_object_id(c: Cluster, project: Path, node: str) -> str:
    plan = c.json("submit", str(project), "-n", "adventure", "--dry-run")
    return next(n["cache_key"] for n in plan if n["name"] == node)  # type: ignore[no-any-return]


def test_four_readers_of_an_object_share_its_pages(
    two_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """Four readers of a 512 MiB object run at once on a 5 GiB host: placement counts the
    object once for the host (0.5 + 4 x 1 GiB fits; once per reader, 4 x 1.5 would not),
    and the readers' mappings hold one copy of its pages between them."""
    c = two_hosts
    c.add_worker(tmp_path, "host", "--host-id", "host", "--memory", "5GiB")
    c.wait_workers(1)
    import_territories(c, example_data)
    readers = [f"r{i}" for i in range(4)]
    code = '''
import socket
import faas
import pyarrow as pa
import pyarrow.compute as pc

N = 64 * 2**20  # 512 MiB of int64


@faas.model(memory="2GiB")
def big(t=faas.Model("territories")):
    return pa.table({"k": pc.cumulative_sum(pc.fill_null(pa.nulls(N, pa.int64()), 1))})


def _meet(conn):
    conn.sendall(b"here\\n")
    assert conn.recv(16) == b"go\\n", "the other readers never came"


def _read(name, table, barrier):
    host, port = barrier.split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    pc.sum(table.column("k"))  # every page is read
    _meet(conn)  # all four map it now
    rss = pss = 0
    current = None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            current = head[5] if len(head) > 5 else ""
        elif current and current.endswith(".arrow") and "/in/" in current:
            if head[0] == "Rss:":
                rss += int(head[1]) * 1024
            elif head[0] == "Pss:":
                pss += int(head[1]) * 1024
    print(f"MAPPED rss={rss} pss={pss}")
    _meet(conn)  # nobody unmaps before all have measured
    return pa.table({"rows": [table.num_rows]})
'''
    for r in readers:
        code += f'''

@faas.model(memory="1GiB", internet_access=True)
def {r}(big=faas.Model("big"), barrier=faas.Parameter("barrier")):
    return _read("{r}", big, barrier)
'''
    project = write_project(tmp_path, code)
    # The readers meet through the test, over the network they asked for: a sandbox
    # shares nothing else with other functions.
    with _barrier(len(readers)) as address:
        result = _submit(c, project, "--param", f"barrier={address}")
    size = 64 * 2**20 * 8
    total_rss = total_pss = 0
    for r in readers:
        (line,) = [ln for ln in _lines(result, r) if ln.startswith("MAPPED")]
        fields = dict(kv.split("=") for kv in line.split()[1:])
        total_rss += int(fields["rss"])
        total_pss += int(fields["pss"])
    # Each reader sees the whole object, but the four together hold one copy of it.
    assert total_rss >= 4 * size * 0.95, (total_rss, size)
    assert size * 0.9 <= total_pss <= size * 1.1, (total_pss, size)


@contextmanager
def _barrier(n: int) -> Iterator[str]:
    """A TCP server on loopback where ``n`` clients meet, twice: each says a line, and when
    all have, all are told to go."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(120)

    def serve() -> None:
        conns = [server.accept()[0] for _ in range(n)]
        for _ in range(2):
            for conn in conns:
                conn.recv(16)
            for conn in conns:
                conn.sendall(b"go\n")
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        thread.join(5)
        server.close()


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and no worker yet: tests add workers as hosts of their own."""
    with scheduler_only(tmp_path) as c:
        yield c


# Two readers that each need 2 GiB, on hosts of 3 GiB: while one runs beside the producer's
# object, the other can only run on the other host, which pulls the object.
FAN_OUT = WHERE + '''
import faas
import pyarrow as pa
import pyarrow.compute as pc


@faas.model(memory="1GiB")
def produced(t=faas.Model("territories")):
    n = 3_000_000
    keys = pa.array(range(n), pa.int64())
    return pa.table({
        "k": keys,
        "x": pc.multiply(keys, 3),
        "s": pc.cast(pc.multiply(keys, 7), pa.string()),
    })


@faas.model(memory="2GiB", materialize="replace")
def west(produced=faas.Model("produced")):
    print("BACKED BY", _backing_file(produced))
    return produced


@faas.model(memory="2GiB", materialize="replace")
def east(produced=faas.Model("produced")):
    print("BACKED BY", _backing_file(produced))
    return produced
'''


def test_a_reader_on_another_host_pulls_an_identical_table(
    two_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    c = two_hosts
    shm = {
        host: c.add_worker(tmp_path, host, "--host-id", host, "--memory", "3GiB")
        for host in ("host-a", "host-b")
    }
    workers = {w["worker_id"]: w["host_id"] for w in c.wait_workers(2)}
    import_territories(c, example_data)
    project = write_project(tmp_path, FAN_OUT)
    result = _submit(c, project)
    assert result["status"] == "success"
    nodes = c.json("job", "get", result["run_id"])["nodes"]
    hosts = {n: workers[nodes[n]["worker"]] for n in ("produced", "west", "east")}
    assert hosts["west"] != hosts["east"], hosts
    puller = "west" if hosts["west"] != hosts["produced"] else "east"

    # The pulled copy is mapped from the puller's own shared memory, like a local object.
    (line,) = [ln for ln in _lines(result, puller) if ln.startswith("BACKED BY")]
    backing = Path(line.split()[-1])
    assert shm[hosts[puller]] in backing.parents, (line, hosts)
    assert "pulled object" in (tmp_path / f"{hosts[puller]}.log").read_text()

    def query(sql: str) -> list[dict[str, Any]]:
        return c.json("query", sql, "-n", "adventure")  # type: ignore[no-any-return]

    summary = "SELECT count(*) AS n, sum(k) AS k, sum(x) AS x, count(DISTINCT s) AS s FROM {}"
    assert query(summary.format("west")) == query(summary.format("east")) == [
        # (DuckDB sums are 128-bit integers: they travel as text.)
        {"n": 3_000_000, "k": str(4_499_998_500_000), "x": str(3 * 4_499_998_500_000), "s": 3_000_000}
    ]
    for a, b in (("west", "east"), ("east", "west")):
        assert query(f"SELECT count(*) AS n FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b})") == [{"n": 0}]
    assert query("SELECT k, x, s FROM east WHERE k = 12345") == [{"k": 12345, "x": 37035, "s": "86415"}]
    before = query(summary.format("west"))

    # Objects of a --no-cache run are deleted when it ends, and their pages kept: the next
    # such run's pull lands in them in place (the worker keeps them mapped once it pulls).
    assert _submit(c, project, "--no-cache")["status"] == "success"
    logs = {host: tmp_path / f"{host}.log" for host in shm}
    seen = {host: len(log.read_text()) for host, log in logs.items()}
    again = _submit(c, project, "--no-cache")
    assert again["status"] == "success"
    nodes = c.json("job", "get", again["run_id"])["nodes"]
    hosts = {n: workers[nodes[n]["worker"]] for n in ("produced", "west", "east")}
    puller = hosts["west"] if hosts["west"] != hosts["produced"] else hosts["east"]
    landed = re.findall(r"fetched object \S+ \((\d+) bytes\) from \S+, (\d+) of them in place",
                        logs[puller].read_text()[seen[puller]:])
    assert len(landed) == 1 and landed[0][0] == landed[0][1], landed
    assert query(summary.format("west")) == query(summary.format("east")) == before
    for a, b in (("west", "east"), ("east", "west")):
        assert query(f"SELECT count(*) AS n FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b})") == [{"n": 0}]


def test_a_worker_killed_mid_transfer_is_recovered_from_lineage(
    two_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """The producer's host dies half-way through serving its object to the reader on the
    other host: the reader never sees a part of it, and the run makes the lost object
    again on the surviving host and finishes with the right tables."""
    c = two_hosts
    shm = {
        host: c.add_worker(
            tmp_path, host, "--host-id", host, "--memory", "3GiB",
            env={"FAAS_FAILPOINT": "peer.send.half"},
        )
        for host in ("host-a", "host-b")
    }
    c.wait_workers(2)
    import_territories(c, example_data)
    result = _submit(c, write_project(tmp_path, FAN_OUT))
    assert result["status"] == "success"
    assert len(c.json("info")["workers"]) == 1, "one host died serving the object"
    events = c.json("job", "logs", result["run_id"])
    retried = {e["node"] for e in events if e.get("state") == "retrying"}
    # The producer was made again, from its inputs, on the surviving host.
    assert "produced" in retried, events
    summary = "SELECT count(*) AS n, sum(k) AS k, count(DISTINCT s) AS s FROM {}"
    for table in ("west", "east"):
        assert c.json("query", summary.format(table), "-n", "adventure") == [
            {"n": 3_000_000, "k": str(4_499_998_500_000), "s": 3_000_000}
        ]
    # The survivor holds whole objects only: nothing half-received, nothing half-written.
    (alive,) = c.json("info")["workers"]
    objects = list(shm[alive["host_id"]].glob(f"faas-{alive['worker_id']}/objects/*"))
    assert objects and all(p.suffix == ".arrow" for p in objects), objects


# -- caches -------------------------------------------------------------------------------

CHAIN = '''
import faas
import pyarrow.compute as pc


@faas.model()
def a(t=faas.Model("territories")):
    return t


@faas.model()
def b(a=faas.Model("a")):
    return a.filter(pc.greater(a.column("SalesTerritoryKey"), 0))


@faas.model(materialize="replace")
def c(b=faas.Model("b")):
    return b


@faas.model(materialize="replace")
def d(cat=faas.Model("product_category")):
    return cat


@faas.expectation()
def c_is_not_empty(c=faas.Model("c")):
    return c.num_rows > 0
'''

ALL = ["a", "b", "c", "c_is_not_empty", "d"]


def _setup_chain(c: Cluster, data: Path, tmp: Path) -> Path:
    import_territories(c, data)
    c.faas("table", "import", "adventure.product_category", str(data / "product_category.csv"),
           check=True)
    return write_project(tmp, CHAIN)


def _ran(c: Cluster, result: dict[str, Any]) -> list[str]:
    """Nodes that really ran (were started on a worker) in a run."""
    events = c.json("job", "logs", result["run_id"])
    return sorted({e["node"] for e in events if e.get("state") == "running"})


def test_a_rerun_of_an_unchanged_pipeline_runs_nothing(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    project = _setup_chain(cluster, example_data, tmp_path)
    first = _submit(cluster, project)
    assert first["cached"] == [] and _ran(cluster, first) == ALL
    history = cluster.json("log")
    c_rows = cluster.json("query", "SELECT count(*) AS n FROM c", "-n", "adventure")

    again = _submit(cluster, project)
    assert sorted(again["cached"]) == ALL
    assert _ran(cluster, again) == []
    # Nothing changed, so nothing was committed.
    assert again["commit"] is None and again["tables"] == []
    assert cluster.json("log") == history
    assert cluster.json("query", "SELECT count(*) AS n FROM c", "-n", "adventure") == c_rows

    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 0, proc.stderr
    assert "from cache: " in proc.stderr and "already published" in proc.stdout

    # --no-cache runs and publishes everything again.
    forced = _submit(cluster, project, "--no-cache")
    assert forced["cached"] == [] and _ran(cluster, forced) == ALL
    assert sorted(forced["tables"]) == ["adventure.c", "adventure.d"]


def test_a_changed_model_reruns_only_with_what_depends_on_it(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    project = _setup_chain(cluster, example_data, tmp_path)
    _submit(cluster, project)
    models = project / "models.py"
    models.write_text(models.read_text().replace("pc.greater(", "pc.greater_equal("))
    result = _submit(cluster, project)
    assert _ran(cluster, result) == ["b", "c", "c_is_not_empty"]
    assert sorted(result["cached"]) == ["a", "d"]
    assert result["tables"] == ["adventure.c"]

    # Back to the first version: its outputs are still in the worker's store, so nothing
    # runs, but table c (now the second version's) is published again from the cache.
    models.write_text(models.read_text().replace("pc.greater_equal(", "pc.greater("))
    back = _submit(cluster, project)
    assert _ran(cluster, back) == []
    assert sorted(back["cached"]) == ALL
    assert back["tables"] == ["adventure.c"]
    assert cluster.json("query", "SELECT count(*) AS n FROM c", "-n", "adventure") == [
        {"n": sum(1 for r in cluster.json("query", "SELECT * FROM territories", "-n", "adventure")
                  if r["SalesTerritoryKey"] > 0)}
    ]


def test_a_commit_to_a_source_table_invalidates_exactly_what_read_it(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    project = _setup_chain(cluster, example_data, tmp_path)
    _submit(cluster, project)
    cluster.faas("table", "import", "adventure.product_category",
                 str(example_data / "product_category.csv"), check=True)
    result = _submit(cluster, project)
    assert _ran(cluster, result) == ["d"]
    assert sorted(result["cached"]) == ["a", "b", "c", "c_is_not_empty"]


def test_source_columns_already_read_come_from_the_column_cache(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    cluster.faas("table", "import", "adventure.sale", str(example_data / "sale.csv"), check=True)
    three = '["OrderNumber", "ProductKey", "OrderQuantity"]'
    code = '''
import faas


@faas.model(materialize="replace")
def lines(sale=faas.Model("sale", columns=COLUMNS)):
    return sale
'''
    project = write_project(tmp_path, code.replace("COLUMNS", three))
    first = _submit(cluster, project)
    node = cluster.json("job", "get", first["run_id"])["nodes"]["lines"]
    assert node["columns_cached"] == []
    assert node["columns_read"] == [
        "adventure.sale.OrderNumber", "adventure.sale.ProductKey", "adventure.sale.OrderQuantity"
    ]

    four = '["OrderNumber", "ProductKey", "OrderQuantity", "TerritoryKey"]'
    (project / "models.py").write_text(code.replace("COLUMNS", four))
    second = _submit(cluster, project)
    node = cluster.json("job", "get", second["run_id"])["nodes"]["lines"]
    assert node["columns_read"] == ["adventure.sale.TerritoryKey"]
    assert sorted(node["columns_cached"]) == [
        "adventure.sale.OrderNumber", "adventure.sale.OrderQuantity", "adventure.sale.ProductKey"
    ]
    got = cluster.json("query", "SELECT * FROM lines ORDER BY OrderNumber, ProductKey", "-n", "adventure")
    want = cluster.json(
        "query",
        f"SELECT {', '.join(json.loads(four))} FROM sale ORDER BY OrderNumber, ProductKey",
        "-n", "adventure",
    )
    assert got == want

    # A new commit to the table: its columns are read again; --no-cache reads them all.
    cluster.faas("table", "import", "adventure.sale", str(example_data / "sale.csv"), check=True)
    third = _submit(cluster, project)
    assert len(cluster.json("job", "get", third["run_id"])["nodes"]["lines"]["columns_read"]) == 4
    fourth = _submit(cluster, project, "--no-cache")
    node = cluster.json("job", "get", fourth["run_id"])["nodes"]["lines"]
    assert node["columns_cached"] == [] and len(node["columns_read"]) == 4


def test_readers_start_while_a_materialized_output_is_still_being_written(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """A reader needs the object, not the Parquet file: it starts before its upstream
    has finished writing its table to the warehouse."""
    import_territories(cluster, example_data)
    project = write_project(tmp_path, '''
import faas
import pyarrow as pa
import pyarrow.compute as pc


@faas.model(materialize="replace")
def wide(t=faas.Model("territories")):
    keys = pa.array(range(4_000_000), pa.int64())
    return pa.table({"k": keys, "s": pc.cast(pc.multiply(keys, 7), pa.string())})


@faas.model()
def reader(wide=faas.Model("wide")):
    return pa.table({"n": [wide.num_rows]})
''')
    result = _submit(cluster, project)
    events = cluster.json("job", "logs", result["run_id"])
    reader_started = next(e["t"] for e in events if e["node"] == "reader" and e.get("state") == "running")
    wide_done = next(e["t"] for e in events if e["node"] == "wide" and e.get("state") == "done")
    assert reader_started < wide_done, events
    assert cluster.json("query", "SELECT count(*) AS n FROM wide", "-n", "adventure") == [{"n": 4_000_000}]


def test_a_kept_output_changed_on_the_target_meanwhile_fails_the_run(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """A run that does not commit an output again (the target has it from the same key)
    must not publish its other outputs if that table changed on the target meanwhile."""
    import_territories(cluster, example_data)
    project = write_project(tmp_path, '''
import faas


@faas.model(materialize="replace")
def kept(t=faas.Model("territories")):
    return t


@faas.model(materialize="replace", internet_access=True)
def slow(t=faas.Model("territories"), gate=faas.Parameter("gate")):
    wait_gate(gate)
    return t
''' + GATE_CODE)
    first, second = Gate(), Gate()
    first.touch()
    _submit(cluster, project, "--param", f"gate={first.address}")
    # Same `kept`, a new `slow`: the run keeps `kept` as published and waits in `slow`.
    run = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure",
         "--param", f"gate={second.address}"],
        env=cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_until(second.started, "slow to start", timeout=60)
    cluster.faas("table", "import", "adventure.kept", str(example_data / "territories.csv"),
                 check=True)
    head = cluster.json("log", "main", "-n", "1")
    second.touch()
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    last = err.strip().splitlines()[-1]
    assert "adventure.kept changed on 'main' while run" in last, err
    assert cluster.json("log", "main", "-n", "1") == head  # nothing of the run was published
