"""Function processes under limits: memory, timeouts, crashes, cancellation.

Each failure leaves both daemons serving and commits nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import (
    ROOT,
    Cluster,
    as_from_a_terminal,
    function_pid,
    import_territories,
    scheduler_only,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.timeout(240)

GROW = '''
import time
import faas


@faas.model(materialize="replace", memory="{memory}")
def hungry(t=faas.Model("territories")):
    held = []
    for _ in range({chunks}):
        held.append(b"x" * (20 * 2**20))   # 20 MiB at a time, touched
        time.sleep(0.01)
    print(f"held {{len(held) * 20}} MiB")
    return t
'''



def _setup(c: Cluster, data: Path) -> list[dict[str, Any]]:
    import_territories(c, data)
    return c.json("log", "main", "-n", "100")


def test_memory_overrun_is_retried_once_with_double(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    before = _setup(cluster, example_data)
    # Needs ~400 MiB: more than 300 MiB, less than the 600 MiB of the retry.
    project = write_project(tmp_path, GROW.format(memory="300MiB", chunks=20))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 0, proc.stderr
    assert "hungry: retrying" in proc.stderr and "over its limit of 300 MiB" in proc.stderr
    assert "retrying once with 600 MiB" in proc.stderr
    assert "[hungry] held 400 MiB" in proc.stderr
    assert len(cluster.json("log", "main", "-n", "100")) == len(before) + 1
    assert cluster.alive()


def test_memory_overrun_twice_fails_the_run(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    before = _setup(cluster, example_data)
    project = write_project(tmp_path, GROW.format(memory="200MiB", chunks=100))  # wants 2 GiB
    t0 = time.monotonic()
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model 'hungry' used ") and "over its limit of 400 MiB" in last
    assert time.monotonic() - t0 < 60
    run_id = cluster.json("job", "ls")[0]["run_id"]
    assert cluster.json("job", "get", run_id)["nodes"]["hungry"]["state"] == "failed"
    assert cluster.json("log", "main", "-n", "100") == before
    assert cluster.alive()


def test_timeout_stops_the_function(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    before = _setup(cluster, example_data)
    project = write_project(tmp_path, (
        "import time\nimport faas\n\n@faas.model(materialize='replace', timeout=1.5)\n"
        "def slow(t=faas.Model('territories')):\n    print('sleeping', flush=True)\n"
        "    time.sleep(120)\n    return t\n"
    ))
    t0 = time.monotonic()
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1
    assert "error: model 'slow' ran past its timeout of 1.5s and was stopped" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert cluster.json("log", "main", "-n", "100") == before
    assert cluster.alive()


def test_a_model_without_a_timeout_gets_the_workers_default(
    example_data: Path, tmp_path: Path
) -> None:
    with scheduler_only(tmp_path) as bare:
        bare.add_worker(tmp_path, "strict", "--function-timeout", "1.5")
        bare.wait_workers(1)
        before = _setup(bare, example_data)
        project = write_project(tmp_path, (
            "import time\nimport faas\n\n@faas.model(materialize='replace')\n"
            "def slow(t=faas.Model('territories')):\n    time.sleep(120)\n    return t\n"
        ))
        proc = bare.faas("submit", str(project), "-n", "adventure")
        assert proc.returncode == 1
        assert ("error: model 'slow' ran past its timeout of 1.5s (the worker's default: faasd "
                "worker --function-timeout) and was stopped") in proc.stderr
        assert bare.json("log", "main", "-n", "100") == before
        assert bare.alive()


def test_timeout_must_be_a_number(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    _setup(cluster, example_data)
    project = write_project(tmp_path, (
        "import faas\n\n@faas.model(timeout='soon')\ndef m(t=faas.Model('territories')):\n    return t\n"
    ))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1 and "models.py:3: timeout must be a number of seconds" in proc.stderr


def test_segfault_fails_the_run_not_the_worker(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    before = _setup(cluster, example_data)
    project = write_project(tmp_path, (
        "import ctypes\nimport faas\n\n@faas.model(materialize='replace')\n"
        "def crash(t=faas.Model('territories')):\n    ctypes.string_at(0)\n    return t\n"
    ))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 1
    assert "was killed by signal SIGSEGV" in proc.stderr
    assert cluster.json("log", "main", "-n", "100") == before
    assert cluster.alive()
    cluster.faas("info", "--json", check=True)


def test_ctrl_c_cancels_the_run(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    before = _setup(cluster, example_data)
    project = write_project(tmp_path, (
        "import time\nimport faas\n\n@faas.model(materialize='replace')\n"
        "def forever(t=faas.Model('territories')):\n"
        "    while True:\n        time.sleep(0.1)\n"
    ))
    submit = subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure"],
        env=cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_from_a_terminal,
    )
    pid = wait_until(lambda: function_pid("forever"), "the function to start", timeout=60)
    assert psutil.pid_exists(pid)
    submit.send_signal(signal.SIGINT)
    _, err = submit.communicate(timeout=30)
    assert submit.returncode == 130, err
    assert "cancelled" in err
    deadline = time.monotonic() + 20
    while psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "the function process outlived its cancelled run"
        time.sleep(0.05)
    assert cluster.json("log", "main", "-n", "100") == before
    assert cluster.alive()
    assert os.environ.get("FAAS_CLUSTER") is None  # the test did not leak settings


def test_resident_memory_counts_descendants_and_bounds_private_memory() -> None:
    """The watcher's cheap reading (statm of the whole tree) is never below what it bounds
    (the tree's unique pages), so a process under it is under its limit."""
    from faas.faasd.limits import private_bytes, resident_bytes

    # bytes * n writes every byte (a zeroed bytearray may stay untouched, not resident).
    grandchild = "x = b'x' * (64 << 20); import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        "time.sleep(60)\n"
    )])
    try:
        # Once the grandchild holds its 64 MiB, the tree's unique pages count them...
        wait_until(lambda: private_bytes(psutil.Process(child.pid)) >= 64 << 20,
                   "the grandchild to hold 64 MiB", timeout=30)
        # ...and the cheap reading is never below that.
        assert resident_bytes(child.pid) >= private_bytes(psutil.Process(child.pid)) >= 64 << 20
    finally:
        for p in psutil.Process(child.pid).children(recursive=True):
            p.kill()
        child.kill()
        child.wait()
