"""The authoring model end to end: SQL models, parameters, expectations, validation."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(300)

PROJECT_TOML = '''
[project]
name = "pricing"

[parameters.min_price]
type = "float"
default = 0
description = "lowest product price to keep"

[parameters.color]
type = "str"
default = "Black"
'''

PRICEY_SQL = '''-- faas: materialize=replace
-- Products above a price, and their subcategory name.
SELECT p.ProductKey, p.ProductName, p.ProductPrice, s.SubcategoryName
FROM product AS p
JOIN product_subcategory AS s USING (ProductSubcategoryKey)
WHERE p.ProductPrice > $min_price
'''

COLORED_SQL = '''-- faas: materialize=replace
SELECT ProductKey, ProductColor FROM product WHERE ProductColor = $color
'''

CHECKS_PY = '''
import faas


@faas.expectation()
def prices_are_positive(pricey=faas.Model("pricey", columns=["ProductPrice"])):
    import pyarrow.compute as pc
    print(f"checking {pricey.num_rows} prices")
    return pricey.num_rows == 0 or pc.min(pricey.column("ProductPrice")).as_py() > 0


@faas.expectation()
def at_most_ten(pricey=faas.Model("pricey")):
    return pricey.num_rows <= 10
'''



def _setup(c: Cluster, data: Path) -> None:
    c.faas("namespace", "create", "shop", check=True)
    for t in ("product", "product_subcategory"):
        c.faas("table", "import", f"shop.{t}", str(data / f"{t}.csv"), check=True)


def _project(root: Path, *, checks: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "faas_project.toml").write_text(PROJECT_TOML)
    (root / "pricey.sql").write_text(PRICEY_SQL)
    (root / "colored.sql").write_text(COLORED_SQL)
    if checks:
        (root / "checks.py").write_text(CHECKS_PY)
    return root


def _expected_pricey(data: Path, min_price: float) -> int:
    with duckdb.connect() as con:
        return con.execute(
            f"SELECT count(*) FROM read_csv('{data / 'product.csv'}', header=true) "
            "WHERE ProductPrice > ?", [min_price],
        ).fetchone()[0]


def test_sql_model_with_a_parameter(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    _setup(cluster, example_data)
    project = _project(tmp_path / "p")
    plan = cluster.json("submit", str(project), "-n", "shop", "--dry-run")
    pricey = next(n for n in plan if n["name"] == "pricey")
    assert pricey["kind"] == "sql" and pricey["params"] == {"min_price": 0.0}
    assert sorted(i["from"] for i in pricey["inputs"]) == ["shop.product", "shop.product_subcategory"]

    cluster.faas("submit", str(project), "-n", "shop", check=True)
    everything = cluster.json("query", "SELECT count(*) AS n FROM pricey", "-n", "shop")[0]["n"]
    assert everything == _expected_pricey(example_data, 0)

    cluster.faas("submit", str(project), "-n", "shop", "--param", "min_price=1000", check=True)
    rows = cluster.json("query", "SELECT min(ProductPrice) AS lo, count(*) AS n FROM pricey", "-n", "shop")
    assert rows[0]["n"] == _expected_pricey(example_data, 1000) < everything
    assert rows[0]["lo"] > 1000


def test_a_parameter_is_a_value_never_sql(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    _setup(cluster, example_data)
    project = _project(tmp_path / "p")
    cluster.faas("submit", str(project), "-n", "shop", "--param", "color=Black' OR '1'='1", check=True)
    assert cluster.json("query", "SELECT count(*) AS n FROM colored", "-n", "shop")[0]["n"] == 0
    cluster.faas("submit", str(project), "-n", "shop", "--param", "color=Black", check=True)
    black = cluster.json("query", "SELECT DISTINCT ProductColor FROM colored", "-n", "shop")
    assert black == [{"ProductColor": "Black"}]
    # A typed parameter rejects what is not of its type, before anything runs.
    proc = cluster.faas("submit", str(project), "-n", "shop", "--param", "min_price=0 OR 1=1")
    assert proc.returncode == 1
    assert "--param min_price" in proc.stderr and "float" in proc.stderr


def test_expectations_warn_or_gate_publishing(cluster: Cluster, example_data: Path, tmp_path: Path) -> None:
    _setup(cluster, example_data)
    project = _project(tmp_path / "p", checks=True)
    before = cluster.json("log", "main", "-n", "100")

    # Not strict: the failing expectation is a warning; outputs are published.
    proc = cluster.faas("submit", str(project), "-n", "shop")
    assert proc.returncode == 0, proc.stderr
    assert "at_most_ten: failed\n" in proc.stderr and "prices_are_positive: passed\n" in proc.stderr
    assert "[prices_are_positive] checking" in proc.stderr
    published = cluster.json("log", "main", "-n", "100")
    assert len(published) == len(before) + 1

    # Strict: the same run fails and main does not move.
    proc = cluster.faas("submit", str(project), "-n", "shop", "--strict")
    assert proc.returncode == 1
    assert "expectation 'at_most_ten' failed (--strict): nothing was published" in proc.stderr
    assert cluster.json("log", "main", "-n", "100") == published
    # With a threshold that keeps ten or fewer products, the strict run passes.
    cluster.faas("submit", str(project), "-n", "shop", "--strict", "--param", "min_price=1e9", check=True)


BROKEN_PY = '''
import faas


@faas.model(materialize=MODE)
def one(p=faas.Model("product", columns=["ProductKey", "NoSuchColumn"])):
    return p


@faas.model()
@faas.python("2.7")
def two(x=faas.Model("no_such_table")):
    return x


@faas.model()
def three(p=faas.Model("product", filter="ProductPrice >")):
    return p


@faas.model()
def four(a=faas.Model("five")):
    return a


@faas.model()
def five(a=faas.Model("four")):
    return a
'''


def test_many_mistakes_reported_at_once_nothing_runs(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    _setup(cluster, example_data)
    root = tmp_path / "broken"
    root.mkdir()
    (root / "models.py").write_text(BROKEN_PY)
    (root / "bad.sql").write_text("SELEC * FROM product\n")
    (root / "faas_project.toml").write_text("[parameters.n]\ntype = 'int'\nrequired = true\n")
    before = cluster.json("branch", "ls", "--all")
    log = cluster.json("log", "main", "-n", "100")
    proc = cluster.faas("submit", str(root), "-n", "shop", "--param", "nope=1")
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback" not in err
    # Reading and planning problems come together, each with where it is.
    for needle in (
        "models.py:5:", "must be a literal",           # a non-literal decorator argument
        "bad.sql:1:",                                  # SQL that does not parse
        "no column 'NoSuchColumn'",
        "'no_such_table'",
        "Python 2.7, which no worker offers",
        "bad filter 'ProductPrice >'",
        "cycle: ",
        "parameter 'n' is required",
        "--param nope: the project has no parameter 'nope'",
    ):
        assert needle in err, (needle, err)
    assert "9 problems in the project" in err
    # Nothing ran, nothing was committed, no run branch was made.
    assert cluster.json("branch", "ls", "--all") == before
    assert cluster.json("log", "main", "-n", "100") == log
    assert cluster.alive()
