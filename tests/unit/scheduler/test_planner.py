"""The planner, driven as a pure function: the example project, planning, parameters, describe.

``build_plan(project, namespace, ref, params, lookup)`` resolves inputs against a fake
catalog given as ``lookup`` (planner_helpers.Catalog); projects are read with
``read_project(files)``. No daemons, no files outside the example project. The reader on
its own is in test_planner_reader.py, mistakes reported together in test_planner_problems.py.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from faas.protocol.messages import ObjectInput, ScanInput
from faas.scheduler.dag import build_plan
from faas.scheduler.reader import Project, read_project
from tests.unit.scheduler.planner_helpers import (
    ADVENTURE_TABLES,
    Catalog,
    adventure_catalog,
    example_files,
    line_of,
    only,
    plan,
    plan_problems,
    src,
)

pytestmark = pytest.mark.timeout(30)


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
            "pip": {"polars": "1.0"}, "memory": "1GiB", "cpus": None, "params": {"y": "7"}, "depends_on": [], "internet_access": False,
            "cache_key": p.nodes["up"].cache_key,
            "inputs": [{"param": "t", "from": "raw.t", "source": "table", "snapshot_id": snap,
                        "columns": ["a"], "filter": "a > 1"}],
        },
        {
            "name": "down", "kind": "python", "level": 1, "where": "m.py:9",
            "output": "out.down", "materialize": None, "python": None,
            "pip": {}, "memory": None, "cpus": None, "params": {}, "depends_on": ["up"], "internet_access": False,
            "cache_key": p.nodes["down"].cache_key,
            "inputs": [{"param": "u", "from": "up", "source": "model", "snapshot_id": None,
                        "columns": None, "filter": None}],
        },
    ]
