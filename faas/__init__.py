"""faas: the SDK pipeline authors import.

Pure Python with no third-party imports, so it loads inside any function
environment. The decorators only attach metadata: the scheduler reads the same
information statically from the source (it never imports user code), and the
function process calls the function by its module and name.

    import faas

    @faas.model(materialize="replace")
    @faas.python("3.11", pip={"duckdb": "1.1.3"})
    def clean_sales(sales=faas.Model("sale", columns=["OrderNumber"], filter="OrderQuantity > 0")):
        return sales
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "Model", "Parameter", "model", "python", "expectation", "Client", "AsyncClient",
    "TableSchema", "TableField", "Any", "Bool", "Int32", "Int64", "Float32", "Float64", "String",
    "Binary", "Date32", "Date64", "TimestampMicro", "TimestampNano", "TimestampMicroUTC",
    "TimestampNanoUTC", "Decimal128",
]

F = TypeVar("F", bound=Callable[..., typing.Any])

MATERIALIZE_MODES = (None, "replace", "append", "overwrite_partitions")


class Model:
    """An input: a catalog table (``namespace.table`` or bare) or another model, by name.

    The function gets it as a ``pyarrow.Table``; with ``stream=True``, as a
    ``pyarrow.RecordBatchReader`` that yields its rows batch by batch, in order, decoded on
    all cores while the function consumes them, so the input is never held whole (DuckDB,
    for one, scans a registered reader as it streams; a streamed scan of a table without a
    filter, registered with ``con.register``, DuckDB reads from the table's Parquet files
    itself, on every core). A reader can be read once."""

    __slots__ = ("name", "columns", "filter", "stream", "projection_schema")

    def __init__(self, name: str, columns: list[str] | None = None, filter: str | None = None,
                 *, stream: bool = False, projection_schema: type[TableSchema] | None = None):
        if not isinstance(name, str) or not name:
            raise TypeError("faas.Model needs a table or model name")
        self.name = name
        self.columns = list(columns) if columns is not None else None
        self.filter = filter
        self.stream = bool(stream)
        self.projection_schema = projection_schema

    def __repr__(self) -> str:
        return (f"faas.Model({self.name!r}, columns={self.columns!r}, filter={self.filter!r}"
                + (", stream=True)" if self.stream else ")"))


class Parameter:
    """A run parameter, passed with ``faas submit --param name=value`` (a ``secret``
    parameter's value comes from ``faas secret set``)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"faas.Parameter({self.name!r})"


def model(
    name: str | None = None,
    materialize: str | None = None,
    columns: list[str] | None = None,
    memory: str | None = None,
    timeout: float | None = None,
    cache: bool = True,
    cpus: int | None = None,
    internet_access: bool = False,
    partitioned_by: str | list[str] | None = None,
    overwrite_filter: str | None = None,
) -> Callable[[F], F]:
    """Mark a function as a model: its return value is a table named ``name`` (default: the
    function name), kept in memory for downstream models and, with ``materialize``,
    written to the lakehouse: ``"replace"`` swaps the table's rows, ``"append"`` adds to
    them, ``"overwrite_partitions"`` replaces the rows ``overwrite_filter`` matches (a
    filter on partition columns, such as ``"order_date >= '2024-05-01'"``; without one,
    every partition the output holds) and keeps the others.

    ``partitioned_by`` partitions the table with Iceberg's hidden partitions:
    ``"day(order_date), country"`` (a column, or ``year``, ``month``, ``day``, ``hour``,
    ``bucket(N, c)``, ``truncate(N, c)`` of one). Readers filter on the column and skip
    the partitions that cannot match.

    ``memory`` reserves memory for the function ("4GiB"; estimated from its inputs when
    not given): past it the function is stopped, and retried once with twice as much.
    ``cpus`` reserves that many of a worker's cores: the function waits for them, and
    DuckDB, Arrow, Polars and BLAS inside it use that many threads. Without it the
    function reserves none and its engines use the cores no other function reserved.
    ``timeout`` (seconds) stops a function that runs longer. A function has no network
    unless ``internet_access=True`` (the plan shows which have it). ``cache=False`` runs it every
    time, for functions whose output changes without their code or inputs changing (the
    time, randomness, an outside service): what reads it runs every time too."""
    if materialize not in MATERIALIZE_MODES:
        raise ValueError(f"materialize must be one of {MATERIALIZE_MODES}, not {materialize!r}")

    def wrap(fn: F) -> F:
        fn.__faas_model__ = {  # type: ignore[attr-defined]
            "name": name or fn.__name__,
            "materialize": materialize,
            "columns": columns,
            "memory": memory,
            "timeout": timeout,
            "cache": cache,
            "cpus": cpus,
            "internet_access": internet_access,
            "partitioned_by": partitioned_by,
            "overwrite_filter": overwrite_filter,
        }
        return fn

    return wrap


def python(version: str, pip: dict[str, str] | None = None) -> Callable[[F], F]:
    """The function's environment: a Python version and pip packages with versions."""

    def wrap(fn: F) -> F:
        fn.__faas_python__ = {"version": version, "pip": dict(pip or {})}  # type: ignore[attr-defined]
        return fn

    return wrap


def expectation() -> Callable[[F], F]:
    """Mark a function as an expectation: it takes inputs like a model and returns a bool."""

    def wrap(fn: F) -> F:
        fn.__faas_expectation__ = True  # type: ignore[attr-defined]
        return fn

    return wrap


class TableSchema:
    """A declared table schema: a class whose annotations are its columns, each one of
    faas's field types (``faas.Int64``; ``faas.Int64 | None`` for a column that may hold
    nulls)::

        class Order(faas.TableSchema):
            order_id: faas.Int64
            country: faas.String | None

    A model declares its output with it (``-> Annotated[pyarrow.Table, Order]``), and an
    input the columns it reads (``faas.Model("orders", projection_schema=Order)``). The
    planner checks every reader against the declaration before anything runs; the
    function's result is checked against it when it returns. Read statically, like the
    decorators: write the class out, deriving from ``faas.TableSchema`` itself."""

    def __class_getitem__(cls, column: str) -> typing.Any:
        return cls.__annotations__[column]


class TableField:
    """Notes on a column: ``Annotated[faas.Int64 | None, faas.TableField(doc="...")]``."""

    __slots__ = ("doc", "title", "lineage")

    def __init__(self, doc: str | None = None, title: str | None = None, lineage: typing.Any = None):
        self.doc, self.title, self.lineage = doc, title, lineage


class FieldType:
    """A column type of a :class:`TableSchema`; ``arrow`` is the Arrow type it stands for
    ("" for any)."""

    arrow = ""


class Bool(FieldType):
    arrow = "bool"


class Int32(FieldType):
    arrow = "int32"


class Int64(FieldType):
    arrow = "int64"


class Float32(FieldType):
    arrow = "float"


class Float64(FieldType):
    arrow = "double"


class String(FieldType):
    arrow = "string"


class Binary(FieldType):
    arrow = "binary"


class Date32(FieldType):
    arrow = "date32[day]"


class Date64(FieldType):
    arrow = "date64[ms]"


class TimestampMicro(FieldType):
    arrow = "timestamp[us]"


class TimestampNano(FieldType):
    arrow = "timestamp[ns]"


class TimestampMicroUTC(FieldType):
    arrow = "timestamp[us, tz=UTC]"


class TimestampNanoUTC(FieldType):
    arrow = "timestamp[ns, tz=UTC]"


class Decimal128(FieldType):
    """Any decimal (its precision and scale are not checked)."""

    arrow = "decimal128"


class AnyType(FieldType):
    """Any type at all: only the column's presence is checked (``faas.Any``)."""


FIELD_TYPES: dict[str, type[FieldType]] = {
    t.__name__: t for t in (
        Bool, Int32, Int64, Float32, Float64, String, Binary, Date32, Date64, TimestampMicro,
        TimestampNano, TimestampMicroUTC, TimestampNanoUTC, Decimal128,
    )
}
FIELD_TYPES["Any"] = AnyType
Any = AnyType  # faas.Any: a column of any type


def __getattr__(name: str) -> typing.Any:
    # The clients pull in asyncio and msgspec; only load them when someone asks.
    if name == "Client":  # synchronous: notebooks, scripts, apps (faas.client.sync)
        from faas.client.sync import Client

        return Client
    if name == "AsyncClient":  # asyncio (faas.client.client)
        from faas.client.client import Client as AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'faas' has no attribute {name!r}")
