"""End to end: real scheduler and worker processes, the real CLI, the example pipeline."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, Cluster, import_example

sys.path.insert(0, str(EXAMPLE))
import reference  # noqa: E402  (the example's DuckDB-only reference outputs)

pytestmark = pytest.mark.timeout(300)


def _query_json(c: Cluster, sql: str, namespace: str = "adventure") -> list[dict]:
    return c.json("query", sql, "--namespace", namespace)  # type: ignore[no-any-return]


def test_example_pipeline_matches_duckdb_on_the_sources(cluster: Cluster, example_data: Path) -> None:
    import_example(cluster, example_data)
    proc = cluster.faas("submit", str(EXAMPLE), "--namespace", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "success"
    assert sorted(result["tables"]) == ["adventure.dim_country", "adventure.dim_product", "adventure.fact_sale"]
    assert len(result["commit"]) == 64

    expected = reference.expected(str(example_data))
    for name, table in expected.items():
        rows = _query_json(cluster, f"SELECT count(*) AS n FROM {name}")
        assert rows[0]["n"] == table.num_rows, name

    # A few values: revenue per country and one sale line, against DuckDB on the CSVs.
    want = {}
    fact = expected["fact_sale"].to_pylist()
    for r in fact:
        want[r["Country"]] = want.get(r["Country"], 0.0) + float(r["Revenue"])
    got = _query_json(cluster, "SELECT Country, sum(Revenue) AS revenue FROM fact_sale GROUP BY Country")
    assert {r["Country"] for r in got} == set(want)
    for r in got:
        assert math.isclose(float(r["revenue"]), want[r["Country"]], rel_tol=1e-9)
    line = min(fact, key=lambda r: (r["OrderNumber"], r["ProductKey"]))
    got_line = _query_json(
        cluster,
        f"SELECT * FROM fact_sale WHERE OrderNumber = '{line['OrderNumber']}' "
        f"AND ProductKey = {line['ProductKey']}",
    )
    assert len(got_line) == 1
    assert got_line[0]["ProductCountryKey"] == line["ProductCountryKey"]
    assert math.isclose(float(got_line[0]["Profit"]), float(line["Profit"]), rel_tol=1e-9)

    info = json.loads(cluster.faas("table", "get", "adventure.fact_sale", "--json", check=True).stdout)
    assert info["rows"] == expected["fact_sale"].num_rows
    assert info["metadata_location"].endswith(".metadata.json")
    # The example prints as it runs; the lines reach the client tagged with their model.
    assert cluster.alive()


def _write_project(root: Path, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(body)
    return root


FAILING = '''
import faas

@faas.model(materialize="replace")
def good(territories=faas.Model("territories")):
    print("good model ran")
    return territories

@faas.model(materialize="replace")
def broken(good=faas.Model("good")):
    print("about to fail")
    raise ValueError("boom: the data was not what I expected")
'''


def test_failing_function_commits_nothing_and_daemons_keep_serving(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    cluster.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    before = json.loads(cluster.faas("table", "ls", "--namespace", "adventure", "--json", check=True).stdout)

    project = _write_project(tmp_path / "failing", FAILING)
    proc = cluster.faas("submit", str(project), "--namespace", "adventure")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: boom" in proc.stderr
    assert "[broken] about to fail" in proc.stderr  # printed lines streamed back
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: model 'broken' \(models\.py:\d+\) raised ValueError: boom.*", last), last

    after = json.loads(cluster.faas("table", "ls", "--namespace", "adventure", "--json", check=True).stdout)
    assert after == before  # 'good' succeeded but the failed run published nothing
    assert cluster.alive()

    ok = _write_project(tmp_path / "ok", FAILING.split("@faas.model(materialize=\"replace\")\ndef broken")[0])
    proc = cluster.faas("submit", str(ok), "--namespace", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tables"] == ["adventure.good"]


def test_process_that_dies_fails_the_run(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    cluster.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"), check=True)
    project = _write_project(
        tmp_path / "dies",
        'import faas, os\n\n@faas.model()\ndef dies(t=faas.Model("territories")):\n    os._exit(3)\n',
    )
    proc = cluster.faas("submit", str(project), "--namespace", "adventure")
    assert proc.returncode == 1
    assert "exited with code 3" in proc.stderr
    assert cluster.alive()
