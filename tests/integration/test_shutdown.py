"""Closing daemons in order: what was in flight ends as it really ends, and is recorded so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from faas.faasd.launch import stop_daemon
from tests.conftest import import_territories, scheduler_only, wait_until, write_project

pytestmark = pytest.mark.timeout(240)

PUBLISHED = '''
import faas


@faas.model(materialize="replace")
def kept(t=faas.Model("territories")):
    return t
'''


def test_a_scheduler_closed_while_a_run_publishes_records_the_run_as_it_ended(
    tmp_path: Path, example_data: Path
) -> None:
    """SIGTERM arrives while the run's merge into main is half-way (paused there): the
    merge finishes, the scheduler exits cleanly, and the run's record says success with
    the commit main now has."""
    env = dict(os.environ, FAAS_FAILPOINT="merge.after_diff:pause=3")
    with scheduler_only(tmp_path, env=env) as c:
        c.add_worker(tmp_path, "w")
        c.wait_workers(1)
        import_territories(c, example_data)
        project = write_project(tmp_path, PUBLISHED)
        submitted = c.faas("submit", str(project), "-n", "adventure", "--detach", "--json")
        assert submitted.returncode == 0, submitted.stderr
        run_id = json.loads(submitted.stdout)["run_id"]
        log = tmp_path / "scheduler.log"
        wait_until(lambda: f"run {run_id} publishing" in log.read_text(), "the run to begin publishing", timeout=60)
        stop_daemon(c.scheduler, timeout=60)
        assert c.scheduler.returncode == 0, log.read_text()[-2000:]
        record = json.loads((c.home / "runs" / run_id / "run.json").read_text())

    from faas.store import Lakehouse

    with Lakehouse(c.home) as lh:
        _, head = lh.catalog.resolve("main")
        assert lh.table_info("adventure.kept", "main").row_count == 10
    assert record["status"] == "success", record
    assert record["commit"] == head
