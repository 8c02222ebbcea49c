"""Caches outlive every process: daemon and scheduler restarts, branch switches; and runs
that go on without their client (--detach, job logs --follow, Client.follow)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faas.client.client import Client
from faas.protocol.errors import FunctionFailed
from faas.protocol.messages import LogLine, TaskEvent
from tests.conftest import (
    EXAMPLE,
    GATE_CODE,
    ROOT,
    SOURCE_TABLES,
    Cluster,
    Gate,
    LocalHome,
    as_from_a_terminal,
    import_territories,
    start_daemon,
    stop_daemon,
    write_project,
)

pytestmark = pytest.mark.timeout(300)

# A SQL model kept in memory only, a Python model that reads it and is published, and an
# expectation on that: after a restart nothing of it is in any worker's memory.
CLEAN_SQL = """-- faas: memory=1GiB
SELECT SalesTerritoryKey, Country FROM territories WHERE SalesTerritoryKey > 0
"""

COUNTRIES = '''
import faas


@faas.model(materialize="replace")
def countries(clean=faas.Model("clean")):
    print(f"countries from {clean.num_rows} territories")
    return clean


@faas.expectation()
def has_countries(countries=faas.Model("countries")):
    return countries.num_rows > 0
'''

NODES = ["clean", "countries", "has_countries"]


def _project(tmp: Path) -> Path:
    root = write_project(tmp, COUNTRIES)
    (root / "clean.sql").write_text(CLEAN_SQL)
    return root


def _ran(c: Cluster | LocalHome, run_id: str) -> list[str]:
    """Nodes that were started on a worker in a run."""
    return sorted({e["node"] for e in c.json("job", "logs", run_id) if e.get("state") == "running"})


def _submit(c: Cluster | LocalHome, project: Path, *args: str) -> dict[str, Any]:
    return c.json("submit", str(project), "-n", "adventure", *args)  # type: ignore[no-any-return]


def test_an_unchanged_project_runs_nothing_after_the_local_daemon_restarts(
    local: LocalHome, example_data: Path, tmp_path: Path
) -> None:
    local.faas("namespace", "create", "adventure", check=True)
    local.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"),
               check=True)
    project = _project(tmp_path)
    first = _submit(local, project)
    assert first["status"] == "success" and _ran(local, first["run_id"]) == NODES
    old = local.info()["pid"]
    local.faas("local", "stop", check=True)

    again = _submit(local, project)
    assert local.info()["pid"] != old  # a new daemon, with an empty worker
    assert sorted(again["cached"]) == NODES
    assert _ran(local, again["run_id"]) == [] and again["logs"] == []
    assert again["commit"] is None  # nothing changed, nothing committed


def test_an_unchanged_project_runs_nothing_after_a_scheduler_restart(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = _project(tmp_path)
    first = _submit(cluster, project)
    assert _ran(cluster, first["run_id"]) == NODES
    stop_daemon(cluster.scheduler)
    # The same home and address; the worker finds the new scheduler by itself.
    cluster.scheduler, _ = start_daemon(
        ["scheduler", "--listen", cluster.address, "--home", str(cluster.home),
         "--token-file", str(cluster.worker_token)],
        "faasd scheduler listening on", tmp_path / "scheduler2.log",
    )
    try:
        cluster.wait_workers(1)
        again = _submit(cluster, project)
        assert sorted(again["cached"]) == NODES
        assert _ran(cluster, again["run_id"]) == []
        # --no-cache still runs everything, verdict included.
        forced = _submit(cluster, project, "--no-cache")
        assert _ran(cluster, forced["run_id"]) == NODES
    finally:
        stop_daemon(cluster.scheduler)


def test_a_new_branch_reruns_exactly_the_models_that_read_a_reimported_table(
    local: LocalHome, example_data: Path
) -> None:
    local.faas("namespace", "create", "adventure", check=True)
    for t in SOURCE_TABLES:
        local.faas("table", "import", f"adventure.{t}", str(example_data / f"{t}.csv"), check=True)
    first = _submit(local, EXAMPLE)
    assert _ran(local, first["run_id"]) == ["dim_country", "dim_product", "fact_sale"]
    # Switching branch changes no key: everything is published there already.
    local.faas("branch", "create", "dev", check=True)
    on_dev = _submit(local, EXAMPLE, "--ref", "dev")
    assert _ran(local, on_dev["run_id"]) == []
    assert sorted(on_dev["cached"]) == ["dim_country", "dim_product", "fact_sale"]

    # A restart loses every object; then sale changes on dev only.
    local.faas("local", "stop", check=True)
    local.faas("table", "import", "adventure.sale", str(example_data / "sale.csv"), "--ref", "dev",
               check=True)
    result = _submit(local, EXAMPLE, "--ref", "dev")
    assert _ran(local, result["run_id"]) == ["fact_sale"]
    assert sorted(result["cached"]) == ["dim_country", "dim_product"]
    assert result["tables"] == ["adventure.fact_sale"]
    # fact_sale read the dimensions from their published tables: the same rows as before.
    query = ("SELECT count(*) AS n, round(sum(Revenue), 2) AS revenue, count(Country) AS placed "
             "FROM fact_sale")
    assert local.json("query", query, "-n", "adventure", "--ref", "dev") == local.json(
        "query", query, "-n", "adventure", "--ref", "main"
    )


# -- detached runs ---------------------------------------------------------------------

SLOW = GATE_CODE + '''
import faas


@faas.model(materialize="replace", internet_access=True)
def slow(t=faas.Model("territories")):
    print("before the pause", flush=True)
    wait_gate(RELEASE)
    print("after the pause", flush=True)
    return t
'''


def slow_project(tmp: Path, name: str = "slow") -> tuple[Path, Gate]:
    """A project whose one model pauses at a gate; the project and the gate (the test
    decides when the run goes on, no sleep does)."""
    release = Gate()
    return write_project(tmp, f"RELEASE = {release.address!r}\n" + SLOW, name), release

BROKEN = '''
import faas


@faas.model(materialize="replace")
def broken(t=faas.Model("territories")):
    raise ValueError("no territories for you")
'''


def test_a_detached_run_goes_on_and_is_followed_live(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project, release = slow_project(tmp_path)
    proc = cluster.faas("submit", str(project), "-n", "adventure", "--detach", check=True)
    run_id = proc.stdout.strip()
    assert run_id.startswith("run-") and f"faas job logs {run_id} --follow" in proc.stderr
    # The command returned while its run goes on (the run waits for the release file).
    assert [j["status"] for j in cluster.json("job", "ls") if j["run_id"] == run_id] == ["running"]
    with subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "job", "logs", run_id, "--follow"],
        env=cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as follow:
        assert follow.stdout is not None
        while "before the pause" not in follow.stdout.readline():
            pass
        release.touch()  # the rest comes live, to a follower already following
        rest, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    lines = ["[slow] before the pause", *rest.splitlines()]
    assert any("[slow] before the pause" in line for line in lines)
    assert any("[slow] after the pause" in line for line in lines)
    assert lines[-1].startswith(f"run {run_id} succeeded")
    assert cluster.json("job", "get", run_id)["status"] == "success"
    # Following a finished run replays it and exits the same way.
    replay = cluster.faas("job", "logs", run_id, "--follow", check=True)
    assert replay.stdout.splitlines()[-1].startswith(f"run {run_id} succeeded")


def test_following_a_failed_run_exits_non_zero_with_its_error(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = write_project(tmp_path, BROKEN)
    run_id = cluster.faas("submit", str(project), "-n", "adventure", "-d", check=True).stdout.strip()
    followed = cluster.faas("job", "logs", run_id, "--follow")
    assert followed.returncode == 1
    assert "no territories for you" in followed.stderr
    assert cluster.faas("job", "logs", "run-20000101-000000-abcdef", "--follow").returncode == 1


def test_ctrl_c_on_follow_stops_following_not_the_run(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project, release = slow_project(tmp_path)
    run_id = cluster.faas("submit", str(project), "-n", "adventure", "-d", check=True).stdout.strip()
    with subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "job", "logs", run_id, "--follow"],
        env=cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_from_a_terminal,
    ) as follow:
        assert follow.stdout is not None
        while "before the pause" not in follow.stdout.readline():
            pass
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=30)
    assert follow.returncode == 130
    assert cluster.json("job", "get", run_id)["status"] == "running"
    release.touch()
    done = cluster.faas("job", "logs", run_id, "--follow", check=True)
    assert f"run {run_id} succeeded" in done.stdout


def test_the_client_detaches_follows_and_cancels(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    slow, release = slow_project(tmp_path)
    never, _ = slow_project(tmp_path, "never")  # released by nothing: only a cancel ends it
    broken = write_project(tmp_path, BROKEN, "broken")

    async def scenario() -> None:
        c = Client(cluster.address, token_file=str(cluster.token_file))
        run = await c.submit(slow, namespace="adventure", detach=True)
        assert run.nodes == ["slow"]
        assert [j.status for j in await c.jobs() if j.run_id == run.run_id] == ["running"]
        events = []
        async for ev in run:  # iterating a detached run follows it
            events.append(ev)
            if isinstance(ev, LogLine) and ev.line == "before the pause":
                release.touch()
        assert [ev.line for ev in events if isinstance(ev, LogLine)] == [
            "before the pause", "after the pause"]
        assert [ev.state for ev in events if isinstance(ev, TaskEvent)][-1] == "done"
        assert (await run.result()).status == "success"

        failing = await c.submit(broken, namespace="adventure", detach=True)
        with pytest.raises(FunctionFailed, match="no territories for you"):
            await (await c.follow(failing.run_id)).wait()

        doomed = await c.submit(never, namespace="adventure", detach=True)
        await doomed.cancel()
        assert (await (await c.follow(doomed.run_id)).result()).status == "cancelled"

    asyncio.run(scenario())
