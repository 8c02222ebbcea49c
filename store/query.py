"""SQL over Arrow tables with DuckDB.

Table names are read from DuckDB's parse tree (``json_serialize_sql``), which
needs no catalog: ``duckdb.get_table_names`` also binds the query and so fails
on ``JOIN ... USING`` against tables it does not know yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from faas.protocol.errors import InvalidInput, NotFound

logger = logging.getLogger(__name__)

_local = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    """A connection kept per thread for parsing only: opening one costs ~15 ms, a parse ~0.4."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(":memory:")
        con.execute("SET enable_external_access = false")
        _local.con = con
    return con


def referenced_tables(sql: str, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
    """Return the table names ``sql`` reads, as written: ``t`` or ``ns.t``.

    Only one SELECT statement is accepted. Names of CTEs are left out. Parsing
    uses ``con`` if given, else a connection kept for parsing on this thread.

    Raises:
        InvalidInput: the SQL does not parse, or is not a single SELECT.
    """
    con = con or _parser()
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise sql_error(e, sql) from e
    if len(statements) != 1:
        raise InvalidInput(f"expected one SQL statement, found {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise InvalidInput(f"only SELECT queries are supported, not {statements[0].type.name}")
    rows = con.execute("SELECT json_serialize_sql(?)", [statements[0].query]).fetchall()
    tree = json.loads(rows[0][0])
    if tree.get("error"):
        raise InvalidInput(f"cannot read SQL: {tree.get('error_message', 'unknown error')}")
    ctes = set(_cte_names(tree))
    names: list[str] = []
    for node in _walk(tree):
        if node.get("type") != "BASE_TABLE":
            continue
        schema, table = node.get("schema_name") or "", node.get("table_name") or ""
        if node.get("catalog_name"):
            raise InvalidInput(
                f"table {node['catalog_name']}.{schema}.{table}: write ns.table, without a catalog"
            )
        if not schema and table in ctes:
            continue
        name = f"{schema}.{table}" if schema else table
        if name not in names:
            names.append(name)
    return names


def _parse_tree(sql: str) -> Any:
    rows = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    tree = json.loads(rows[0][0])
    if tree.get("error"):
        raise InvalidInput(f"cannot read SQL: {tree.get('error_message', 'unknown error')}")
    return tree


def check_predicate(predicate: str) -> None:
    """Check that ``predicate`` parses as a SQL WHERE condition, and is only that.

    Raises:
        InvalidInput: it does not parse, or it ends the condition and goes on.
    """
    sql = f"SELECT * FROM __faas_input WHERE ({predicate})"
    try:
        names = referenced_tables(sql)
    except InvalidInput as exc:
        raise InvalidInput(f"bad filter {predicate!r}: {exc}") from None
    if names != ["__faas_input"]:
        raise InvalidInput(f"bad filter {predicate!r}: a filter may not read other tables")


def sql_parameters(sql: str) -> list[str]:
    """The named parameters (``$name``) the SQL uses, in order of first use.

    Raises:
        InvalidInput: the SQL does not parse, or uses positional parameters (``?``, ``$1``).
    """
    names: list[str] = []
    for node in _walk(_parse_tree(sql)):
        if node.get("class") != "PARAMETER":
            continue
        ident = str(node.get("identifier") or "")
        if not ident or ident.isdigit():
            raise InvalidInput("use named parameters like $min_price, not ? or $1")
        if ident not in names:
            names.append(ident)
    return names


def query_tables(
    sql: str, tables: Mapping[str, pa.Table], params: Mapping[str, Any] | None = None,
    *, connected: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    allowed_paths: Sequence[str] = (),
) -> pa.Table:
    """Run ``sql`` in a fresh in-memory DuckDB over the given Arrow tables.

    Keys of ``tables`` are the names the SQL uses: ``t``, or ``ns.t`` to be
    read as ``ns.t`` (registered in schema ``ns``). The connection cannot touch
    files or the network, so the SQL can read only these tables.

    Raises:
        InvalidInput: the SQL does not parse, is not one SELECT, or fails to bind
            or run (DuckDB's first line is the message).
        NotFound: the SQL reads a table that is not in ``tables``.

    ``params`` are bound to the SQL's ``$name`` parameters as values, never
    pasted into the text. ``connected`` is handed the connection before the query runs
    (to interrupt it from another thread). ``allowed_paths``: files the connection may
    read all the same (the data files of tables registered as views over them).
    """
    with _relation(sql, tables, params, connected, allowed_paths) as relation:
        try:
            table_out = relation.to_arrow_table()
        except duckdb.Error as e:
            raise sql_error(e, sql) from e
    logger.debug("query returned %d rows", table_out.num_rows)
    return table_out


# Rows in each batch of a streamed result.
BATCH_ROWS = 64 * 1024


@contextlib.contextmanager
def query_batches(
    sql: str, tables: Mapping[str, pa.Table], *,
    connected: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[QueryResult]:
    """:func:`query_tables`, with the result read a batch at a time as DuckDB makes it
    (a query that streams, such as a scan with a filter, is never held whole)."""
    with _relation(sql, tables, None, connected) as relation:
        try:
            to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
            reader = to_reader(batch_rows)
        except duckdb.Error as e:
            raise sql_error(e, sql) from e
        yield QueryResult(reader, sql)


class QueryResult:
    """The batches of a running query's result; a failure while reading them is the same
    one-line SQLError the query would have raised whole."""

    def __init__(self, reader: pa.RecordBatchReader, sql: str) -> None:
        self.schema = reader.schema
        self._reader = reader
        self._sql = sql

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowException, duckdb.Error) as e:  # DuckDB's error, via Arrow
                raise sql_error(e, self._sql) from e
            yield batch


@contextlib.contextmanager
def _relation(
    sql: str, tables: Mapping[str, pa.Table], params: Mapping[str, Any] | None,
    connected: Callable[[duckdb.DuckDBPyConnection], None] | None,
    allowed_paths: Sequence[str] = (),
) -> Iterator[duckdb.DuckDBPyRelation]:
    """The query's relation on a fresh connection that can read only ``tables`` (and the
    files of ``allowed_paths``)."""
    with duckdb.connect(":memory:") as con:
        if connected is not None:
            connected(con)
        # Parsed on the connection that runs it: a second DuckDB database alive in the
        # same process beside this one has crashed function processes.
        names = referenced_tables(sql, con)
        missing = [n for n in names if n not in tables]
        if missing:
            raise NotFound(
                f"table {missing[0]!r} not found; known tables: {', '.join(sorted(tables)) or 'none'}"
            )
        _register(con, tables)
        if allowed_paths:
            con.execute(f"SET allowed_paths = [{', '.join(quote_literal(p) for p in allowed_paths)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            result = con.sql(sql, params=dict(params)) if params else con.sql(sql)
        except duckdb.CatalogException as e:
            raise NotFound(_first_line(e)) from e
        except duckdb.Error as e:
            raise sql_error(e, sql) from e
        if result is None:
            raise InvalidInput("the SQL returned no result; write a SELECT")
        yield result


def _register(con: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table]) -> None:
    """Make each table readable by the name the SQL uses (``t``, or ``ns.t``)."""
    for i, (name, data) in enumerate(tables.items()):
        if "." not in name:
            con.register(name, data)
            continue
        schema, table = name.split(".", 1)
        # A temp view over a registered Arrow table keeps the data zero-copy.
        alias = f"__faas_arrow_{i}"
        con.register(alias, data)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
        con.execute(f"CREATE VIEW {quote_identifier(schema)}.{quote_identifier(table)} AS "
                    f"SELECT * FROM {alias}")


def result_columns(
    sql: str, schemas: Mapping[str, pa.Schema], params: Mapping[str, Any] | None = None
) -> list[str] | None:
    """The columns ``sql`` gives over tables of these schemas, found by binding it over
    empty tables (nothing runs); None if it does not bind (then the run says why)."""
    with duckdb.connect(":memory:") as con:
        try:
            _register(con, {name: schema.empty_table() for name, schema in schemas.items()})
            con.execute("SET enable_external_access = false")
            result = con.sql(sql, params=dict(params)) if params else con.sql(sql)
        except duckdb.Error:
            return None
        return None if result is None else list(result.columns)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _cte_names(tree: Any) -> Iterator[str]:
    # A CTE shadows a table of the same bare name. Scopes are not tracked, so a
    # query that reads a table in one scope and defines a CTE of the same name in
    # another fails with NotFound instead of loading the table; rare enough.
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                if isinstance(entry, dict) and "key" in entry:
                    yield str(entry["key"])


def quote_identifier(identifier: str) -> str:
    """``identifier`` as a DuckDB identifier, quoted."""
    return '"' + identifier.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


class SQLError(InvalidInput):
    """DuckDB refused the SQL. ``line``: where, 1-based in the text it was given (the
    line DuckDB names, else the first line that has the name the error quotes), or None."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def sql_error(error: BaseException, sql: str) -> SQLError:
    """The one-line SQLError for DuckDB's ``error`` on ``sql``, with its line."""
    text = str(error)
    found = re.search(r"^LINE (\d+):", text, re.MULTILINE)
    line = int(found.group(1)) if found else None
    if line is None:
        quoted = re.search(r'"([^"\n]+)"', _first_line(error))
        if quoted:
            word = re.compile(rf"(?<![\w$]){re.escape(quoted.group(1))}(?![\w$])", re.IGNORECASE)
            line = next(
                (n for n, text_line in enumerate(sql.splitlines(), 1)
                 if word.search(text_line.split("--", 1)[0])),
                None,
            )
    return SQLError(_first_line(error), line)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
