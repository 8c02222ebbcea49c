"""The AdventureWorks example: generated data, and the models run without a runtime.

The models are called as plain functions on pyarrow tables read from the generated
CSV files and compared with ``examples/adventureworks/reference.py`` (DuckDB reading
the CSV files directly). Until the authoring SDK provides ``faas.model``, models.py
is imported against a stand-in ``faas`` module with identity decorators.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import inspect
import itertools
import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from faas.faasd.runner import as_arrow
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "adventureworks"
FILES = [
    "product.csv",
    "product_category.csv",
    "product_subcategory.csv",
    "sale.csv",
    "territories.csv",
]
ROWS = 20_000
SEED = 7


def _load(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> types.ModuleType:
    return _load("adventureworks_generate", EXAMPLE / "generate.py")


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    return _load("adventureworks_reference", EXAMPLE / "reference.py")


@pytest.fixture(scope="module")
def data_dir(gen, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adventureworks")
    summary = gen.generate(out, ROWS, SEED)
    assert summary["rows"] == ROWS
    return out


def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    convert = pacsv.ConvertOptions(include_columns=columns) if columns else None
    return pacsv.read_csv(path, convert_options=convert)


# --------------------------------------------------------------------------- generator


def test_same_seed_same_bytes(gen, tmp_path):
    a = gen.generate(tmp_path / "a", 5_000, 123)
    b = gen.generate(tmp_path / "b", 5_000, 123)
    gen.generate(tmp_path / "c", 5_000, 124)
    assert sorted(a["files"]) == FILES
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a["files"] == b["files"] and a["bytes"] == b["bytes"]
    assert (tmp_path / "a" / "sale.csv").read_bytes() != (tmp_path / "c" / "sale.csv").read_bytes()
    # the dimension tables depend on the seed only, not on the number of sale rows
    gen.generate(tmp_path / "d", 50, 123)
    for name in FILES:
        if name != "sale.csv":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()


def test_summary_matches_files(gen, tmp_path):
    summary = gen.generate(tmp_path, 1_000, 1)
    total = 0
    for name in FILES:
        raw = (tmp_path / name).read_bytes()
        assert summary["files"][name]["bytes"] == len(raw)
        assert summary["files"][name]["rows"] == _read(tmp_path / name).num_rows
        total += len(raw)
    assert summary["bytes"] == total
    assert summary["files"]["sale.csv"]["rows"] == summary["rows"] == 1_000
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_prints_one_json_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--rows", "300", "--out", str(tmp_path),
         "--seed", "5"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert {"files", "rows", "bytes", "seconds"} <= summary.keys()
    assert summary["rows"] == 300
    assert _read(tmp_path / "sale.csv").num_rows == 300


def test_crlf_line_ends_everywhere(data_dir):
    for name in FILES:
        raw = (data_dir / name).read_bytes()
        assert raw.endswith(b"\r\n"), name
        assert raw.count(b"\n") == raw.count(b"\r\n"), name
        assert raw.count(b"\r") == raw.count(b"\r\n"), name


def test_quoted_names_parse(data_dir):
    raw = (data_dir / "product.csv").read_text(encoding="utf-8")
    assert re.search(r'"Mountain-200 Black, \d+"', raw)
    assert '""' in raw  # an embedded, escaped double quote
    product = _read(data_dir / "product.csv")
    assert product.column_names == [
        "ProductKey", "ProductSubcategoryKey", "ProductName", "ProductSKU", "ProductColor",
        "ProductCost", "ProductPrice",
    ]
    names = product["ProductName"].to_pylist()
    assert sum("," in n for n in names) > 50
    assert sum('"' in n for n in names) >= 2
    assert "Mountain-200 Black, 38" in names
    # no field leaked into the next column: every SKU and color looks like one
    sku = re.compile(r"[A-Z]{2}-\d{2}[A-Z](-\w+)?")
    assert all(sku.fullmatch(s) for s in product["ProductSKU"].to_pylist())
    assert not any("," in c or '"' in c for c in product["ProductColor"].to_pylist())


def test_row_counts_and_shapes(data_dir):
    tables = {name: _read(data_dir / name) for name in FILES}
    assert tables["sale.csv"].num_rows == ROWS
    assert 250 <= tables["product.csv"].num_rows <= 350
    assert tables["product_subcategory.csv"].num_rows == 37
    assert tables["product_category.csv"].num_rows == 4
    assert tables["territories.csv"].num_rows == 10
    assert tables["sale.csv"].column_names == [
        "OrderDate", "OrderNumber", "ProductKey", "TerritoryKey", "OrderQuantity",
    ]
    assert tables["territories.csv"].column_names == [
        "SalesTerritoryKey", "Region", "Country", "Continent",
    ]
    assert tables["product_subcategory.csv"].column_names == [
        "ProductSubcategoryKey", "SubcategoryName", "ProductCategoryKey",
    ]
    assert tables["product_category.csv"].column_names == ["ProductCategoryKey", "CategoryName"]
    territories = tables["territories.csv"].to_pylist()
    assert {t["Country"] for t in territories} == {
        "United States", "Canada", "France", "Germany", "Australia", "United Kingdom",
    }
    assert {t["Continent"] for t in territories} == {"North America", "Europe", "Pacific"}
    for table in tables.values():
        assert all(table[c].null_count == 0 for c in table.column_names)


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_tiny_row_counts(gen, tmp_path, rows):
    gen.generate(tmp_path, rows, 3)
    assert _read(tmp_path / "sale.csv").num_rows == rows


def test_value_formats(data_dir):
    sale_lines = (data_dir / "sale.csv").read_bytes().decode().split("\r\n")[1:-1]
    assert len(sale_lines) == ROWS
    line_re = re.compile(r"([1-9]\d?)/([1-9]\d?)/(\d{4}),SO(\d+),(\d+),(\d+),([1-9]\d*)")
    previous = None
    for line in sale_lines:
        m = line_re.fullmatch(line)
        assert m, line
        month, day, year = int(m[1]), int(m[2]), int(m[3])
        date = dt.date(year, month, day)  # a real calendar date
        assert dt.date(2020, 1, 1) <= date <= dt.date(2022, 6, 30)
        if previous:  # ordered by date, order numbers ascending
            assert date >= previous[0] and int(m[4]) >= previous[1]
        previous = (date, int(m[4]))
    product_lines = (data_dir / "product.csv").read_bytes().decode().split("\r\n")[1:-1]
    for line in product_lines:
        cost, price = line.split(",")[-2:]
        assert re.fullmatch(r"\d+\.\d{4}", cost) and re.fullmatch(r"\d+\.\d{4}", price), line
        assert float(price) > float(cost) > 0


def test_foreign_keys_resolve(data_dir):
    sale = _read(data_dir / "sale.csv")
    product = _read(data_dir / "product.csv")
    sub = _read(data_dir / "product_subcategory.csv")
    cat = _read(data_dir / "product_category.csv")
    terr = _read(data_dir / "territories.csv")

    def all_in(values: pa.ChunkedArray, keys: pa.ChunkedArray) -> bool:
        return pc.all(pc.is_in(values, value_set=keys.combine_chunks())).as_py()

    assert all_in(sale["ProductKey"], product["ProductKey"])
    assert all_in(sale["TerritoryKey"], terr["SalesTerritoryKey"])
    assert all_in(product["ProductSubcategoryKey"], sub["ProductSubcategoryKey"])
    assert all_in(sub["ProductCategoryKey"], cat["ProductCategoryKey"])
    for table, key in [(product, "ProductKey"), (sub, "ProductSubcategoryKey"),
                       (cat, "ProductCategoryKey"), (terr, "SalesTerritoryKey")]:
        assert pc.count_distinct(table[key]).as_py() == table.num_rows
    assert pc.count_distinct(product["ProductSKU"]).as_py() == product.num_rows
    assert pc.min(sale["OrderQuantity"]).as_py() >= 1


def test_orders_are_consistent_across_chunks(gen, tmp_path, monkeypatch):
    """Small chunks: order numbers run on without gaps; an order has one date and territory."""
    monkeypatch.setattr(gen, "CHUNK_ROWS", 997)
    gen.generate(tmp_path, 5_000, 11)
    sale = _read(tmp_path / "sale.csv").to_pylist()
    numbers = [int(r["OrderNumber"][2:]) for r in sale]
    assert numbers[0] == gen.FIRST_ORDER_NUMBER
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(numbers))
    seen: dict[str, tuple] = {}
    for r in sale:
        assert seen.setdefault(r["OrderNumber"], (r["OrderDate"], r["TerritoryKey"])) == (
            r["OrderDate"], r["TerritoryKey"])
    assert len(seen) > 2_000  # most orders have one or two lines
    assert len({r["TerritoryKey"] for r in sale}) >= 7


# --------------------------------------------------------------------------- models


def _literal_call(node: ast.expr, fn: str) -> tuple[list, dict]:
    """Args of a ``faas.<fn>(...)`` call whose arguments are all literals."""
    assert isinstance(node, ast.Call), ast.dump(node)
    assert isinstance(node.func, ast.Attribute) and node.func.attr == fn
    assert isinstance(node.func.value, ast.Name) and node.func.value.id == "faas"
    return [ast.literal_eval(a) for a in node.args], {
        k.arg: ast.literal_eval(k.value) for k in node.keywords
    }


def _declared_models() -> dict[str, dict]:
    """What a static reader of models.py sees: decorators and each parameter's faas.Model."""
    tree = ast.parse((EXAMPLE / "models.py").read_text())
    models = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = {}
        for deco in node.decorator_list:
            assert isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
            decorators[deco.func.attr] = _literal_call(deco, deco.func.attr)
        params = {}
        assert len(node.args.defaults) == len(node.args.args), node.name
        for arg, default in zip(node.args.args, node.args.defaults, strict=False):
            args, kwargs = _literal_call(default, "Model")
            params[arg.arg] = {"table": args[0], **kwargs}
        models[node.name] = {"decorators": decorators, "params": params}
    return models


def _stand_in_faas() -> types.ModuleType:
    fake = types.ModuleType("faas")
    fake.__dict__["__stand_in__"] = True

    def model(name=None, materialize=None):
        return lambda fn: fn

    def python(version, pip=None):
        return lambda fn: fn

    class Model:
        def __init__(self, name, columns=None, filter=None):
            self.name, self.columns, self.filter = name, columns, filter

    fake.model, fake.python, fake.Model = model, python, Model
    return fake


@pytest.fixture(scope="module")
def models_module():
    try:
        import faas
    except ImportError:
        faas = None
    with pytest.MonkeyPatch.context() as mp:
        if faas is None or not hasattr(faas, "model"):
            mp.setitem(sys.modules, "faas", _stand_in_faas())
        yield _load("adventureworks_models", EXAMPLE / "models.py")


def _as_function(obj, params: list[str]):
    """The plain function behind a decorated model, whatever the SDK wrapped it in."""
    for candidate in (obj, getattr(obj, "__wrapped__", None), getattr(obj, "fn", None),
                      getattr(obj, "func", None), getattr(obj, "function", None)):
        if callable(candidate) and not isinstance(candidate, type):
            try:
                names = list(inspect.signature(candidate).parameters)
            except (TypeError, ValueError):
                continue
            if names == params:
                return candidate
    raise AssertionError(f"cannot find the function behind {obj!r}")


def test_models_are_declared_statically():
    models = _declared_models()
    assert list(models) == ["dim_product", "dim_country", "fact_sale"]
    for name, spec in models.items():
        assert spec["decorators"]["model"] == ([], {"materialize": "replace"}), name
        assert spec["decorators"]["python"] == (["3.11"], {}), name
        for param, declared in spec["params"].items():
            assert declared["columns"], (name, param)
    assert {p: d["table"] for p, d in models["fact_sale"]["params"].items()} == {
        "sale": "sale", "dim_product": "dim_product", "dim_country": "dim_country",
    }
    project = (EXAMPLE / "faas_project.toml").read_text()
    import tomllib
    assert tomllib.loads(project)["project"]["name"] == "adventureworks"


def _assert_tables_match(actual: pa.Table, expected: pa.Table, keys: list[str], model: str):
    assert actual.column_names == expected.column_names, model
    for field in expected.schema:
        assert actual.schema.field(field.name).type == field.type, (model, field.name)
    assert actual.num_rows == expected.num_rows, model
    order = [(k, "ascending") for k in keys]
    actual, expected = actual.sort_by(order), expected.sort_by(order)
    for field in expected.schema:
        got, want = actual[field.name].to_pylist(), expected[field.name].to_pylist()
        if pa.types.is_floating(field.type):
            bad = [i for i, (g, w) in enumerate(zip(got, want, strict=False))
                   if not math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9)]
        else:
            bad = [i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w]
        assert not bad, (model, field.name, bad[:5], [got[i] for i in bad[:5]],
                         [want[i] for i in bad[:5]])


def test_models_match_reference(models_module, reference, data_dir):
    declared = _declared_models()
    outputs: dict[str, pa.Table] = {}
    for name, spec in declared.items():  # file order is already upstream-first
        inputs = {}
        for param, d in spec["params"].items():
            if d["table"] in declared:
                inputs[param] = outputs[d["table"]].select(d["columns"])
            else:
                inputs[param] = _read(data_dir / f"{d['table']}.csv", d["columns"])
                assert inputs[param].column_names == d["columns"]
        fn = _as_function(getattr(models_module, name), list(spec["params"]))
        # As the function process takes it: a table, or a stream (a DuckDB relation).
        result = as_arrow(fn(**inputs), name)
        if isinstance(result, pa.RecordBatchReader):
            result = result.read_all()
        assert isinstance(result, pa.Table), (name, type(result))
        outputs[name] = result

    expected = reference.expected(data_dir)
    assert set(expected) == set(outputs)
    for name, table in expected.items():
        _assert_tables_match(outputs[name], table, reference.SORT_KEYS[name], name)

    fact = outputs["fact_sale"]
    assert fact.num_rows == ROWS
    assert all(fact[c].null_count == 0 for c in fact.column_names)
    assert fact.schema.field("OrderDate").type == pa.date32()
    assert pc.all(pc.greater(fact["Profit"], 0)).as_py()
    first = fact.sort_by([("OrderNumber", "ascending")]).slice(0, 1).to_pylist()[0]
    import hashlib
    assert first["ProductCountryKey"] == hashlib.md5(
        f"{first['ProductKey']}-{first['Country']}".encode()).hexdigest()
    assert outputs["dim_product"].num_rows == _read(data_dir / "product.csv").num_rows
    assert outputs["dim_country"].num_rows == 10


def test_sale_order_date_stays_text_when_read_with_pyarrow(data_dir):
    """fact_sale parses OrderDate itself, so the source column must arrive as text."""
    sale = _read(data_dir / "sale.csv", ["OrderDate"])
    assert pa.types.is_string(sale.schema.field("OrderDate").type)
