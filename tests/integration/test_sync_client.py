"""``faas.Client``, the synchronous client: from a plain script, from inside a running
event loop (as a notebook cell calls it), its typed errors and failed runs, Ctrl-C, and
against a cluster. The embedded tests share one home and its daemon."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import faas
from faas.protocol.errors import AlreadyExists, FaasError, FunctionFailed, NotFound, ProjectError
from tests.conftest import ROOT, Cluster, LocalHome, as_from_a_terminal, function_pid, wait_until

pytestmark = pytest.mark.timeout(240)

ORDERS = "id,name,amount\n1,a,10\n2,b,20\n3,c,30\n"

DOUBLED = '''
import faas


@faas.model(materialize="replace")
def doubled(orders=faas.Model("shop.orders")):
    import pyarrow.compute as pc

    print("rows in:", orders.num_rows)
    return orders.append_column("double", pc.multiply(orders["amount"], 2))
'''

BROKEN = '''
import faas


@faas.model()
def broken(orders=faas.Model("shop.orders")):
    print("about to fail")
    raise ValueError("amount went negative")
'''

SLOW = '''
import time

import faas


@faas.model(materialize="replace")
def slow_model(orders=faas.Model("shop.orders")):
    print("sleeping", flush=True)
    time.sleep(120)
    return orders
'''

# What a user's script does, embedded (FAAS_HOME in its environment, no cluster).
SCRIPT = r'''
import json
import sys

import faas

data, project = sys.argv[1], sys.argv[2]
out = {}
with faas.Client() as c:
    out["namespace"] = c.create_namespace("shop").name
    state = c.import_data("shop.orders", data)
    out["import"] = [state.job_status, state.table.rows]
    out["dev"] = c.create_branch("dev", from_ref="main").name
    run = c.run(project, ref="dev", namespace="shop", parameters={"unused": None})
    out["run"] = {"status": run.job_status, "lines": run.lines, "tables": run.tables,
                  "error": run.error, "job_id": run.job_id}
    out["at_dev"] = c.query("SELECT id, double FROM doubled ORDER BY id", ref="dev",
                            namespace="shop").to_pylist()
    out["main_has_it"] = c.has_table("shop.doubled", "main")
    out["scan"] = c.scan("doubled", ref="dev", namespace="shop", columns=["id"],
                         filters="double > 20").column("id").to_pylist()
    out["max_rows"] = c.query("SELECT * FROM shop.orders", ref="dev", max_rows=2).num_rows
    out["commits"] = [x.message for x in c.get_commits("dev", limit=2)]
    tag = c.create_tag("v1", from_ref="dev")
    out["tag"] = [tag.name, tag.head == c.get_branch("dev").head]
    out["tables"] = sorted(t.fqn for t in c.get_tables("dev", filter_by_namespace="shop"))
    out["branches"] = sorted(b.name for b in c.get_branches())
    out["jobs"] = [[j.run_id, j.status] for j in c.get_jobs(limit=5)]
print(json.dumps(out))
'''

# Ctrl-C while the script waits for a run: the run is cancelled.
INTERRUPTED = r'''
import json
import os
import signal
import sys
import threading
import time

import faas

c = faas.Client()


def interrupt_once_it_runs():
    while True:
        time.sleep(0.1)
        running = c.get_jobs(filter_by_statuses="RUNNING")
        if running and any(e.line == "sleeping" for e in c.get_job_logs(running[0])):
            os.kill(os.getpid(), signal.SIGINT)
            return


threading.Thread(target=interrupt_once_it_runs, daemon=True).start()
try:
    c.run(sys.argv[1], namespace="shop")
    print(json.dumps({"interrupted": False}))
except KeyboardInterrupt:
    job = c.get_jobs(limit=1)[0]
    print(json.dumps({"interrupted": True, "run_id": job.run_id}))
'''


@dataclass
class Shop:
    home: LocalHome
    root: Path
    script: dict[str, Any]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """An embedded home where a plain script made namespace shop, imported shop.orders,
    ran a project on branch dev and tagged it v1; what it printed."""
    root = tmp_path_factory.mktemp("sync")
    home = LocalHome(root / "home")
    (root / "orders.csv").write_text(ORDERS)
    for name, text in (("doubled", DOUBLED), ("broken", BROKEN), ("slow", SLOW)):
        (root / name).mkdir()
        (root / name / "models.py").write_text(text)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(root / "orders.csv"), str(root / "doubled")],
            env=home.env(), cwd=root, capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        yield Shop(home, root, json.loads(proc.stdout))
    finally:
        home.stop()


def test_a_plain_script_imports_runs_queries_and_tags(shop: Shop) -> None:
    out = shop.script
    assert out["namespace"] == "shop"
    assert out["import"] == ["SUCCESS", 3]
    assert out["dev"] == "dev"
    run = out["run"]
    assert run["status"] == "SUCCESS" and run["error"] is None, run
    assert run["lines"] == ["rows in: 3"]
    assert run["tables"] == ["shop.doubled"]
    assert out["at_dev"] == [{"id": 1, "double": 20}, {"id": 2, "double": 40},
                             {"id": 3, "double": 60}]
    assert out["main_has_it"] is False  # the run published on dev only
    assert out["scan"] == [2, 3]
    assert out["max_rows"] == 2
    assert out["commits"] == [f"run {run['job_id']}: shop.doubled",
                              "import shop.orders from 1 files"]
    assert out["tag"] == ["v1", True]
    assert out["tables"] == ["shop.doubled", "shop.orders"]
    assert out["branches"] == ["dev", "main"]
    assert out["jobs"] == [[run["job_id"], "success"]]


def test_called_from_inside_a_running_event_loop(
    shop: Shop, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FAAS_CLUSTER", raising=False)

    async def cell() -> dict[str, Any]:
        # As in a notebook: the caller's loop runs in this thread, asyncio.run would fail.
        asyncio.get_running_loop()
        with faas.Client(home=shop.home.home) as c:
            rows = c.query("SELECT id, double FROM shop.doubled ORDER BY id", ref="v1").to_pylist()
            merged = c.merge_branch("dev", into_branch="main", commit_message="publish doubled")
            with pytest.raises(NotFound) as missing:
                c.get_table("doubled", ref="no-such-branch", namespace="shop")
            return {
                "rows": rows, "merged": merged.commit, "main": c.get_branch("main").head,
                "on_main": c.has_table("doubled", namespace="shop"),
                "message": str(missing.value),
            }

    out = asyncio.run(cell())
    assert [r["double"] for r in out["rows"]] == [20, 40, 60]
    assert out["merged"] == out["main"] and out["on_main"] is True
    assert "no-such-branch" in out["message"] and "\n" not in out["message"]


def test_typed_errors_failed_runs_and_ctrl_c(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAAS_CLUSTER", raising=False)
    with faas.Client(home=shop.home.home) as c:
        # As with Bauplan, a run that fails is not raised: its state says so.
        state = c.run(shop.root / "broken", namespace="shop")
        assert state.job_status == "FAILED"
        assert state.error is not None and "amount went negative" in state.error
        assert state.error_kind == "FunctionFailed" and state.lines == ["about to fail"]
        with pytest.raises(FunctionFailed, match="amount went negative"):
            state.raise_for_status()
        # What cannot start raises, typed, one line.
        with pytest.raises(ProjectError, match="does not exist"):
            c.run(shop.root / "nowhere", namespace="shop")
        with pytest.raises(NotFound) as missing:
            c.query("SELECT * FROM shop.orders", ref="no-such-ref")
        assert "no-such-ref" in str(missing.value) and "\n" not in str(missing.value)

    # Ctrl-C while a script waits for a run cancels the run, and its function stops.
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, str(shop.root / "slow")], env=shop.home.env(),
        cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=as_from_a_terminal,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["interrupted"] is True
    with faas.Client(home=shop.home.home) as c:
        job = wait_until(lambda: (j := c.get_job(out["run_id"])).status != "running" and j,
                         "the run to end", timeout=30)
        assert job.status == "cancelled"
        assert c.get_jobs(filter_by_statuses="ABORT", limit=1)[0].run_id == out["run_id"]
    wait_until(lambda: function_pid("slow_model") is None, "the function to stop", timeout=30)


def test_against_a_cluster(cluster: Cluster, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_HOME", str(tmp_path / "client-home"))  # no active branch: main
    monkeypatch.delenv("FAAS_CLUSTER", raising=False)
    data = tmp_path / "orders.csv"
    data.write_text(ORDERS)
    with faas.Client(cluster.address, token_file=str(cluster.token_file)) as c:
        assert c.cluster == cluster.address
        c.create_namespace("shop")
        c.import_data("orders", str(data), namespace="shop")
        assert c.query("SELECT sum(amount) AS total FROM orders", namespace="shop").to_pylist() \
            == [{"total": 60}]
        assert [b.name for b in c.get_branches()] == ["main"]
        assert [n.name for n in c.get_namespaces()] == ["shop"]
        # create_table: empty, with the files' schema and partitions; import_data fills it.
        made = c.create_table("partitioned", str(data), namespace="shop",
                              partitioned_by=["name"])
        assert (made.rows, made.partitioned_by) == (0, "name")
        with pytest.raises(AlreadyExists):
            c.create_table("shop.partitioned", str(data))
        c.import_data("shop.partitioned", str(data))
        assert c.get_table("shop.partitioned").rows == 3
        again = c.create_table("shop.partitioned", str(data), replace=True)
        assert (again.rows, again.partitioned_by) == (0, "")
    # api_key, Bauplan's name for the token (NAME:SECRET).
    key = cluster.token_file.read_text().strip()
    with faas.Client(cluster.address, api_key=key) as c:
        assert c.get_table("shop.orders").rows == 3
    with pytest.raises(FaasError), faas.Client(cluster.address, api_key="nobody:" + "0" * 32) as c:
        c.get_branches()
