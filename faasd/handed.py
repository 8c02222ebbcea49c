"""Scans handed to a function as their data files, read in the function process.

A planned scan of a local table reaches the function as the plan's Parquet files in a
directory of ``in/`` (faasd.scans: without the cache, or streamed). The function decodes
them with the plan's projection and filter on the cores of its budget: a whole input
(:func:`read`) into a table, a streamed one (:func:`stream`) as a reader that decodes them
as it is read.

Registered in DuckDB (``con.register(name, reader)`` or ``duckdb.register``), a streamed
scan's reader becomes a view over ``read_parquet`` of the same files and columns: DuckDB
then reads the files itself, in parallel, with its own projection pushdown, as its query
runs, where a registered reader is scanned on one thread. The rows, their order, and the
types DuckDB gives them are the reader's. Only scans without a row filter whose every
column DuckDB reads from Parquet as it reads the same column from Arrow take that way;
any other reader is registered as it is.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from faas.protocol.messages import ScanInput

# Streamed scans' readers that DuckDB may read as their data files: id(reader) -> (the
# reader, kept alive so that its id stays its own, the query that reads its rows, and
# the files it reads).
_as_parquet: dict[int, tuple[Any, str, list[str]]] = {}


def files(directory: str) -> list[str]:
    """The data files the worker put in ``directory``, in the plan's order."""
    return [os.path.join(directory, name) for name in sorted(os.listdir(directory))]


def read(inp: ScanInput, directory: str) -> Any:
    """The handed scan as one table; None if its files are not what the plan expects."""
    from faas.store.scan import read_plan

    assert inp.plan is not None  # the worker hands over data files only with a plan
    return read_plan(msgspec.structs.replace(inp.plan, files=files(directory)))


def stream(inp: ScanInput, directory: str) -> Any:
    """The handed scan as a RecordBatchReader that decodes the files as it is read; None
    if they are not what the plan expects."""
    from faas.store.scan import plan_reader

    assert inp.plan is not None
    plan = msgspec.structs.replace(inp.plan, files=files(directory))
    reader = plan_reader(plan)
    if reader is not None:
        query = _parquet_query(plan, reader.schema)
        if query is not None:
            _as_parquet[id(reader)] = (reader, query, plan.files)
    return reader


def view(inp: ScanInput, directory: str) -> Any:
    """The handed scan as a reader DuckDB reads as its data files (:func:`stream`), or
    None where DuckDB would read it as a reader, or the files are not what the plan
    expects."""
    reader = stream(inp, directory)
    return reader if reader is not None and id(reader) in _as_parquet else None


def paths(objects: Any) -> list[str]:
    """The data files DuckDB reads for those of ``objects`` that are such readers."""
    return [path for o in objects if (found := _as_parquet.get(id(o))) and found[0] is o
            for path in found[2]]


def _parquet_query(plan: Any, schema: Any) -> str | None:
    """The DuckDB query that reads the plan's rows from its files as the reader gives them,
    or None where DuckDB's Parquet reader could differ from its Arrow scan."""
    if plan.filter or not all(_alike(field.type) for field in schema):
        return None
    columns = ", ".join(_identifier(name) for name in schema.names)
    paths = ", ".join(_literal(path) for path in plan.files)
    return f"SELECT {columns} FROM read_parquet([{paths}], union_by_name = true)"


def _alike(t: Any) -> bool:
    """Does DuckDB give a Parquet column of Arrow type ``t`` the type it gives the Arrow
    column? (Not so for a UUID, which Arrow reads as fixed-size binary; nor for a time,
    which DuckDB may read with a time zone; nested types are left to the reader.)"""
    import pyarrow as pa

    return (
        pa.types.is_boolean(t) or pa.types.is_integer(t)
        or pa.types.is_float32(t) or pa.types.is_float64(t)
        or pa.types.is_string(t) or pa.types.is_large_string(t)
        or pa.types.is_binary(t) or pa.types.is_large_binary(t)
        or pa.types.is_date32(t) or pa.types.is_decimal128(t)
        or (pa.types.is_timestamp(t) and t.unit in ("us", "ns") and t.tz in (None, "UTC", "+00:00"))
    )


def _identifier(name: str) -> str:
    # Imported here: DuckDB's first import, which faas.store.query makes, brings this
    # module in (faasd.runner's thread budget), so it cannot import that one at its top.
    from faas.store.query import quote_identifier

    return quote_identifier(name)


def _literal(text: str) -> str:
    from faas.store.query import quote_literal

    return quote_literal(text)


def teach_duckdb(duckdb: Any) -> None:
    """Make ``register`` (of a connection, and the module's) read a handed scan's reader
    as its data files, and ``unregister`` drop the view that stands for it; anything else
    is registered and unregistered as before."""
    connection = duckdb.DuckDBPyConnection
    real_register = _unwrapped(connection.register)
    real_unregister = _unwrapped(connection.unregister)
    # The views standing for readers (lower case, as DuckDB matches names), by id of their
    # connection, which is kept: the default connection's Python object, for one, is made
    # anew each time it is asked for unless one is alive.
    views: dict[int, tuple[Any, set[str]]] = {}

    def register(self: Any, view_name: str, python_object: Any) -> Any:
        found = _as_parquet.get(id(python_object))
        if found is not None and found[0] is python_object:
            self.execute(f"CREATE OR REPLACE TEMPORARY VIEW {_identifier(view_name)} AS {found[1]}")
            views.setdefault(id(self), (self, set()))[1].add(view_name.lower())
            return self
        if _forget(self, view_name):
            self.execute(f"DROP VIEW IF EXISTS temp.{_identifier(view_name)}")
        return real_register(self, view_name, python_object)

    def unregister(self: Any, view_name: str) -> Any:
        if not _forget(self, view_name):
            return real_unregister(self, view_name)
        self.execute(f"DROP VIEW IF EXISTS temp.{_identifier(view_name)}")
        return self

    def _forget(con: Any, view_name: str) -> bool:
        kept = views.get(id(con))
        if kept is None or kept[0] is not con or view_name.lower() not in kept[1]:
            return False
        kept[1].discard(view_name.lower())
        return True

    _wrap(connection, "register", register, real_register)
    _wrap(connection, "unregister", unregister, real_unregister)

    def default() -> Any:
        found = duckdb.default_connection
        return found() if callable(found) else found

    module_register = _unwrapped(duckdb.register)
    module_unregister = _unwrapped(duckdb.unregister)

    def on_module(view_name: str, python_object: Any, *, connection: Any = None) -> Any:
        return register(connection or default(), view_name, python_object)

    def off_module(view_name: str, *, connection: Any = None) -> Any:
        return unregister(connection or default(), view_name)

    _wrap(duckdb, "register", on_module, module_register)
    _wrap(duckdb, "unregister", off_module, module_unregister)


def _unwrapped(function: Any) -> Any:
    return getattr(function, "__wrapped__", function)


def _wrap(owner: Any, name: str, function: Any, real: Any) -> None:
    function.__wrapped__ = real
    function.__doc__ = real.__doc__
    setattr(owner, name, function)
