"""Several workers on several hosts: placement spreads work, runs survive lost workers.

"Hosts" are workers with their own --host-id and shared-memory directory, so objects
cross between them over TCP exactly as between machines.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, ROOT, Cluster, import_example, scheduler_only

sys.path.insert(0, str(EXAMPLE))
import reference  # noqa: E402  (the example's DuckDB-only reference outputs)

pytestmark = pytest.mark.timeout(600)

HOSTS = ("host-1", "host-2", "host-3")


@pytest.fixture
def three_hosts(tmp_path: Path) -> Iterator[Cluster]:
    with scheduler_only(tmp_path) as c:
        for host in HOSTS:
            _start_worker(c, tmp_path, host)
        c.wait_workers(len(HOSTS))
        yield c


def _start_worker(c: Cluster, tmp: Path, host: str) -> subprocess.Popen[str]:
    """A worker for ``host`` (a restart reuses the host's directories)."""
    c.add_worker(tmp, host, "--host-id", host, "--memory", "4GiB")
    return c.workers[-1]


def _expected_counts(data: Path) -> dict[str, int]:
    return {name: t.num_rows for name, t in reference.expected(str(data)).items()}


def _counts(c: Cluster) -> dict[str, int]:
    return {
        name: c.json("query", f"SELECT count(*) AS n FROM {name}", "-n", "adventure")[0]["n"]
        for name in ("dim_product", "dim_country", "fact_sale")
    }


def test_the_example_spreads_over_three_workers(
    three_hosts: Cluster, example_data: Path
) -> None:
    c = three_hosts
    import_example(c, example_data)
    proc = c.faas("submit", str(EXAMPLE), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    nodes = c.json("job", "get", result["run_id"])["nodes"]
    hosts = {w["worker_id"]: w["host_id"] for w in c.json("info")["workers"]}
    where = {name: hosts[n["worker"]] for name, n in nodes.items()}
    # The two dimensions run side by side on different hosts; the fact table reads both.
    assert where["dim_product"] != where["dim_country"], where
    assert _counts(c) == _expected_counts(example_data)
    info = c.json("info")
    assert sorted(w["host_id"] for w in info["workers"]) == list(HOSTS)
    assert all(w["functions"] == [] for w in info["workers"])


def test_a_function_no_worker_can_hold_fails_at_once(three_hosts: Cluster, example_data: Path, tmp_path: Path) -> None:
    c = three_hosts
    import_example(c, example_data)
    project = tmp_path / "huge"
    project.mkdir()
    (project / "models.py").write_text(
        "import faas\n\n@faas.model(memory='64GiB')\n"
        "def huge(t=faas.Model('territories')):\n    return t\n"
    )
    started = time.monotonic()
    proc = c.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "model 'huge' reserves 64 GiB" in line and "4 GiB" in line, line
    assert time.monotonic() - started < 25  # refused at placement, not after a wait


def _log_head(c: Cluster) -> str:
    return c.json("log", "main", "-n", "1")[0]["hash"]  # type: ignore[no-any-return]


def test_chaos_kill_a_random_worker_during_each_of_six_runs(
    three_hosts: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """kill -9 a random worker at a random moment of each run, then start it again: every
    run finishes with the right tables or fails cleanly; main is never partly written;
    nothing of the killed workers stays in shared memory."""
    c = three_hosts
    import_example(c, example_data)
    want = _expected_counts(example_data)
    rng = random.Random(20261124)
    outcomes = []
    for i in range(6):
        head = _log_head(c)
        run = subprocess.Popen(
            [sys.executable, "-m", "faas.client.cli", "submit", str(EXAMPLE), "-n", "adventure",
             "--json", "--no-cache"],
            env=c.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(rng.uniform(0.0, 2.0))
        victim = rng.randrange(len(HOSTS))
        proc = c.workers[victim]
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        c.workers[victim] = _start_worker(c, tmp_path, HOSTS[victim])
        c.workers.pop()  # _start_worker appended it; it replaces the victim in place
        out, err = run.communicate(timeout=300)
        result: dict[str, Any] = json.loads(out) if out.strip() else {}
        if run.returncode == 0:
            assert result["status"] == "success"
            assert _counts(c) == want, f"run {i}"
            assert _log_head(c) != head
            events = c.json("job", "logs", result["run_id"])
            recovered = any(e.get("state") == "retrying" for e in events)
            outcomes.append("recovered" if recovered else "success")
        else:
            assert "Traceback" not in err, err
            assert result.get("status") in ("failed", None), (out, err)
            assert _log_head(c) == head, f"run {i} failed but main moved"
            outcomes.append("failed")
        c.wait_workers(len(HOSTS))
    print("chaos outcomes:", outcomes)  # "recovered": a node was made again after a kill
    assert c.alive()
    # The restarted workers removed what the killed ones left in shared memory and on disk.
    for host in HOSTS:
        left = sorted(p.name for p in (tmp_path / f"shm-{host}").glob("faas-w-*"))
        assert len(left) == 1, (host, left)
        spilled = sorted(p.name for p in (tmp_path / f"spill-{host}").glob("faas-w-*"))
        assert len(spilled) == 1, (host, spilled)
