"""Git for data, as a user lives it: branch, import, run, check, merge, tag, time travel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, SOURCE_TABLES, Cluster, one_line_error

pytestmark = pytest.mark.timeout(300)





def test_branch_run_merge_tag_time_travel(cluster: Cluster, example_data: Path) -> None:
    c = cluster
    c.faas("namespace", "create", "adventure", check=True)
    c.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    main_before = c.json("log", "main", "-n", "100")

    # Work on a branch: it becomes the default ref of every command.
    assert c.json("checkout", "-b", "dev")["name"] == "dev"
    assert (c.home / "HEAD").read_text().strip() == "dev"
    for t in SOURCE_TABLES:
        if t != "territories":
            c.faas("table", "import", f"adventure.{t}", str(example_data / f"{t}.csv"), check=True)
    result = json.loads(c.faas("submit", str(EXAMPLE), "--namespace", "adventure", "--json", check=True).stdout)
    assert result["status"] == "success"

    rows = c.json("query", "SELECT count(*) AS n FROM fact_sale", "--namespace", "adventure")
    assert rows[0]["n"] > 0
    # The run merged into dev as one commit carrying the run id, and its branch is gone.
    dev_log = c.json("log", "-n", "1")
    assert dev_log[0]["properties"]["run_id"] == result["run_id"]
    assert len(dev_log[0]["parents"]) == 2
    assert not [b for b in c.json("branch", "ls", "--all") if b["name"].startswith("run/")]

    # main has not changed at all.
    assert c.json("log", "main", "-n", "100") == main_before
    assert c.json("table", "ls", "--ref", "main") == ["adventure.territories"]

    # What changes going from main to dev, as git diff main dev; and the other way.
    diff = {d["key"]: d for d in c.json("branch", "diff", "main", "dev")}
    assert diff["adventure.fact_sale"]["status"] == "added"
    assert diff["adventure.fact_sale"]["new_rows"] == rows[0]["n"]
    assert diff["adventure.fact_sale"]["old_rows"] is None
    assert "adventure.territories" not in diff
    back = {d["key"]: d for d in c.json("branch", "diff", "dev", "main")}
    assert back["adventure.fact_sale"]["status"] == "dropped"
    assert back["adventure.fact_sale"]["old_rows"] == rows[0]["n"]
    assert c.json("branch", "diff", "main") == c.json("branch", "diff", "main", "dev")  # dev is active

    # Merge: main changes in exactly one commit.
    merged = c.json("branch", "merge", "dev", "--into", "main")
    main_after = c.json("log", "main", "-n", "100")
    assert len(main_after) == len(main_before) + 1
    assert main_after[0]["hash"] == merged["commit"]
    assert [e["hash"] for e in main_after[1:]] == [e["hash"] for e in main_before]
    assert "adventure.fact_sale" in c.json("table", "ls", "--ref", "main")

    # Tag it, then time-travel to before the merge.
    c.faas("tag", "create", "v1", "--from", "main", check=True)
    before = main_before[0]["hash"]
    assert c.json("table", "ls", "--ref", f"main@{before[:12]}") == ["adventure.territories"]
    assert c.json("table", "ls", "--ref", f"@{before}") == ["adventure.territories"]
    tagged = c.json("query", "SELECT count(*) AS n FROM fact_sale", "--namespace", "adventure", "--ref", "v1")
    assert tagged == rows
    old = c.faas("query", "SELECT count(*) FROM fact_sale", "--namespace", "adventure", "--ref", f"main@{before[:12]}")
    one_line_error(old, "fact_sale")

    # Other engines read a table at any ref from its Iceberg metadata, without faas.
    from pyiceberg.table import StaticTable

    info = c.json("table", "get", "adventure.fact_sale", "--ref", "v1")
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
    before = c.json("log", "main", "-n", "100")
    project = tmp_path / "p"
    project.mkdir()
    (project / "models.py").write_text(FAILING)
    proc = c.faas("submit", str(project), "--namespace", "adventure")
    assert proc.returncode == 1
    assert "the run's outputs so far are on branch run/" in proc.stderr
    assert c.json("log", "main", "-n", "100") == before
    runs = [b["name"] for b in c.json("branch", "ls", "--all") if b["name"].startswith("run/")]
    assert len(runs) == 1
    assert not [b for b in c.json("branch", "ls") if b["name"].startswith("run/")]
    # The model that succeeded is on the run's branch, for inspection.
    assert "adventure.kept" in c.json("table", "ls", "--ref", runs[0])
    assert c.json("branch", "prune", "--runs") == runs
    assert not [b for b in c.json("branch", "ls", "--all") if b["name"].startswith("run/")]


def test_versioning_bad_input(cluster: Cluster) -> None:
    c = cluster
    c.faas("namespace", "create", "adventure", check=True)
    c.faas("checkout", "-b", "dev", check=True)
    heads = c.json("branch", "ls", "--all")
    one_line_error(c.faas("branch", "rm", "dev"), "active branch")
    one_line_error(c.faas("branch", "merge", "dev", "--into", "dev"), "dev")
    one_line_error(c.faas("table", "ls", "--ref", "nope"), "nope")
    one_line_error(c.faas("table", "ls", "--ref", "@zz"), "zz")
    one_line_error(c.faas("branch", "create", "bad name!"), "bad name!")
    one_line_error(c.faas("branch", "create", "dev"), "dev")
    one_line_error(c.faas("checkout", "ghost"), "ghost")
    one_line_error(c.faas("tag", "rm", "ghost"), "ghost")
    one_line_error(c.faas("branch", "rm", "main"), "main")
    assert c.json("branch", "ls", "--all") == heads
    assert (c.home / "HEAD").read_text().strip() == "dev"
