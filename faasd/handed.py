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
column DuckDB reads from Parquet as it reads the same column from Arrow, and whose files
name no two columns alike but for case (DuckDB's names ignore case), take that way; so
does only a reader nothing has been read from yet, on a connection that may read files.
Any other reader is registered as it is. ``register`` and ``unregister`` keep their
meaning: a name is replaced, dropped, or refused over the user's own view, as DuckDB does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgspec

from faas.protocol.messages import ScanInput

# The alias every such view's query gives its scan: how a view of ours is told from one
# the user made.
_MARK = "faas_handed_scan"


@dataclass
class _Handed:
    """A streamed scan DuckDB may read as its data files."""

    query: str  # DuckDB's query of its rows, from the files
    files: list[str]
    reader: Any = None  # kept alive, so that its id stays its own
    started: bool = False  # a batch was asked of the reader: what is left is not the files
    names_checked: bool | None = None  # no two column names alike but for case

    def readable(self) -> bool:
        if self.names_checked is None:
            self.names_checked = _distinct_names(self.files)
        return self.names_checked and not self.started


# Streamed scans' readers that DuckDB may read as their data files, by id(reader).
_as_parquet: dict[int, _Handed] = {}
# Names ever given to a view of ours, lower case (DuckDB matches names so), on any
# connection: only a register or unregister of one of these looks for a view to drop.
_named: set[str] = set()


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
    import pyarrow as pa

    from faas.store.scan import plan_reader

    assert inp.plan is not None
    plan = msgspec.structs.replace(inp.plan, files=files(directory))
    inner = plan_reader(plan)
    query = _parquet_query(plan)
    if inner is None or query is None:
        return inner
    handed = _Handed(query=query, files=plan.files)

    def batches() -> Any:
        handed.started = True
        yield from inner

    reader = handed.reader = pa.RecordBatchReader.from_batches(inner.schema, batches())
    _as_parquet[id(reader)] = handed
    return reader


def view(inp: ScanInput, directory: str) -> Any:
    """The handed scan as a reader DuckDB reads as its data files (:func:`stream`), or
    None where DuckDB would read it as a reader, or the files are not what the plan
    expects."""
    if _parquet_query(inp.plan) is None:  # decided by the plan: no footer is read for it
        return None
    reader = stream(inp, directory)
    found = _found(reader)
    return reader if found is not None and found.readable() else None


def paths(objects: Any) -> list[str]:
    """The data files DuckDB reads for those of ``objects`` that are such readers."""
    return [path for o in objects if (found := _found(o)) is not None for path in found.files]


def _found(reader: Any) -> _Handed | None:
    found = _as_parquet.get(id(reader))
    return found if found is not None and found.reader is reader else None


def _parquet_query(plan: Any) -> str | None:
    """The DuckDB query that reads the plan's rows from its files as the reader gives them,
    or None where DuckDB's Parquet reader could differ from its Arrow scan. (The files
    hold each column with the plan's type, or its 32-bit-offset twin, which DuckDB reads
    alike; Hive-style names in the files' paths are not columns.)"""
    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(plan.schema))
    if plan.filter or not all(_alike(schema.field(c).type) for c in plan.columns):
        return None
    columns = ", ".join(_identifier(name) for name in plan.columns)
    paths = ", ".join(_literal(path) for path in plan.files)
    return (f"SELECT {columns} FROM read_parquet([{paths}], union_by_name = true, "
            f"hive_partitioning = false) AS {_MARK}")


def _distinct_names(paths: list[str]) -> bool:
    """Do the files, all together, name no two columns that differ only in case? (DuckDB
    would rename one and read the other under both names.) Only their footers are read."""
    import pyarrow.parquet as pq

    spelled: dict[str, str] = {}
    try:
        for path in paths:
            for name in pq.read_schema(path).names:
                if spelled.setdefault(name.lower(), name) != name:
                    return False
    except OSError:
        return False  # scanned as the reader, which then says what is wrong
    return True


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

    def ours(con: Any, view_name: str) -> bool:
        """Is ``view_name`` a view of ours on ``con``?"""
        if view_name.lower() not in _named:
            return False
        rows = con.execute(
            "SELECT sql FROM duckdb_views() WHERE temporary AND lower(view_name) = lower(?)",
            [view_name],
        ).fetchall()
        return any(_MARK in (sql or "") for (sql,) in rows)

    def reads_files(con: Any) -> bool:
        [(allowed,)] = con.execute("SELECT current_setting('enable_external_access')").fetchall()
        return bool(allowed)

    def register(self: Any, view_name: str, python_object: Any) -> Any:
        found = _found(python_object)
        replace = ours(self, view_name)
        if found is None or not found.readable() or not reads_files(self):
            if replace:
                self.execute(f"DROP VIEW temp.{_identifier(view_name)}")
            return real_register(self, view_name, python_object)
        real_unregister(self, view_name)  # an object registered under the name goes
        # Without OR REPLACE unless the view is ours: over the user's own view this fails
        # as register itself does.
        self.execute(f"CREATE {'OR REPLACE ' if replace else ''}TEMPORARY VIEW "
                     f"{_identifier(view_name)} AS {found.query}")
        _named.add(view_name.lower())
        return self

    def unregister(self: Any, view_name: str) -> Any:
        if not ours(self, view_name):
            return real_unregister(self, view_name)
        self.execute(f"DROP VIEW temp.{_identifier(view_name)}")
        return self

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
