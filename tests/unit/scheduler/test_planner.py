"""The static project reader and the planner, driven as pure functions.

``read_project(files)`` parses user code with :mod:`ast` (never importing it) and
``build_plan(project, namespace, ref, params, lookup)`` resolves inputs against a
fake catalog given as ``lookup``. No daemons, no files outside the example project.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

import faas
from faas.protocol.errors import PlanInvalid
from faas.protocol.messages import ObjectInput, ScanInput
from faas.scheduler.dag import Plan, SourceTable, build_plan
from faas.scheduler.reader import Project, read_project
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)

EXAMPLE = ROOT / "examples" / "adventureworks"

# The example's source tables as the CSV import creates them (column order of the files).
ADVENTURE_TABLES: dict[str, dict[str, pa.DataType]] = {
    "product": {
        "ProductKey": pa.int64(),
        "ProductSubcategoryKey": pa.int64(),
        "ProductName": pa.string(),
        "ProductSKU": pa.string(),
        "ProductColor": pa.string(),
        "ProductCost": pa.float64(),
        "ProductPrice": pa.float64(),
    },
    "product_category": {"ProductCategoryKey": pa.int64(), "CategoryName": pa.string()},
    "product_subcategory": {
        "ProductSubcategoryKey": pa.int64(),
        "SubcategoryName": pa.string(),
        "ProductCategoryKey": pa.int64(),
    },
    "sale": {
        "OrderDate": pa.string(),
        "OrderNumber": pa.string(),
        "ProductKey": pa.int64(),
        "TerritoryKey": pa.int64(),
        "OrderQuantity": pa.int64(),
    },
    "territories": {
        "SalesTerritoryKey": pa.int64(),
        "Region": pa.string(),
        "Country": pa.string(),
        "Continent": pa.string(),
    },
}


# --------------------------------------------------------------------------- helpers


class Catalog:
    """A fake catalog at one ref: ``key -> columns``; records every key looked up."""

    def __init__(self, tables: dict[str, dict[str, pa.DataType] | list[str]]) -> None:
        self.tables = tables
        self.looked_up: list[str] = []

    def __call__(self, key: str) -> SourceTable | None:
        self.looked_up.append(key)
        cols = self.tables.get(key)
        if cols is None:
            return None
        if isinstance(cols, list):
            cols = {c: pa.int64() for c in cols}
        return SourceTable(
            key=key,
            metadata_location=f"file:///warehouse/{key.replace('.', '/')}/metadata/v3.json",
            snapshot_id=abs(hash(key)) % 10_000 + 1,
            schema=pa.schema(list(cols.items())),
        )


def example_files() -> dict[str, str]:
    """The example project the way the client packs it: relative path -> text."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(EXAMPLE.glob("*.py"))}
    files["faas_project.toml"] = (EXAMPLE / "faas_project.toml").read_text(encoding="utf-8")
    return files


def adventure_catalog(namespace: str = "adventure") -> Catalog:
    return Catalog({f"{namespace}.{t}": cols for t, cols in ADVENTURE_TABLES.items()})


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the ``nth`` line of ``text`` that contains ``needle``."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} times"
    return hits[nth - 1]


def read_problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(PlanInvalid) as info:
        read_project(files)
    assert info.value.problems, "PlanInvalid without problems"
    return info.value.problems


def plan(
    files: dict[str, str],
    tables: dict[str, dict[str, pa.DataType] | list[str]] | Callable[[str], SourceTable | None]
    | None = None,
    *,
    namespace: str = "ns",
    ref: str = "main",
    params: dict[str, str] | None = None,
) -> Plan:
    lookup = tables if callable(tables) else Catalog(tables or {})
    return build_plan(read_project(files), namespace, ref, params or {}, lookup)


def plan_problems(files: dict[str, str], tables=None, **kw) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanInvalid) as info:
        plan(files, tables, **kw)
    assert info.value.problems, "PlanInvalid without problems"
    return info.value.problems


def only(problems: list[str], *needles: str) -> str:
    """The single problem that contains every needle."""
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"expected one problem with {needles}, got {problems}"
    return hits[0]


# --------------------------------------------------------------------------- the example


def test_example_project_reads_three_models() -> None:
    project = read_project(example_files())
    assert isinstance(project, Project)
    assert project.name == "adventureworks"
    by_name = {m.name: m for m in project.models}
    assert set(by_name) == {"dim_product", "dim_country", "fact_sale"}
    for m in project.models:
        assert m.module == "models"
        assert m.function == m.name
        assert m.materialize == "replace"
        assert m.python == "3.11"
        assert m.pip == {}
        assert m.params == []
    fact = by_name["fact_sale"]
    assert [i.param for i in fact.inputs] == ["sale", "dim_product", "dim_country"]
    text = example_files()["models.py"]
    assert fact.where == f"models.py:{line_of(text, 'def fact_sale(')}"
    assert fact.inputs[0].where == f"models.py:{line_of(text, 'sale=faas.Model(')}"


def test_example_plan_orders_and_resolves_inputs() -> None:
    catalog = adventure_catalog()
    p = build_plan(read_project(example_files()), "adventure", "main", {}, catalog)
    assert p.namespace == "adventure" and p.ref == "main"
    assert set(p.nodes) == {"dim_product", "dim_country", "fact_sale"}
    assert sorted(p.order) == sorted(p.nodes)
    assert p.order.index("dim_product") < p.order.index("fact_sale")
    assert p.order.index("dim_country") < p.order.index("fact_sale")

    fact = p.nodes["fact_sale"]
    assert fact.key == "adventure.fact_sale"
    assert sorted(fact.deps) == ["dim_country", "dim_product"]
    assert fact.spec.materialize == "replace"
    assert fact.spec.python == "3.11"
    sale, dim_product, dim_country = fact.inputs
    assert isinstance(sale, ScanInput)
    assert sale.param == "sale"
    assert sale.key == "adventure.sale"
    assert sale.columns == ["OrderDate", "OrderNumber", "ProductKey", "TerritoryKey",
                            "OrderQuantity"]
    assert sale.filter is None
    source = catalog("adventure.sale")
    assert source is not None
    assert sale.metadata_location == source.metadata_location
    assert sale.snapshot_id == source.snapshot_id
    assert dim_product == ObjectInput(
        param="dim_product", node="dim_product", object_id=p.nodes["dim_product"].object_id,
        columns=["ProductKey", "ProductCost", "ProductPrice"], filter=None,
    )
    assert dim_country == ObjectInput(
        param="dim_country", node="dim_country", object_id=p.nodes["dim_country"].object_id,
        columns=["SalesTerritoryKey", "Country"], filter=None,
    )

    assert p.nodes["dim_product"].deps == [] and p.nodes["dim_country"].deps == []
    assert [i.key for i in p.nodes["dim_product"].inputs if isinstance(i, ScanInput)] == [
        "adventure.product", "adventure.product_subcategory", "adventure.product_category",
    ]
    # model inputs are never looked up in the catalog
    assert set(catalog.looked_up) == {f"adventure.{t}" for t in ADVENTURE_TABLES}


def test_example_describe_is_json() -> None:
    p = build_plan(read_project(example_files()), "adventure", "main", {}, adventure_catalog())
    described = msgspec.to_builtins(p.describe())
    assert json.loads(json.dumps(described)) == described
    assert [d["name"] for d in described] == p.order
    fact = next(d for d in described if d["name"] == "fact_sale")
    assert fact["output"] == "adventure.fact_sale"
    assert fact["materialize"] == "replace"
    assert fact["python"] == "3.11"
    assert fact["pip"] == {}
    assert sorted(fact["depends_on"]) == ["dim_country", "dim_product"]  # type: ignore[arg-type]
    inputs = fact["inputs"]
    assert [(i["source"], i["snapshot_id"] is not None) for i in inputs] == [  # type: ignore[index]
        ("table", True), ("model", False), ("model", False)
    ]
    assert [{k: v for k, v in i.items() if k not in ("source", "snapshot_id")} for i in inputs] == [  # type: ignore[union-attr]
        {"param": "sale", "from": "adventure.sale",
         "columns": ["OrderDate", "OrderNumber", "ProductKey", "TerritoryKey", "OrderQuantity"],
         "filter": None},
        {"param": "dim_product", "from": "dim_product",
         "columns": ["ProductKey", "ProductCost", "ProductPrice"], "filter": None},
        {"param": "dim_country", "from": "dim_country",
         "columns": ["SalesTerritoryKey", "Country"], "filter": None},
    ]


def test_example_unknown_namespace_names_every_missing_table() -> None:
    problems = plan_problems(example_files(), adventure_catalog("adventure"),
                             namespace="elsewhere", ref="dev")
    assert len(problems) == 5
    for t in ADVENTURE_TABLES:
        only(problems, f"'elsewhere.{t}'", "ref 'dev'")


# --------------------------------------------------------------------------- reading


def test_files_without_models_are_fine() -> None:
    files = {
        "helpers.py": "def shout(s):\n    return s.upper()\n",
        "models.py": src("""
            import faas

            @faas.model()
            def m(x=faas.Model("raw.t")):
                return x
            """),
        "README.md": "# not python",
        "notes.txt": "SELECT 1",
    }
    project = read_project(files)
    assert [m.name for m in project.models] == ["m"]
    assert project.name == "" and project.config == {}


def test_generate_py_alone_has_no_models() -> None:
    files = {"generate.py": (EXAMPLE / "generate.py").read_text(encoding="utf-8")}
    problems = read_problems(files)
    assert len(problems) == 1
    assert "defines no models" in problems[0]
    assert "@faas.model" in problems[0]


def test_empty_project_is_invalid() -> None:
    assert "defines no models" in read_problems({})[0]
    assert "defines no models" in read_problems({"faas_project.toml": "[project]\n"})[0]


def test_subdirectory_module_name() -> None:
    files = {"pkg/sub/models.py": "import faas\n@faas.model()\ndef m():\n    pass\n"}
    (m,) = read_project(files).models
    assert m.module == "pkg.sub.models"
    assert m.where == "pkg/sub/models.py:3"


def test_alternative_decorator_spellings() -> None:
    files = {"m.py": src("""
        from faas import Model, Parameter, model, python

        @python("3.12", pip={"duckdb": "1.1.3"})
        @model(name="renamed", materialize="append", columns=["a", "b"], memory="2GiB")
        def f(x=Model("t", ["a"], "a > 0"), *, year=Parameter("year")):
            return x
        """)}
    (m,) = read_project(files).models
    assert m.name == "renamed" and m.function == "f"
    assert m.materialize == "append"
    assert m.columns == ["a", "b"]
    assert m.memory == "2GiB"
    assert m.python == "3.12" and m.pip == {"duckdb": "1.1.3"}
    (i,) = m.inputs
    assert (i.param, i.name, i.columns, i.filter) == ("x", "t", ["a"], "a > 0")
    (prm,) = m.params
    assert (prm.param, prm.name) == ("year", "year")


def test_undecorated_functions_and_other_decorators_are_ignored() -> None:
    files = {"m.py": src("""
        import functools
        import faas

        def helper(x, y):
            return x

        @functools.lru_cache
        def cached(n):
            return n

        @faas.model()
        def m(t=faas.Model("raw.t")):
            return t
        """)}
    assert [m.name for m in read_project(files).models] == ["m"]


def test_reader_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    files = {
        "a.py": src(f"""
            import nonexistent_module_for_faas_tests
            import faas
            open({str(marker)!r}, "w").write("ran")
            raise SystemExit(3)

            @faas.model(materialize="replace")
            def a(t=faas.Model("raw.t")):
                raise RuntimeError("never called")
            """),
        "b.py": src("""
            import sys
            sys.exit(1)
            import os
            os._exit(1)

            import faas

            @faas.model()
            def b(a=faas.Model("a")):
                return a
            """),
    }
    project = read_project(files)
    assert sorted(m.name for m in project.models) == ["a", "b"]
    assert not marker.exists()
    p = plan(files, {"raw.t": ["x"]})
    assert p.order == ["a", "b"]


def test_async_model_is_a_problem() -> None:
    text = src("""
        import faas

        @faas.model()
        async def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"m.py": text})
    assert only(problems, "async").startswith(f"m.py:{line_of(text, 'async def')}:")


# --------------------------------------------------------------------------- reader problems


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("@faas.model(materialize=MODE)", "MODE"),
        ("@faas.model(name=NAME)", "NAME"),
        ("@faas.model(columns=cols())", "cols()"),
        ("@faas.model(memory=f'{GB}G')", "GB"),
        ("@faas.model(MODEL_NAME)", "MODEL_NAME"),
    ],
)
def test_non_literal_decorator_argument(line: str, needle: str) -> None:
    text = src(f"""
        import faas

        MODE = "replace"

        {line}
        def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"models.py": text})
    p = only(problems, "must be a literal")
    assert p.startswith(f"models.py:{line_of(text, line)}:")
    assert needle in p


@pytest.mark.parametrize(
    ("default", "needle"),
    [
        ('faas.Model(NAME)', "NAME"),
        ('faas.Model("t", columns=cols())', "cols()"),
        ('faas.Model("t", columns=["a", COL])', "COL"),
        ('faas.Model("t", filter="a > " + str(LIMIT))', "LIMIT"),
        ('faas.Parameter(PARAM)', "PARAM"),
    ],
)
def test_non_literal_input_argument(default: str, needle: str) -> None:
    text = src(f"""
        import faas

        @faas.model()
        def m(
            ok=faas.Model("raw.ok"),
            x={default},
        ):
            return x
        """)
    problems = read_problems({"models.py": text})
    p = only(problems, "must be a literal", needle)
    assert p.startswith(f"models.py:{line_of(text, 'x=')}:")


def test_non_literal_python_version() -> None:
    text = src("""
        import faas

        @faas.model()
        @faas.python(VERSION, pip=PINS)
        def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"m.py": text})
    line = line_of(text, "@faas.python")
    assert len([p for p in problems if p.startswith(f"m.py:{line}:")]) == 2
    only(problems, "VERSION")
    only(problems, "PINS")


def test_syntax_error_names_file_and_line() -> None:
    files = {
        "good.py": "import faas\n@faas.model()\ndef g():\n    pass\n",
        "bad.py": "import faas\n\n\ndef broken(:\n    pass\n",
    }
    problems = read_problems(files)
    assert len(problems) == 1
    assert problems[0].startswith("bad.py:4: syntax error")


def test_indentation_error_is_a_syntax_error() -> None:
    problems = read_problems({"m.py": "import faas\nif True:\npass\n"})
    assert len(problems) == 1
    assert problems[0].startswith("m.py:3: syntax error")


def test_syntax_error_without_a_line_number() -> None:
    # ast.parse reports a NUL byte with lineno=None; the problem must still read file:line.
    problems = read_problems({"m.py": "import faas\x00\n"})
    assert len(problems) == 1
    assert problems[0].startswith("m.py:")
    assert "syntax error" in problems[0]
    assert "None" not in problems[0], problems[0]


def test_bad_toml_is_a_problem() -> None:
    files = {
        "faas_project.toml": "[project\nname = 'x'\n",
        "m.py": "import faas\n@faas.model()\ndef m():\n    pass\n",
    }
    problems = read_problems(files)
    assert only(problems, "faas_project.toml").startswith("faas_project.toml:")


def test_duplicate_model_names_name_both_places() -> None:
    files = {
        "a.py": src("""
            import faas

            @faas.model()
            def sales():
                pass
            """),
        "b.py": src("""
            import faas


            @faas.model(name="sales")
            def other_sales():
                pass
            """),
    }
    problems = read_problems(files)
    p = only(problems, "'sales'", "already defined")
    first = f"a.py:{line_of(files['a.py'], 'def sales')}"
    second = f"b.py:{line_of(files['b.py'], 'def other_sales')}"
    assert p.startswith(second + ":") and first in p


def test_duplicate_model_names_in_one_file() -> None:
    text = src("""
        import faas

        @faas.model()
        def m():
            pass

        @faas.model()
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "already defined")
    assert p.startswith(f"m.py:{line_of(text, 'def m', 2)}:")
    assert f"m.py:{line_of(text, 'def m', 1)}" in p


@pytest.mark.parametrize("value", ['"overwrite"', '"REPLACE"', "True", "1"])
def test_bad_materialize_value(value: str) -> None:
    text = src(f"""
        import faas

        @faas.model(materialize={value})
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "materialize")
    assert p.startswith(f"m.py:{line_of(text, '@faas.model')}:")
    assert "'replace'" in p and "'append'" in p
    assert value.strip('"') in p


def test_unknown_keyword_to_model_decorator() -> None:
    text = src("""
        import faas

        @faas.model(
            materialise="replace",
        )
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "materialise")
    assert p.startswith(f"m.py:{line_of(text, 'materialise=')}:")
    assert "faas.model" in p and "materialize" in p  # lists what it does take


def test_unknown_keyword_to_model_input() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model("raw.t", cols=["a"], where="a > 1")):
            pass
        """)
    problems = read_problems({"m.py": text})
    assert len(problems) == 2
    line = line_of(text, "cols=")
    for kw in ("'cols'", "'where'"):
        p = only(problems, kw)
        assert p.startswith(f"m.py:{line}:")
        assert "faas.Model" in p and "columns" in p and "filter" in p


def test_too_many_positional_arguments() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model("raw.t", ["a"], "a > 1", "extra")):
            pass
        """)
    p = only(read_problems({"m.py": text}), "too many arguments")
    assert p.startswith(f"m.py:{line_of(text, 'faas.Model')}:")


def test_model_input_without_a_name() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model(""), u=faas.Model(columns=["a"])):
            pass
        """)
    problems = read_problems({"m.py": text})
    assert len([p for p in problems if "needs a table or model name" in p]) == 2


@pytest.mark.parametrize(
    "signature",
    [
        "t",                       # no default at all
        "t=None",                  # a default that is not faas.Model/Parameter
        't="raw.t"',               # a bare string instead of faas.Model("raw.t")
        "t=faas.Table('raw.t')",   # a call, but not one the planner knows
    ],
)
def test_parameter_without_model_or_parameter_default(signature: str) -> None:
    text = src(f"""
        import faas

        @faas.model()
        def m(
            ok=faas.Model("raw.ok"),
            *,
            {signature},
        ):
            pass
        """)
    p = only(read_problems({"m.py": text}), "'t'")
    assert p.startswith(f"m.py:{line_of(text, f'    {signature},')}:")
    assert "model 'm'" in p
    assert "faas.Model(...)" in p and "faas.Parameter(...)" in p


def test_positional_parameter_without_default() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(first, second=faas.Model("raw.t")):
            pass
        """)
    p = only(read_problems({"m.py": text}), "'first'")
    assert p.startswith(f"m.py:{line_of(text, 'def m')}:")


def test_bare_decorator_is_consistent_with_the_sdk() -> None:
    # `@faas.model` without parentheses: the reader and the SDK must agree on it. Either the
    # reader reports it, or the SDK really makes a model of the function (today faas.model(fn)
    # returns the inner `wrap`, so the module attribute the worker calls is not the model).
    files = {"m.py": "import faas\n\n@faas.model\ndef m(t=faas.Model('raw.t')):\n    return t\n"}
    try:
        read_project(files)
    except PlanInvalid as exc:
        assert any(p.startswith("m.py:3:") for p in exc.problems), exc.problems
        return

    def m(t: object = None) -> object:
        return t

    wrapped = faas.model(m)  # type: ignore[arg-type]
    assert wrapped is m, "the reader accepts a bare @faas.model but the SDK replaces the function"
    assert wrapped("x") == "x"


# --------------------------------------------------------------------------- planning


def test_unknown_table_names_model_input_key_ref_and_place() -> None:
    text = src("""
        import faas

        @faas.model()
        def report(
            orders=faas.Model("orders", columns=["id"]),
        ):
            return orders
        """)
    problems = plan_problems({"pipeline/report.py": text}, {"other.orders": ["id"]},
                             namespace="shop", ref="feature-x")
    assert len(problems) == 1
    p = problems[0]
    assert p.startswith(f"pipeline/report.py:{line_of(text, 'faas.Model')}:")
    assert "'report'" in p          # the model
    assert "'orders'" in p          # the input as written
    assert "'shop.orders'" in p     # the key looked for
    assert "'feature-x'" in p       # the ref


def test_unknown_column_in_source_table_lists_available() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model("t", columns=["a", "nope", "b", "also_nope"])):
            return t
        """)
    problems = plan_problems({"m.py": text}, {"ns.t": ["a", "b", "c"]})
    assert len(problems) == 2
    for col in ("'nope'", "'also_nope'"):
        p = only(problems, col)
        assert p.startswith(f"m.py:{line_of(text, 'faas.Model')}:")
        assert "'ns.t'" in p
        assert "a, b, c" in p


def test_column_names_are_case_sensitive() -> None:
    text = 'import faas\n@faas.model()\ndef m(t=faas.Model("t", columns=["A"])):\n    pass\n'
    only(plan_problems({"m.py": text}, {"ns.t": ["a"]}), "'A'")


def test_unknown_column_of_upstream_model_declared_columns() -> None:
    text = src("""
        import faas

        @faas.model(columns=["id", "amount"])
        def up():
            pass

        @faas.model()
        def down(u=faas.Model("up", columns=["id", "price"])):
            return u
        """)
    problems = plan_problems({"m.py": text})
    assert len(problems) == 1
    p = problems[0]
    assert p.startswith(f"m.py:{line_of(text, 'faas.Model')}:")
    assert "'price'" in p and "'up'" in p and "id, amount" in p


def test_upstream_model_without_declared_columns_is_not_checked() -> None:
    text = src("""
        import faas

        @faas.model()
        def up():
            pass

        @faas.model()
        def down(u=faas.Model("up", columns=["anything"])):
            return u
        """)
    p = plan({"m.py": text})
    assert p.order == ["up", "down"]


def test_cycle_prints_the_path() -> None:
    text = src("""
        import faas

        @faas.model()
        def a(x=faas.Model("c")):
            pass

        @faas.model()
        def b(x=faas.Model("a")):
            pass

        @faas.model()
        def c(x=faas.Model("b")):
            pass

        @faas.model()
        def free(x=faas.Model("raw.t")):
            pass
        """)
    problems = plan_problems({"m.py": text}, {"raw.t": ["x"]})
    p = only(problems, "cycle")
    assert p.startswith("m.py:")
    # a reads c, c reads b, b reads a: the dependency path a -> c -> b -> a (any rotation)
    path = p.rsplit(": ", 1)[1].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    ring = path[:-1]
    start = ring.index("a")
    assert ring[start:] + ring[:start] == ["a", "c", "b"]


def test_model_reading_itself_is_a_cycle() -> None:
    text = 'import faas\n@faas.model()\ndef a(x=faas.Model("a")):\n    pass\n'
    p = only(plan_problems({"m.py": text}), "cycle")
    assert "a -> a" in p


def test_same_upstream_read_twice() -> None:
    # Two inputs from the same upstream model (e.g. split by filter) are one dependency,
    # not a cycle.
    text = src("""
        import faas

        @faas.model()
        def orders(t=faas.Model("raw.orders")):
            return t

        @faas.model(materialize="replace")
        def split(
            big=faas.Model("orders", filter="amount > 100"),
            small=faas.Model("orders", filter="amount <= 100"),
        ):
            return big
        """)
    p = plan({"m.py": text}, {"raw.orders": ["amount"]})
    assert p.order == ["orders", "split"]
    assert [i.filter for i in p.nodes["split"].inputs] == ["amount > 100", "amount <= 100"]


def test_same_source_table_read_twice_is_fine() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(a=faas.Model("t", columns=["x"]), b=faas.Model("ns.t", filter="x > 1")):
            pass
        """)
    catalog = Catalog({"ns.t": ["x"]})
    p = plan({"m.py": text}, catalog)
    assert [i.key for i in p.nodes["m"].inputs] == ["ns.t", "ns.t"]  # type: ignore[union-attr]


def test_diamond_order() -> None:
    text = src("""
        import faas

        @faas.model()
        def top(t=faas.Model("raw.t")):
            pass

        @faas.model()
        def left(x=faas.Model("top")):
            pass

        @faas.model()
        def right(x=faas.Model("top")):
            pass

        @faas.model()
        def bottom(l=faas.Model("left"), r=faas.Model("right")):
            pass
        """)
    order = plan({"m.py": text}, {"raw.t": ["x"]}).order
    assert order[0] == "top" and order[-1] == "bottom"
    assert set(order[1:3]) == {"left", "right"}


def test_model_materializing_into_a_table_it_reads() -> None:
    text = src("""
        import faas

        @faas.model(materialize="append")
        def events(old=faas.Model("analytics.events")):
            return old
        """)
    problems = plan_problems({"m.py": text}, {"analytics.events": ["x"]}, namespace="analytics")
    p = only(problems, "also reads")
    assert p.startswith(f"m.py:{line_of(text, 'def events')}:")
    assert "'events'" in p and "'analytics.events'" in p


def test_renamed_model_materializing_into_a_table_it_reads() -> None:
    text = src("""
        import faas

        @faas.model(name="events", materialize="replace")
        def clean(old=faas.Model("analytics.events")):
            return old
        """)
    problems = plan_problems({"m.py": text}, {"analytics.events": ["x"]}, namespace="analytics")
    only(problems, "also reads", "'analytics.events'")


def test_reading_same_named_table_elsewhere_or_without_materializing_is_fine() -> None:
    text = src("""
        import faas

        @faas.model(materialize="replace")
        def events(old=faas.Model("raw.events")):
            return old

        @faas.model()
        def peek(cur=faas.Model("analytics.peek")):
            return cur
        """)
    p = plan({"m.py": text}, {"raw.events": ["x"], "analytics.peek": ["x"]},
             namespace="analytics")
    assert p.nodes["events"].key == "analytics.events"


def test_qualified_and_bare_input_names() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(
            a=faas.Model("raw.sale"),
            b=faas.Model("sale"),
            c=faas.Model("deep.nested.sale"),
        ):
            pass
        """)
    catalog = Catalog({"raw.sale": ["x"], "analytics.sale": ["x"], "deep.nested.sale": ["x"]})
    p = plan({"m.py": text}, catalog, namespace="analytics")
    keys = [i.key for i in p.nodes["m"].inputs]  # type: ignore[union-attr]
    assert keys == ["raw.sale", "analytics.sale", "deep.nested.sale"]
    assert catalog.looked_up == ["raw.sale", "analytics.sale", "deep.nested.sale"]
    assert p.nodes["m"].key == "analytics.m"


def test_model_name_shadows_table_of_the_same_bare_name() -> None:
    text = src("""
        import faas

        @faas.model()
        def sale(t=faas.Model("raw.sale")):
            pass

        @faas.model()
        def report(s=faas.Model("sale"), raw=faas.Model("ns.sale")):
            pass
        """)
    catalog = Catalog({"raw.sale": ["x"], "ns.sale": ["x"]})
    p = plan({"m.py": text}, catalog)
    s, raw = p.nodes["report"].inputs
    assert isinstance(s, ObjectInput) and s.node == "sale"
    assert isinstance(raw, ScanInput) and raw.key == "ns.sale"
    assert p.nodes["report"].deps == ["sale"]


# --------------------------------------------------------------------------- parameters

PARAM_MODEL = src("""
    import faas

    @faas.model()
    def m(t=faas.Model("raw.t"), year=faas.Parameter("year"), region=faas.Parameter("region")):
        return t
    """)


def test_parameter_values_from_params() -> None:
    p = plan({"m.py": PARAM_MODEL}, {"raw.t": ["x"]}, params={"year": "2024", "region": "EU"})
    assert p.nodes["m"].params == {"year": "2024", "region": "EU"}


def test_parameter_defaults_from_project_toml() -> None:
    files = {
        "m.py": PARAM_MODEL,
        "faas_project.toml": '[parameters.year]\ndefault = 2023\n[parameters.region]\ndefault = "US"\n',
    }
    p = plan(files, {"raw.t": ["x"]})
    assert p.nodes["m"].params == {"year": "2023", "region": "US"}
    # a passed value wins over the default
    p = plan(files, {"raw.t": ["x"]}, params={"year": "2025"})
    assert p.nodes["m"].params == {"year": "2025", "region": "US"}


def test_parameter_name_differs_from_argument() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(y=faas.Parameter("year"), since=faas.Parameter()):
            pass
        """)
    p = plan({"m.py": text}, params={"year": "2024", "since": "2020"})
    assert p.nodes["m"].params == {"y": "2024", "since": "2020"}


def test_missing_required_parameter() -> None:
    problems = plan_problems({"m.py": PARAM_MODEL}, {"raw.t": ["x"]}, params={"year": "2024"})
    assert len(problems) == 1
    p = problems[0]
    assert p.startswith(f"m.py:{line_of(PARAM_MODEL, 'faas.Parameter')}:")
    assert "'region'" in p
    assert "--param region=VALUE" in p


def test_declared_parameter_without_default_is_required() -> None:
    files = {"m.py": PARAM_MODEL,
             "faas_project.toml": '[parameters.year]\ndescription = "the year"\n'}
    problems = plan_problems(files, {"raw.t": ["x"]}, params={"region": "EU"})
    only(problems, "--param year=VALUE")


def test_unknown_param_passed() -> None:
    problems = plan_problems({"m.py": PARAM_MODEL}, {"raw.t": ["x"]},
                             params={"year": "1", "region": "2", "yaer": "3"})
    assert len(problems) == 1
    assert problems[0].startswith("--param yaer:")
    assert "'yaer'" in problems[0]


def test_param_declared_in_toml_but_unused_may_be_passed() -> None:
    files = {"m.py": PARAM_MODEL, "faas_project.toml": "[parameters.debug]\ndefault = false\n"}
    plan(files, {"raw.t": ["x"]}, params={"year": "1", "region": "2", "debug": "true"})


# --------------------------------------------------------------------------- all at once


def test_every_reader_mistake_reported_together() -> None:
    files = {
        "broken.py": "def f(:\n",
        "a.py": src("""
            import faas

            MODE = "replace"

            @faas.model(materialize=MODE)
            def a(t=faas.Model("raw.t", cols=["x"])):
                pass

            @faas.model(materialize="upsert")
            def b(t, u=faas.Model(NAME)):
                pass
            """),
        "b.py": src("""
            import faas

            @faas.model(name="a")
            def dup():
                pass
            """),
    }
    problems = read_problems(files)
    only(problems, "broken.py:1: syntax error")
    only(problems, "a.py:5:", "MODE")
    only(problems, "a.py:6:", "'cols'")
    only(problems, "a.py:9:", "'upsert'")
    only(problems, "a.py:10:", "'t'", "faas.Model(...)")
    assert any(p.startswith("a.py:10:") and "NAME" in p for p in problems)
    only(problems, "already defined", "a.py:6", "b.py:4")
    # one line per mistake; faas.Model(NAME) may add a second line ("needs a name")
    assert 7 <= len(problems) <= 8, problems


def test_every_planning_mistake_reported_together() -> None:
    text = src("""
        import faas

        @faas.model(columns=["id"])
        def up(t=faas.Model("missing_table")):
            pass

        @faas.model(materialize="replace")
        def down(
            u=faas.Model("up", columns=["id", "ghost"]),
            s=faas.Model("sale", columns=["amount", "phantom"]),
            year=faas.Parameter("year"),
        ):
            pass

        @faas.model()
        def loop1(x=faas.Model("loop2")):
            pass

        @faas.model()
        def loop2(x=faas.Model("loop1")):
            pass

        @faas.model(materialize="replace")
        def own(x=faas.Model("ns.own")):
            pass
        """)
    problems = plan_problems({"m.py": text}, {"ns.sale": ["amount"], "ns.own": ["x"]},
                             params={"stray": "1"})
    only(problems, "'missing_table'", "'ns.missing_table'")
    only(problems, "'ghost'")
    only(problems, "'phantom'", "'ns.sale'")
    only(problems, "--param year=VALUE")
    only(problems, "--param stray")
    only(problems, "cycle", "loop1", "loop2")
    only(problems, "also reads", "'ns.own'")
    assert len(problems) == 7, problems
    err = PlanInvalid(problems)
    assert str(err).startswith("7 problems in the project:")


# --------------------------------------------------------------------------- describe


def test_describe_fields_for_every_kind_of_input() -> None:
    text = src("""
        import faas

        @faas.model(materialize="append", memory="1GiB")
        @faas.python("3.12", pip={"polars": "1.0"})
        def up(t=faas.Model("raw.t", columns=["a"], filter="a > 1"), y=faas.Parameter("y")):
            pass

        @faas.model()
        def down(u=faas.Model("up")):
            pass
        """)
    p = plan({"m.py": text}, {"raw.t": ["a"]}, namespace="out", ref="dev", params={"y": "7"})
    described = msgspec.to_builtins(p.describe())
    assert json.loads(json.dumps(described)) == described
    snap = p.nodes["up"].inputs[0].snapshot_id  # type: ignore[union-attr]
    assert described == [
        {
            "name": "up", "kind": "python", "level": 0, "where": "m.py:5",
            "output": "out.up", "materialize": "append", "python": "3.12",
            "pip": {"polars": "1.0"}, "memory": "1GiB", "cpus": None, "params": {"y": "7"}, "depends_on": [],
            "cache_key": p.nodes["up"].cache_key,
            "inputs": [{"param": "t", "from": "raw.t", "source": "table", "snapshot_id": snap,
                        "columns": ["a"], "filter": "a > 1"}],
        },
        {
            "name": "down", "kind": "python", "level": 1, "where": "m.py:9",
            "output": "out.down", "materialize": None, "python": None,
            "pip": {}, "memory": None, "cpus": None, "params": {}, "depends_on": ["up"],
            "cache_key": p.nodes["down"].cache_key,
            "inputs": [{"param": "u", "from": "up", "source": "model", "snapshot_id": None,
                        "columns": None, "filter": None}],
        },
    ]


# --------------------------------------------------------------------------- malformed literals


@pytest.mark.parametrize(
    ("files", "needle", "params"),
    [
        # literal, but of the wrong type: a problem at the decorator, not a TypeError
        ({"m.py": "import faas\n@faas.model(name=3)\ndef m():\n    pass\n"}, "m.py:2:", {}),
        # a string where a list of columns belongs: one problem, not one per character
        ({"m.py": "import faas\n@faas.model()\ndef m(t=faas.Model('t', columns='OrderDate')):\n"
                  "    pass\n"}, "m.py:3:", {}),
        # faas_project.toml tables of the wrong type: a problem naming the file, not a crash
        ({"m.py": "import faas\n@faas.model()\ndef m(y=faas.Parameter('y')):\n    pass\n",
          "faas_project.toml": "parameters = 3\n"}, "faas_project.toml", {"y": "1"}),
        ({"m.py": "import faas\n@faas.model()\ndef m():\n    pass\n",
          "faas_project.toml": "project = 'adventureworks'\n"}, "faas_project.toml", {}),
    ],
    ids=["model-name-int", "columns-string", "parameters-not-a-table", "project-not-a-table"],
)
def test_wrongly_typed_literal_is_one_problem(
    files: dict[str, str], needle: str, params: dict[str, str]
) -> None:
    problems = plan_problems(files, {"ns.t": ["OrderDate"]}, params=params)
    assert len(problems) == 1, problems
    assert needle in problems[0]


def test_two_models_cannot_write_the_same_table() -> None:
    # name="ns.x" and a model x in namespace ns both become table ns.x.
    text = src("""
        import faas

        @faas.model(name="ns.x", materialize="replace")
        def a():
            pass

        @faas.model(materialize="replace")
        def x():
            pass
        """)
    problems = plan_problems({"m.py": text})
    only(problems, "'ns.x'")


# --------------------------------------------------------------------------- cores


def test_declared_cores_reach_the_plan_and_bad_ones_are_problems() -> None:
    good = src('''
        import faas

        @faas.model(cpus=4)
        def heavy(t=faas.Model("t")):
            return t
        ''')
    p = plan({"models.py": good}, {"ns.t": ["a"]})
    assert p.nodes["heavy"].spec.cpus == 4
    assert [n.cpus for n in p.describe() if n.name == "heavy"] == [4]
    for bad in ("0", "2.5", "True", "'4'"):
        text = good.replace("cpus=4", f"cpus={bad}")
        problem = only(read_problems({"models.py": text}), "cpus")
        assert problem == (
            f"models.py:{line_of(text, 'cpus=')}: cpus must be a whole number of cores "
            f"(1 or more), not {bad}"
        )


def test_a_sql_model_declares_cores_in_its_header() -> None:
    (spec,) = read_project({"m.sql": "-- faas: cpus=3\nSELECT * FROM t\n"}).models
    assert spec.name == "m" and spec.cpus == 3
    (problem,) = read_problems({"m.sql": "-- faas: cpus=lots\nSELECT * FROM t\n"})
    assert problem == "m.sql:1: cpus must be a whole number of cores (1 or more), not 'lots'"
