"""Git for data, as a user lives it: branch, import, run, check, merge, tag, time travel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, SOURCE_TABLES, Cluster

pytestmark = pytest.mark.timeout(300)


def _json(c: Cluster, *args: str) -> Any:
    return json.loads(c.faas(*args, "--json", check=True).stdout)


def _one_line_error(proc: Any, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_branch_run_merge_tag_time_travel(cluster: Cluster, example_data: Path) -> None:
    c = cluster
    c.faas("namespace", "create", "adventure", check=True)
    c.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    main_before = _json(c, "log", "main", "-n", "100")

    # Work on a branch: it becomes the default ref of every command.
    assert _json(c, "checkout", "-b", "dev")["name"] == "dev"
    assert (c.home / "HEAD").read_text().strip() == "dev"
    for t in SOURCE_TABLES:
        if t != "territories":
            c.faas("table", "import", f"adventure.{t}", str(example_data / f"{t}.csv"), check=True)
    result = json.loads(c.faas("submit", str(EXAMPLE), "--namespace", "adventure", "--json", check=True).stdout)
    assert result["status"] == "success"

    rows = _json(c, "query", "SELECT count(*) AS n FROM fact_sale", "--namespace", "adventure")
    assert rows[0]["n"] > 0
    # The run merged into dev as one commit carrying the run id, and its branch is gone.
    dev_log = _json(c, "log", "-n", "1")
    assert dev_log[0]["properties"]["run_id"] == result["run_id"]
    assert len(dev_log[0]["parents"]) == 2
    assert not [b for b in _json(c, "branch", "ls", "--all") if b["name"].startswith("run/")]

    # main has not changed at all.
    assert _json(c, "log", "main", "-n", "100") == main_before
    assert _json(c, "table", "ls", "--ref", "main") == ["adventure.territories"]

    # What dev has that main has not.
    diff = {d["key"]: d for d in _json(c, "branch", "diff", "dev", "main")}
    assert diff["adventure.fact_sale"]["status"] == "added"
    assert diff["adventure.fact_sale"]["new_rows"] == rows[0]["n"]
    assert "adventure.territories" not in diff

    # Merge: main changes in exactly one commit.
    merged = _json(c, "branch", "merge", "dev", "--into", "main")
    main_after = _json(c, "log", "main", "-n", "100")
    assert len(main_after) == len(main_before) + 1
    assert main_after[0]["hash"] == merged["commit"]
    assert [e["hash"] for e in main_after[1:]] == [e["hash"] for e in main_before]
    assert "adventure.fact_sale" in _json(c, "table", "ls", "--ref", "main")

    # Tag it, then time-travel to before the merge.
    c.faas("tag", "create", "v1", "--from", "main", check=True)
    before = main_before[0]["hash"]
    assert _json(c, "table", "ls", "--ref", f"main@{before[:12]}") == ["adventure.territories"]
    assert _json(c, "table", "ls", "--ref", f"@{before}") == ["adventure.territories"]
    tagged = _json(c, "query", "SELECT count(*) AS n FROM fact_sale", "--namespace", "adventure", "--ref", "v1")
    assert tagged == rows
    old = c.faas("query", "SELECT count(*) FROM fact_sale", "--namespace", "adventure", "--ref", f"main@{before[:12]}")
    _one_line_error(old, "fact_sale")

    # Other engines read a table at any ref from its Iceberg metadata, without faas.
    from pyiceberg.table import StaticTable

    info = _json(c, "table", "get", "adventure.fact_sale", "--ref", "v1")
    assert StaticTable.from_metadata(info["metadata_location"]).scan().to_arrow().num_rows == rows[0]["n"]
    assert cluster.alive()


FAILING = '''
import faas

@faas.model(materialize="replace")
def kept(t=faas.Model("territories")):
    return t

@faas.model(materialize="replace")
def broken(k=faas.Model("kept")):
    raise RuntimeError("no")
'''


def test_failed_run_leaves_branch_untouched_and_its_transaction_branch(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    c = cluster
    c.faas("namespace", "create", "adventure", check=True)
    c.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    before = _json(c, "log", "main", "-n", "100")
    project = tmp_path / "p"
    project.mkdir()
    (project / "models.py").write_text(FAILING)
    proc = c.faas("submit", str(project), "--namespace", "adventure")
    assert proc.returncode == 1
    assert "the run's outputs so far are on branch run/" in proc.stderr
    assert _json(c, "log", "main", "-n", "100") == before
    runs = [b["name"] for b in _json(c, "branch", "ls", "--all") if b["name"].startswith("run/")]
    assert len(runs) == 1
    assert not [b for b in _json(c, "branch", "ls") if b["name"].startswith("run/")]
    # The model that succeeded is on the run's branch, for inspection.
    assert "adventure.kept" in _json(c, "table", "ls", "--ref", runs[0])
    assert _json(c, "branch", "prune", "--runs") == runs
    assert not [b for b in _json(c, "branch", "ls", "--all") if b["name"].startswith("run/")]


def test_versioning_bad_input(cluster: Cluster) -> None:
    c = cluster
    c.faas("namespace", "create", "adventure", check=True)
    c.faas("checkout", "-b", "dev", check=True)
    heads = _json(c, "branch", "ls", "--all")
    _one_line_error(c.faas("branch", "rm", "dev"), "active branch")
    _one_line_error(c.faas("branch", "merge", "dev", "--into", "dev"), "dev")
    _one_line_error(c.faas("table", "ls", "--ref", "nope"), "nope")
    _one_line_error(c.faas("table", "ls", "--ref", "@zz"), "zz")
    _one_line_error(c.faas("branch", "create", "bad name!"), "bad name!")
    _one_line_error(c.faas("branch", "create", "dev"), "dev")
    _one_line_error(c.faas("checkout", "ghost"), "ghost")
    _one_line_error(c.faas("tag", "rm", "ghost"), "ghost")
    _one_line_error(c.faas("branch", "rm", "main"), "main")
    assert _json(c, "branch", "ls", "--all") == heads
    assert (c.home / "HEAD").read_text().strip() == "dev"
