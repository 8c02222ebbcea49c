"""Typed contracts at plan time: schema classes read statically, declared outputs and
projections checked against upstreams and tables before anything runs; Bauplan's typed
SDK (Annotated inputs and returns) read as faas's."""

from __future__ import annotations

import pyarrow as pa
import pytest

from faas.protocol.messages import ContractColumn
from faas.scheduler.reader import read_project
from tests.unit.scheduler.planner_helpers import (
    line_of,
    only,
    plan,
    plan_problems,
    read_problems,
    src,
)

pytestmark = pytest.mark.timeout(30)

SCHEMAS = src("""
    from typing import Annotated, Optional

    import faas


    class Order(faas.TableSchema):
        order_id: faas.Int64
        country: faas.String | None
        amount: Annotated[faas.Float64 | None, faas.TableField(doc="in euros")]
        placed: Optional[faas.TimestampMicro]


    class OrderIds(faas.TableSchema):
        order_id: faas.Int64 | None
""")

TABLES = {"ns.orders": {"order_id": pa.int64(), "country": pa.large_string(),
                        "amount": pa.float64(), "placed": pa.timestamp("us")}}


def test_schema_classes_declare_outputs_and_projections() -> None:
    models = src("""
        from typing import Annotated

        import pyarrow as pa

        import faas
        from schemas import Order, OrderIds


        @faas.model()
        def clean(orders=faas.Model("orders", projection_schema=OrderIds)) -> Annotated[pa.Table, Order]:
            return orders


        @faas.model()
        def typed(data: Annotated[pa.Table, faas.Model("clean", projection_schema=OrderIds)],
                  limit: Annotated[int, faas.Parameter("limit")]) -> Annotated[pa.Table, OrderIds]:
            return data
    """)
    project = read_project({"schemas.py": SCHEMAS, "models.py": models})
    clean = next(m for m in project.models if m.name == "clean")
    assert clean.contract is not None and clean.contract.name == "Order"
    assert clean.contract.columns == [
        ContractColumn(name="order_id", type="int64", nullable=False),
        ContractColumn(name="country", type="string", nullable=True),
        ContractColumn(name="amount", type="double", nullable=True),
        ContractColumn(name="placed", type="timestamp[us]", nullable=True),
    ]
    assert clean.columns == ["order_id", "country", "amount", "placed"]
    assert clean.inputs[0].columns == ["order_id"]
    typed = next(m for m in project.models if m.name == "typed")
    assert [(i.param, i.name, i.columns) for i in typed.inputs] == [("data", "clean", ["order_id"])]
    assert [(p.param, p.name) for p in typed.params] == [("limit", "limit")]
    # The table has every column the projection wants, of its types: it plans.
    built = plan({"schemas.py": SCHEMAS, "models.py": models}, TABLES, params={"limit": "3"})
    assert built.order == ["clean", "typed"]


def test_projections_that_their_source_cannot_give_are_said_before_anything_runs() -> None:
    models = src("""
        from typing import Annotated

        import pyarrow as pa

        import faas
        from schemas import Order


        class Wrong(faas.TableSchema):
            order_id: faas.String
            country: faas.String
            missing: faas.Int64 | None


        @faas.model()
        def clean(orders=faas.Model("orders", projection_schema=Wrong)) -> Annotated[pa.Table, Order]:
            return orders


        @faas.model()
        def reader(clean=faas.Model("clean", projection_schema=Wrong, filter="nope > 1")):
            return clean


        @faas.model()
        def filtered(clean=faas.Model("clean", filter="amount > 'x'")):
            return clean
    """)
    problems = plan_problems({"schemas.py": SCHEMAS, "models.py": models}, TABLES)
    at = f"models.py:{line_of(models, 'def clean')}"
    # Against the table: another type; nulls where the projection wants none; absent.
    only(problems, at, "Wrong.order_id is string, but table 'ns.orders' has it as int64")
    only(problems, at, "Wrong.country is required, but table 'ns.orders' may hold nulls")
    only(problems, at, "table 'ns.orders' has no column 'missing'")
    # Against the upstream's declaration.
    at = f"models.py:{line_of(models, 'def reader')}"
    only(problems, "Wrong.order_id is string, but model 'clean' has it as int64")
    only(problems, at, "Wrong.country is required, but model 'clean' may hold nulls")
    only(problems, at, "model 'clean' has no column 'missing'")
    only(problems, at, "model 'clean' declares no column 'nope'")
    only(problems, "bad filter \"amount > 'x'\"")


def test_schema_mistakes_are_one_line_each() -> None:
    models = src("""
        from typing import Annotated

        import pyarrow as pa

        import faas


        class Bad(faas.TableSchema):
            a: faas.Integer
            b: Annotated[faas.Int64, faas.TableField()] | None
            c: faas.Int64


        class Empty(faas.TableSchema):
            pass


        @faas.model(columns=["c"])
        def twice(t=faas.Model("t")) -> Annotated[pa.Table, Bad]:
            return t


        @faas.model()
        def unknown(t=faas.Model("t", projection_schema=Nope)) -> Annotated[pa.Table, Missing]:
            return t


        @faas.model()
        def both(t=faas.Model("t", columns=["c"], projection_schema=Bad)):
            return t
    """)
    problems = read_problems({"models.py": models})
    only(problems, f"models.py:{line_of(models, 'faas.Integer')}", "'faas.Integer' is not a field type")
    only(problems, f"models.py:{line_of(models, 'TableField()')}", "only the data type may be marked optional")
    only(problems, f"models.py:{line_of(models, 'class Empty')}", "schema 'Empty' declares no columns")
    only(problems, "model 'twice' declares its columns twice")
    only(problems, "model 'unknown' returns unknown schema 'Missing'")
    only(problems, "projection_schema 'Nope' is not a schema of the project")
    only(problems, "input 't' names its columns twice")


def test_partitions_and_plain_columns_are_declarations_too() -> None:
    models = src("""
        import faas


        @faas.model(columns=["order_id", "country"], materialize="replace",
                    partitioned_by="country")
        def plain(orders=faas.Model("orders")):
            return orders


        @faas.model(columns=["*"])
        def anything(orders=faas.Model("orders")):
            return orders
    """)
    project = read_project({"models.py": models})
    plain = next(m for m in project.models if m.name == "plain")
    assert plain.contract is not None and plain.contract.name == "columns"
    assert [(c.name, c.type, c.nullable) for c in plain.contract.columns] == [
        ("order_id", "", True), ("country", "", True)]
    assert plain.partitioned_by == "country"
    assert next(m for m in project.models if m.name == "anything").contract is None


def test_filters_take_run_parameters_as_values() -> None:
    toml = src("""
        [parameters.since]
        type = "str"
        default = "2024-05-01"

        [parameters.limit]
        type = "int"
        default = 3

        [parameters.who]
        type = "str"
        default = "ann"

        [parameters.token]
        type = "secret"
    """)
    models = src("""
        import faas


        @faas.model(materialize="overwrite_partitions", partitioned_by="day(d)",
                    overwrite_filter="d >= $since")
        def recent(orders=faas.Model("orders", filter="d >= $since and n < $limit and s <> '$who' and s = $who")):
            return orders


        @faas.model()
        def leaky(orders=faas.Model("orders", filter="s = $token")):
            return orders
    """)
    tables = {"ns.orders": {"d": pa.date32(), "n": pa.int64(), "s": pa.string()}}
    files = {"faas_project.toml": toml, "models.py": models}
    problems = plan_problems(files, tables, secrets=lambda name: ("hush", "digest"))
    only(problems, "names secret parameter 'token'")
    assert not any("hush" in p for p in problems)
    files["models.py"] = models.split("@faas.model()\n")[0]
    built = plan(files, tables, params={"since": "2024-06-01", "who": "x' OR '1'='1"})
    node = built.nodes["recent"]
    # Quoted as a value; a '$who' inside quotes stays text.
    assert node.inputs[0].filter == ("d >= '2024-06-01' and n < 3 and s <> '$who' and "
                                     "s = 'x'' OR ''1''=''1'")
    assert node.overwrite_filter == "d >= '2024-06-01'"
    other = plan(files, tables, params={"since": "2024-07-01"}).nodes["recent"]
    assert other.cache_key != node.cache_key  # the value is part of what it read
    files["faas_project.toml"] = ""
    problems = plan_problems(files, tables)
    assert len([p for p in problems if "names parameter 'since', which has no value: pass "
                "--param since=VALUE" in p]) == 2  # the input's filter, the overwrite_filter
