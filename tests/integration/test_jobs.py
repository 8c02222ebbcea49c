"""Runs are kept: list them, inspect them, replay their logs, cancel a running one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    ROOT,
    Cluster,
    function_pid,
    import_territories,
    start_daemon,
    stop_daemon,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.timeout(240)

CHATTY = '''
import logging
import sys
import faas


@faas.model(materialize="replace")
def chatty(t=faas.Model("territories")):
    print("first line")
    print("to stderr", file=sys.stderr)
    logging.getLogger("mine").warning("a logging record")
    return t
'''

LOUD = '''
import faas


@faas.model(materialize="replace")
def loud(t=faas.Model("territories")):
    line = "x" * 999
    for i in range(30_000):  # 30 MB of prints
        print(f"{i:06d} {line}")
    return t
'''

FOREVER = '''
import time
import faas


@faas.model(materialize="replace")
def forever(t=faas.Model("territories")):
    while True:
        time.sleep(0.1)
'''





def _start_forever(c: Cluster, tmp: Path) -> tuple[subprocess.Popen[str], str, int]:
    project = write_project(tmp, FOREVER)
    submit = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure"],
        env=c.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    pid = wait_until(lambda: function_pid("forever"), "the function to start", timeout=60)
    running = [j for j in c.json("job", "ls") if j["status"] == "running"]
    assert len(running) == 1
    return submit, running[0]["run_id"], pid


def _gone(pid: int, within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_runs_are_listed_and_their_logs_replayed(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    import_territories(cluster, example_data)
    result = json.loads(cluster.faas("submit", str(write_project(tmp_path, CHATTY)), "-n", "adventure",
                                     "--json", check=True).stdout)
    run_id = result["run_id"]
    listed = cluster.json("job", "ls")
    assert listed[0]["run_id"] == run_id and listed[0]["status"] == "success"
    job = cluster.json("job", "get", run_id)
    assert job["nodes"]["chatty"]["state"] == "done" and job["commit"] == result["commit"]
    lines = [(e["node"], e["stream"], e["line"]) for e in cluster.json("job", "logs", run_id) if "line" in e]
    assert ("chatty", "stdout", "first line") in lines
    assert ("chatty", "stderr", "to stderr") in lines
    assert any("a logging record" in line for _, _, line in lines)
    text = cluster.faas("job", "logs", run_id, check=True).stdout
    assert "[chatty] first line" in text and "chatty: done" in text
    bad = cluster.faas("job", "get", "run-nope")
    assert bad.returncode == 1 and "no run 'run-nope'" in bad.stderr


def test_each_function_s_phases_are_timed_and_kept(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = write_project(tmp_path, CHATTY + '''

@faas.model()
def reader(chatty=faas.Model("chatty", columns=["Country"])):
    return chatty
''')
    run_id = cluster.json("submit", str(project), "-n", "adventure")["run_id"]
    nodes = cluster.json("job", "get", run_id)["nodes"]
    chatty, reader = nodes["chatty"]["phases"], nodes["reader"]["phases"]
    every = {"queued", "environment", "process_start", "inputs", "code", "output_shm"}
    # The chatty one scans a table (read by its worker) and is materialized (written, committed).
    assert every | {"scan", "output_parquet", "commit"} == set(chatty)
    assert every == set(reader)  # in memory only
    assert all(isinstance(v, float) and v >= 0 for v in [*chatty.values(), *reader.values()])
    (scan,) = nodes["chatty"]["inputs"]
    rows = len(cluster.json("query", "SELECT * FROM territories", "-n", "adventure"))
    assert (scan["param"], scan["source"], scan["name"], scan["rows"]) == (
        "t", "scan", "adventure.territories", rows)
    (mapped,) = nodes["reader"]["inputs"]
    assert (mapped["source"], mapped["name"], mapped["rows"]) == ("object", "chatty", rows)
    assert mapped["nbytes"] > 0 and mapped["seconds"] >= 0
    text = cluster.faas("job", "get", run_id, check=True).stdout
    assert "output_pa" in text and "chatty.t <- scan adventure.territories" in text
    assert "reader.chatty <- object chatty" in text and "c code" in text and "r scan" in text


def test_job_cancel_stops_a_running_run(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    import_territories(cluster, example_data)
    before = cluster.json("log", "main", "-n", "100")
    submit, run_id, function_pid = _start_forever(cluster, tmp_path)
    assert cluster.json("job", "cancel", run_id)["status"] == "cancelled"
    _, err = submit.communicate(timeout=30)
    assert submit.returncode == 1 and "cancelled" in err
    assert _gone(function_pid), "the function process outlived its cancelled run"
    assert cluster.json("job", "get", run_id)["status"] == "cancelled"
    assert cluster.json("log", "main", "-n", "100") == before
    again = cluster.faas("job", "cancel", run_id)
    assert again.returncode == 1 and "is not running (it is cancelled)" in again.stderr
    assert cluster.alive()


def test_a_scheduler_restart_marks_in_flight_runs_failed(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    before = cluster.json("log", "main", "-n", "100")
    submit, run_id, function_pid = _start_forever(cluster, tmp_path)
    cluster.scheduler.kill()  # no chance to clean up
    cluster.scheduler.wait()
    submit.communicate(timeout=30)
    assert submit.returncode != 0
    # The worker lost its scheduler: it stops that run's function.
    assert _gone(function_pid), "the function kept running after its scheduler died"
    # The new scheduler comes back where the old one was: the worker finds it on its own.
    sched, address = start_daemon(
        ["scheduler", "--listen", cluster.address, "--home", str(cluster.home),
         "--token-file", str(cluster.worker_token)],
        "faasd scheduler listening on", tmp_path / "scheduler2.log",
    )
    try:
        cluster.scheduler = sched
        assert address == cluster.address
        job = cluster.json("job", "get", run_id)
        assert job["status"] == "failed" and "scheduler stopped" in job["error"]
        assert cluster.json("log", "main", "-n", "100") == before
        cluster.wait_workers(1)
        # It lets go of what the lost run held, and runs new work.
        assert cluster.shm_dir is not None
        wait_until(lambda: not list(cluster.shm_dir.glob(f"faas-w-*/work/{run_id}")), "the worker to remove the lost run's files", timeout=30, every=0.1)
        quick = write_project(tmp_path / "quick", "import faas\n\n@faas.model(materialize='replace')\n"
                         "def quick(t=faas.Model('territories')):\n    return t\n")
        again = cluster.faas("submit", str(quick), "-n", "adventure")
        assert again.returncode == 0, again.stderr
    finally:
        stop_daemon(sched)


def test_thirty_megabytes_of_prints_leave_the_run_and_its_logs_working(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = write_project(tmp_path, LOUD)
    proc = cluster.faas("submit", str(project), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    marker = "[faas] this run printed more than 16 MiB"
    # The run's own client got the lines up to the limit, then one line saying so.
    assert out["status"] == "success" and out["logs"][-1]["line"].startswith(marker)
    events = cluster.json("job", "logs", out["run_id"])  # several pages: more than a frame
    lines = [e["line"] for e in events if "line" in e]
    assert lines[0].startswith("000000 ") and lines[-1].startswith(marker)
    assert len(lines) == len(out["logs"]) and 15_000 < len(lines) < 30_000
    assert sum(len(line) + 1 for line in lines[:-1]) <= 16 * 2**20
    assert [e["state"] for e in events if "state" in e][-1] == "done"
    text = cluster.faas("job", "logs", out["run_id"], check=True).stdout
    assert marker in text
