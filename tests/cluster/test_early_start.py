"""Early start: a function that reads a source table starts while its upstream functions
still run, reads its scans meanwhile, and gets the upstream objects when they exist.

Real scheduler and worker processes. "Hosts" are workers with their own host ids, so the
cross-host path (the object pulled once it exists) is really taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, import_territories, scheduler_only, write_project

pytestmark = pytest.mark.timeout(300)

# ``slow`` takes a while; ``joined`` scans territories and maps slow's output.
SLOW_UPSTREAM = '''
import time

import faas
import pyarrow as pa


@faas.model({memory})
def slow(t=faas.Model("territories")):
    time.sleep({sleep})
    {fail}
    return pa.table({{"SalesTerritoryKey": t.column("SalesTerritoryKey"),
                     "doubled": pa.compute.multiply(t.column("SalesTerritoryKey"), 2)}})


@faas.model(materialize="replace"{memory_join})
def joined(t=faas.Model("territories", columns=["SalesTerritoryKey", "Country"]),
           slow=faas.Model("slow")):
    print("JOINED SAW", t.num_rows, slow.num_rows)
    return t.join(slow, "SalesTerritoryKey").sort_by("SalesTerritoryKey")
'''


def _project(tmp: Path, *, sleep: float = 1.5, fail: bool = False, memory: str = "",
             memory_join: str = "") -> Path:
    return write_project(tmp, SLOW_UPSTREAM.format(
        sleep=sleep, fail='raise ValueError("slow broke")' if fail else "",
        memory=f'memory="{memory}"' if memory else "",
        memory_join=f', memory="{memory_join}"' if memory_join else "",
    ))


def _events(c: Cluster, run_id: str) -> list[dict[str, Any]]:
    return [e for e in c.json("job", "logs", run_id) if "state" in e]


def _first(events: list[dict[str, Any]], node: str, state: str) -> float:
    return min(e["t"] for e in events if e["node"] == node and e["state"] == state)


def test_a_reader_of_a_source_starts_before_its_upstream_is_made(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    proc = cluster.faas("submit", str(_project(tmp_path)), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    events = _events(cluster, result["run_id"])
    # joined's process ran (and read territories) while slow was still sleeping ...
    assert _first(events, "joined", "running") < _first(events, "slow", "done"), events
    job = cluster.json("job", "get", result["run_id"])
    phases = job["nodes"]["joined"]["phases"]
    # ... then waited for slow's object: most of slow's sleep is joined's wait.
    assert phases["waiting"] > 0.5, phases
    assert phases["inputs"] < phases["waiting"], phases
    # Its rows are what they would have been had it started late.
    rows = cluster.json(
        "query", "SELECT count(*) AS n, sum(doubled - 2 * SalesTerritoryKey) AS d FROM joined",
        "-n", "adventure",
    )
    assert rows == [{"n": 10, "d": "0"}] or rows == [{"n": 10, "d": 0}], rows
    assert any("JOINED SAW 10 10" in e["line"] for e in result["logs"]), result["logs"]


def test_an_upstream_that_fails_stops_the_reader_waiting_for_it(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    before = cluster.json("log", "main", "-n", "100")
    proc = cluster.faas("submit", str(_project(tmp_path, fail=True)), "-n", "adventure")
    assert proc.returncode == 1
    assert "slow broke" in proc.stderr, proc.stderr
    assert cluster.json("log", "main", "-n", "100") == before  # nothing published
    run_id = cluster.json("job", "ls")[0]["run_id"]
    nodes = cluster.json("job", "get", run_id)["nodes"]
    assert nodes["slow"]["state"] == "failed"
    assert nodes["joined"]["state"] in ("cancelled", "failed"), nodes["joined"]
    # The worker let go of the waiting function and serves the next run.
    ok = cluster.faas("submit", str(_project(tmp_path / "again", sleep=0)), "-n", "adventure")
    assert ok.returncode == 0, ok.stderr
    assert cluster.alive()


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Cluster]:
    with scheduler_only(tmp_path) as c:
        yield c


def test_an_early_reader_on_another_host_pulls_the_object_once_it_exists(
    two_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    c = two_hosts
    for host in ("host-a", "host-b"):
        c.add_worker(tmp_path, host, "--host-id", host, "--memory", "3GiB")
    workers = {w["worker_id"]: w["host_id"] for w in c.wait_workers(2)}
    import_territories(c, example_data)
    # Each needs 2 GiB of a 3 GiB host: the reader starts early only on the other host.
    project = _project(tmp_path, memory="2GiB", memory_join="2GiB")
    proc = c.faas("submit", str(project), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    nodes = c.json("job", "get", result["run_id"])["nodes"]
    assert workers[nodes["slow"]["worker"]] != workers[nodes["joined"]["worker"]], nodes
    events = _events(c, result["run_id"])
    assert _first(events, "joined", "running") < _first(events, "slow", "done"), events
    assert nodes["joined"]["phases"]["waiting"] > 0.5, nodes["joined"]["phases"]
    puller = workers[nodes["joined"]["worker"]]
    assert "pulled object" in (tmp_path / f"{puller}.log").read_text()
    assert c.json("query", "SELECT count(*) AS n FROM joined", "-n", "adventure") == [{"n": 10}]


def test_an_upstream_made_again_elsewhere_gets_the_place_its_early_reader_held(
    two_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """slow's host dies while joined waits for it on the other host, which has room for
    one of them only: joined gives its place back, slow is made there, then joined runs."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, wait_until

    c = two_hosts
    for host in ("host-a", "host-b"):
        c.add_worker(tmp_path, host, "--host-id", host, "--memory", "3GiB")
    c.wait_workers(2)
    import_territories(c, example_data)
    project = _project(tmp_path, sleep=4, memory="2GiB", memory_join="2GiB")
    submit = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure", "--json"],
        env=c.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    def both_running() -> dict[str, Any] | None:
        runs = c.json("job", "ls")
        nodes = c.json("job", "get", runs[0]["run_id"])["nodes"] if runs else {}
        running = all(nodes.get(n, {}).get("state") == "running" for n in ("slow", "joined"))
        return nodes if running else None

    nodes = wait_until(both_running, "slow to run and joined to wait for it", every=0.1)
    hosts = {w["worker_id"]: w["host_id"] for w in c.json("info")["workers"]}
    doomed = ("host-a", "host-b").index(hosts[nodes["slow"]["worker"]])
    os.kill(c.workers[doomed].pid, signal.SIGKILL)
    out, err = submit.communicate(timeout=120)
    assert submit.returncode == 0, err
    result = json.loads(out)
    events = _events(c, result["run_id"])
    assert any(e["node"] == "joined" and e["state"] == "retrying"
               and "'slow' is made again first" in e.get("error", "") for e in events), events
    assert c.json("query", "SELECT count(*) AS n FROM joined", "-n", "adventure") == [{"n": 10}]


def test_an_early_readers_timeout_does_not_count_its_wait(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """joined may run 2 s; it waits 3 s for slow, then runs in a fraction of a second."""
    import_territories(cluster, example_data)
    text = SLOW_UPSTREAM.format(sleep=3, fail="", memory="", memory_join="")
    timed = text.replace('@faas.model(materialize="replace")\ndef joined',
                         '@faas.model(materialize="replace", timeout=2)\ndef joined')
    assert timed != text
    proc = cluster.faas("submit", str(write_project(tmp_path, timed)), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    phases = cluster.json("job", "get", result["run_id"])["nodes"]["joined"]["phases"]
    assert phases["waiting"] > 2, phases  # longer than its timeout, and it was not stopped
