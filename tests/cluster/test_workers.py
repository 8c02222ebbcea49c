"""Several workers: objects stay with the worker that made them; a silent worker is lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

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

pytestmark = pytest.mark.timeout(240)

CHAIN = '''
import faas


@faas.model()
def a(t=faas.Model("territories")):
    return t


@faas.model()
def b(a=faas.Model("a")):
    return a


@faas.model(materialize="replace")
def c(a=faas.Model("a"), b=faas.Model("b")):
    return b
'''



def _setup(c: Cluster, data: Path, tmp: Path, text: str) -> Path:
    import_territories(c, data)
    return write_project(tmp, text)


def test_two_workers_on_one_host_keep_objects_with_their_maker(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    cluster.add_worker(tmp_path, "second")
    project = _setup(cluster, example_data, tmp_path, CHAIN)
    cluster.wait_workers(2)
    for _ in range(6):
        # --no-cache: every run places and runs every function.
        proc = cluster.faas("submit", str(project), "-n", "adventure", "--json", "--no-cache")
        assert proc.returncode == 0, proc.stderr
    for listed in cluster.json("job", "ls"):
        job = cluster.json("job", "get", listed["run_id"])
        # b and c read a's output where it was made: all ran on a's worker.
        assert len({job["nodes"][n]["worker"] for n in "abc"}) == 1, job["nodes"]
        assert not any(job["nodes"][n]["cached"] for n in "abc")
    assert cluster.alive()


def test_a_worker_that_goes_silent_is_lost_and_its_run_fails(
    example_data: Path, tmp_path: Path
) -> None:
    # Its run would wait for another worker (--worker-wait): there is none to wait for.
    with scheduler_only(tmp_path, args=["--worker-wait", "2"]) as cluster:
        cluster.add_worker(tmp_path, "silent")
        cluster.wait_workers(1)
        _goes_silent(cluster, example_data, tmp_path)


def _goes_silent(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    started = Gate()  # open: the function only says it runs
    started.touch()
    project = _setup(cluster, example_data, tmp_path, GATE_CODE + (
        "import time\nimport faas\n\n@faas.model(materialize='replace', internet_access=True)\n"
        "def slow(t=faas.Model('territories')):\n"
        f"    wait_gate({started.address!r})\n"
        "    time.sleep(120)\n    return t\n"
    ))
    before = cluster.json("log", "main", "-n", "100")
    submit = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure"],
        env=cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_until(started.started, "the function to start", timeout=60)
    worker = cluster.workers[0]
    os.kill(worker.pid, signal.SIGSTOP)  # alive but silent, like a host cut off
    try:
        _, err = submit.communicate(timeout=60)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert submit.returncode == 1
    assert "was lost" in err or "no frame from" in err, err
    assert cluster.json("log", "main", "-n", "100") == before
    run_id = cluster.json("job", "ls")[0]["run_id"]
    assert cluster.json("job", "get", run_id)["nodes"]["slow"]["state"] == "failed"


CORES = '''
import faas


def _budget(name):
    import os, time
    import duckdb
    import pyarrow as pa
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0]
    print(f"BUDGET {name} omp={os.environ['OMP_NUM_THREADS']} arrow={pa.cpu_count()} duckdb={threads}")
    print(f"START {name} {time.time()}")
    time.sleep(1.0)
    print(f"END {name} {time.time()}")


@faas.model(cpus=3)
def heavy_a(t=faas.Model("territories")):
    _budget("heavy_a")
    return t


@faas.model(cpus=3)
def heavy_b(t=faas.Model("territories")):
    _budget("heavy_b")
    return t


@faas.model()
def light(t=faas.Model("territories")):
    _budget("light")
    return t
'''


def test_functions_that_reserve_cores_never_share_them_and_get_them_as_threads(
    example_data: Path, tmp_path: Path
) -> None:
    with scheduler_only(tmp_path) as c:
        c.add_worker(tmp_path, "w", "--cpus", "4")
        (worker,) = c.wait_workers(1)
        assert (worker["cpus"], worker["cpus_reserved"]) == (4, 0)
        info = c.faas("info", check=True).stdout
        assert "0 of 4 cores reserved" in info
        project = _setup(c, example_data, tmp_path, CORES)
        proc = c.faas("submit", str(project), "-n", "adventure", "--no-cache")
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout + proc.stderr
        budgets = dict(re.findall(r"BUDGET (\w+) (omp=\d+ arrow=\d+ duckdb=\d+)", text))
        assert budgets["heavy_a"] == budgets["heavy_b"] == "omp=3 arrow=3 duckdb=3", text
        # What nobody reserved: 4 cores, or 1 while a heavy function holds 3.
        assert budgets["light"] in ("omp=4 arrow=4 duckdb=4", "omp=1 arrow=1 duckdb=1"), text
        starts = dict(re.findall(r"START (\w+) ([\d.]+)", text))
        ends = dict(re.findall(r"END (\w+) ([\d.]+)", text))
        span = {name: (float(starts[name]), float(ends[name])) for name in starts}
        a, b = span["heavy_a"], span["heavy_b"]
        assert a[1] <= b[0] or b[1] <= a[0], span  # 3 + 3 > 4 cores: one after the other

        # More cores than the worker offers: refused before anything runs, in one line.
        (project / "models.py").write_text(CORES.replace("cpus=3", "cpus=8"))
        proc = c.faas("submit", str(project), "-n", "adventure", "--no-cache")
        assert proc.returncode != 0
        assert "reserves 8 cores, more than any worker has: the largest is" in proc.stderr
        assert c.alive()
