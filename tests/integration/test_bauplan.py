"""Bauplan projects run unchanged: examples/bauplan_adventureworks (bauplan_project.yml,
@bauplan decorators, DuckDB 1.0.0 over inputs named by their parameters, .arrow()) through
`faas run`, its outputs compared with DuckDB run directly on the source files; and what
faas refuses of such a project, said before anything runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from tests.conftest import ROOT, Cluster, import_example

pytestmark = pytest.mark.timeout(600)

PROJECT = ROOT / "examples" / "bauplan_adventureworks"
COUNTRIES = "SELECT Country, orders, units::BIGINT FROM country_sales ORDER BY Country"


def _direct(data: Path, min_quantity: int) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    """The project's three tables, computed by one DuckDB process from the CSV files."""
    with duckdb.connect() as con:
        for t in ("sale", "product", "territories"):
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_csv('{data / (t + '.csv')}', "
                        "header=true)")
        con.execute(f"""CREATE VIEW sale_lines AS SELECT * FROM sale
                        WHERE OrderQuantity >= 1 AND OrderQuantity >= {min_quantity}""")
        product_sales = con.execute("""
            SELECT p.ProductKey, p.ProductName, SUM(s.OrderQuantity) AS units,
                   ROUND(SUM(s.OrderQuantity * p.ProductPrice), 2) AS revenue
            FROM sale_lines s JOIN product p ON p.ProductKey = s.ProductKey
            GROUP BY ALL ORDER BY revenue DESC, p.ProductKey""").fetchall()
        country_sales = con.execute("""
            SELECT t.Country, COUNT(DISTINCT s.OrderNumber), SUM(s.OrderQuantity)
            FROM sale_lines s JOIN territories t ON t.SalesTerritoryKey = s.TerritoryKey
            GROUP BY ALL ORDER BY t.Country""").fetchall()
    top = sorted(((name, units, revenue) for _, name, units, revenue in product_sales),
                 key=lambda r: (-r[2], r[0]))[:10]
    return {"product_sales": product_sales, "country_sales": country_sales, "top_products": top}


def _faas_rows(c: Cluster, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    return [tuple(r.values()) for r in c.json("query", sql, "-n", "adventure")]


def test_a_bauplan_project_runs_unchanged(cluster: Cluster, example_data: Path) -> None:
    import_example(cluster, example_data)
    run = cluster.json("run", "--project-dir", str(PROJECT), "--namespace", "adventure")
    assert run["status"] == "success", run
    assert sorted(run["tables"]) == ["adventure.country_sales", "adventure.product_sales",
                                     "adventure.top_products"]
    want = _direct(example_data, 1)
    # DuckDB's sums are 128-bit integers (decimal(38,0) in Arrow): compared as integers.
    assert _faas_rows(cluster, "SELECT ProductKey, ProductName, units::BIGINT, revenue FROM "
                      "product_sales ORDER BY revenue DESC, ProductKey") == want["product_sales"]
    assert _faas_rows(cluster, COUNTRIES) == want["country_sales"]
    assert _faas_rows(cluster, "SELECT ProductName, units::BIGINT, revenue FROM top_products "
                      "ORDER BY revenue DESC, ProductName") == want["top_products"]
    assert "adventure.sale_lines" not in cluster.json("table", "ls", "-n", "adventure")  # NONE

    # Bauplan's run flags: --param (a bauplan_project.yml parameter), --strict, --dry-run.
    plan = cluster.json("run", "-p", str(PROJECT), "-n", "adventure", "--dry-run",
                        "--param", "min_quantity=3")
    assert {n["name"]: n["materialize"] for n in plan} == {
        "sale_lines": None, "product_sales": "replace", "country_sales": "replace",
        "top_products": "replace", "every_country_is_named": None}
    cluster.faas("run", "-p", str(PROJECT), "-n", "adventure", "--param", "min_quantity=3",
                 "--strict", check=True)
    assert _faas_rows(cluster, COUNTRIES) == _direct(example_data, 3)["country_sales"]


def test_what_faas_cannot_honour_is_said_before_anything_runs(cluster: Cluster,
                                                             example_data: Path,
                                                             tmp_path: Path) -> None:
    import_example(cluster, example_data)
    project = tmp_path / "p"
    shutil.copytree(PROJECT, project)
    models = (project / "models.py").read_text()
    models = models.replace('pip={"duckdb": "1.0.0"})\ndef sale_lines',
                            'pip={"duckdb": "1.0.0", "bauplan": "0.2.0"})\ndef sale_lines')
    models = models.replace('bauplan.Model("sale_lines")',
                            'bauplan.Model("sale_lines", ref="main")')
    (project / "models.py").write_text(models)
    yml = (project / "bauplan_project.yml").read_text()
    (project / "bauplan_project.yml").write_text(yml + """  region:
    type: vault
    default: awsssm:///arn:aws:ssm:us-east-1:123:parameter/region
""")
    proc = cluster.faas("run", "-p", str(project), "-n", "adventure")
    assert proc.returncode == 1, proc.stderr
    for needle in (
        "installs a package named 'bauplan', which would hide the bauplan module faas provides",
        "ref= is not supported by faas",
        "parameter 'region' has type 'vault'",
    ):
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    bad = cluster.faas("run", "-p", str(project), "-n", "adventure", "--no-transaction")
    assert bad.returncode == 1 and "always transactions" in bad.stderr
