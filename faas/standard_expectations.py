"""Standard expectations: ready-made data checks for ``@faas.expectation`` functions.

The same functions, with the same names, arguments and ``bool`` results, as Bauplan's
``bauplan.standard_expectations``, so an expectation written against that module runs
unchanged once its import names faas instead::

    import faas
    from faas.standard_expectations import expect_column_no_nulls, last_failure

    @faas.expectation()
    @faas.python("3.11")
    def no_null_pickups(trips=faas.Model("taxi_trips", columns=["pickup_datetime"])):
        ok = expect_column_no_nulls(trips, "pickup_datetime")
        assert ok, last_failure()
        return ok

Every check is computed with ``pyarrow.compute`` over the whole column, chunk by chunk,
without a Python loop over rows.

The table. A ``pyarrow.Table`` is used as it is and a ``pyarrow.RecordBatch`` as a table of
one batch. Anything else is converted once: with its ``to_arrow()`` when it has one (a Polars
DataFrame), otherwise with ``pyarrow.table(...)``, which takes any object with
``__arrow_c_stream__`` (a DuckDB relation, a ``pyarrow.RecordBatchReader`` such as a
``faas.Model(..., stream=True)`` input) and pandas DataFrames. A reader is read whole, and
only once: check a streamed input before or instead of consuming it elsewhere.

Failures. An expectation returns ``False`` when it fails, and says why on one line of
standard error (faas streams a function's standard error back live), starting with the
function's name::

    expect_column_no_nulls: column 'x' has 3 null rows of 100, e.g. rows [4, 17, 52]

The same line is kept for :func:`last_failure`, which returns the message of the most recent
expectation called in this process, or ``None`` when that one passed. A column that is not
in the table raises :class:`ColumnNotFoundError` (a ``KeyError``) that names the column and
the table's columns.

Nulls and edge cases, where Bauplan's reference does not say:

* ``expect_column_accepted_values``: a null is accepted only when ``None`` is in the
  accepted list (as ``pyarrow.compute.is_in`` matches nulls). The accepted values are cast to
  the column's type; values that do not fit it raise ``TypeError``.
* ``expect_column_all_unique`` / ``expect_column_not_unique``: null counts as one value, so
  two nulls are a duplicate (as ``pyarrow.compute.unique`` counts them).
* Mean expectations average the non-null values. A column with none (empty, or all null)
  fails with "column 'x' has no values to average". A non-numeric column raises ``TypeError``.
* ``expect_column_equal_concatenation``: a row whose concatenated columns hold a null
  concatenates to null; it matches a null target and no other, and a non-null concatenation
  never matches a null target. Columns (the target too) that are not strings are cast to
  strings. An empty ``columns`` list raises ``ValueError``.
* An empty table has no nulls, all nulls, no duplicates and only accepted values, so
  ``expect_column_no_nulls``, ``expect_column_all_null``, ``expect_column_all_unique``,
  ``expect_column_accepted_values`` and ``expect_column_equal_concatenation`` pass on it;
  ``expect_column_some_null``, ``expect_column_not_unique`` and the mean expectations fail.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ColumnNotFoundError",
    "expect_column_accepted_values",
    "expect_column_all_null",
    "expect_column_all_unique",
    "expect_column_equal_concatenation",
    "expect_column_mean_greater_or_equal_than",
    "expect_column_mean_greater_than",
    "expect_column_mean_smaller_or_equal_than",
    "expect_column_mean_smaller_than",
    "expect_column_no_nulls",
    "expect_column_not_unique",
    "expect_column_some_null",
    "last_failure",
]

SAMPLE_SIZE = 5  # offending values (or rows) a failure message shows
_VALUE_CHARS = 60  # longest shown value; longer ones are cut with "..."

_last_failure: str | None = None


class ColumnNotFoundError(KeyError):
    """A column an expectation names is not in the table (or is there more than once)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def last_failure() -> str | None:
    """The failure message of the most recent expectation called in this process, or
    ``None`` when it passed (or none ran yet)."""
    return _last_failure


# -- helpers ------------------------------------------------------------------------------


def _as_table(table: Any) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    to_arrow = getattr(table, "to_arrow", None)
    if callable(to_arrow):
        converted = to_arrow()
        return converted if isinstance(converted, pa.Table) else _as_table(converted)
    return pa.table(table)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    found = table.schema.get_all_field_indices(name)
    if len(found) == 1:
        return table.column(found[0])
    if not found:
        raise ColumnNotFoundError(
            f"column {name!r} is not in the table; its columns: {table.column_names}")
    raise ColumnNotFoundError(
        f"column {name!r} is in the table {len(found)} times; its columns: {table.column_names}")


def _start(table: Any, *names: str) -> list[pa.ChunkedArray]:
    """Reset the last failure, convert the table and look up the named columns."""
    global _last_failure
    _last_failure = None
    t = _as_table(table)
    return [_column(t, name) for name in names]


def _fail(function: str, message: str) -> bool:
    """Record and print a failed expectation's message; return False."""
    global _last_failure
    _last_failure = f"{function}: {message}"
    print(_last_failure, file=sys.stderr, flush=True)
    return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _values(values: pa.Array | pa.ChunkedArray) -> str:
    """The first SAMPLE_SIZE of ``values`` as ``[v1, v2, ...]``."""
    return "[" + ", ".join(_show(v) for v in values.slice(0, SAMPLE_SIZE).to_pylist()) + "]"


def _rows(mask: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Positions of the first SAMPLE_SIZE true rows of a boolean mask (null as false)."""
    return pc.indices_nonzero(pc.fill_null(mask, False)).slice(0, SAMPLE_SIZE)


def _rows_text(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


# -- nulls --------------------------------------------------------------------------------


def expect_column_no_nulls(table: pa.Table, column_name: str) -> bool:
    """Expect the column to have no null values.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    nulls = col.null_count
    if nulls == 0:
        return True
    return _fail(
        "expect_column_no_nulls",
        f"column {column_name!r} has {nulls} null {'row' if nulls == 1 else 'rows'} of "
        f"{len(col)}, e.g. rows {_rows(pc.is_null(col)).to_pylist()}")


def expect_column_all_null(table: pa.Table, column_name: str) -> bool:
    """Expect the column to have all null values.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    valid = len(col) - col.null_count
    if valid == 0:
        return True
    return _fail(
        "expect_column_all_null",
        f"column {column_name!r} has {valid} non-null {'row' if valid == 1 else 'rows'} of "
        f"{len(col)}, e.g. {_values(pc.drop_null(col))}")


def expect_column_some_null(table: pa.Table, column_name: str) -> bool:
    """Expect the column to have at least one null.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    if col.null_count > 0:
        return True
    return _fail(
        "expect_column_some_null",
        f"column {column_name!r} has no null rows of {len(col)}")


# -- values -------------------------------------------------------------------------------


def expect_column_accepted_values(table: pa.Table, column_name: str,
                                  accepted_values: list[Any]) -> bool:
    """Expect all values in the column to come from the list of accepted values.

    A null is accepted only when ``None`` is in ``accepted_values``.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.
        accepted_values: the list of accepted values.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    value_type = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    try:
        value_set = pa.array(list(accepted_values), type=value_type)
    except (TypeError, ValueError) as e:  # pyarrow's ArrowInvalid, ArrowTypeError too
        raise TypeError(f"expect_column_accepted_values: accepted_values "
                        f"{_show(list(accepted_values))} do not fit column "
                        f"{column_name!r} of type {col.type}: {e}") from None
    offending = pc.invert(pc.is_in(col, value_set=value_set, skip_nulls=False))
    count = pc.sum(offending).as_py() or 0
    if count == 0:
        return True
    bad = pc.filter(col, offending)
    return _fail(
        "expect_column_accepted_values",
        f"column {column_name!r} has {_rows_text(count)} of {len(col)} with values not in "
        f"accepted_values, e.g. {_values(pc.unique(bad))}")


def _duplicates(col: pa.ChunkedArray) -> tuple[int, int, str]:
    """The values that occur more than once: how many, over how many rows, and a sample
    of them with their counts."""
    counts = pc.value_counts(col)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    rows = pc.sum(repeated.field("counts")).as_py() or 0
    sample = repeated.slice(0, SAMPLE_SIZE)
    shown = [f"{_show(v)} ({n} rows)" for v, n in zip(
        sample.field("values").to_pylist(), sample.field("counts").to_pylist(), strict=True)]
    return len(repeated), rows, "[" + ", ".join(shown) + "]"


def expect_column_all_unique(table: pa.Table, column_name: str) -> bool:
    """Expect the column to have all unique values (i.e. no duplicates).

    Null counts as one value: two nulls are a duplicate.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    if len(pc.unique(col)) == len(col):
        return True
    values, rows, sample = _duplicates(col)
    return _fail(
        "expect_column_all_unique",
        f"column {column_name!r} has {values} duplicated "
        f"{'value' if values == 1 else 'values'} over {rows} rows of {len(col)}, e.g. {sample}")


def expect_column_not_unique(table: pa.Table, column_name: str) -> bool:
    """Expect the column to have at least one duplicate value.

    Null counts as one value: two nulls are a duplicate.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to test.

    Returns:
        a boolean.
    """
    (col,) = _start(table, column_name)
    if len(pc.unique(col)) < len(col):
        return True
    return _fail(
        "expect_column_not_unique",
        f"column {column_name!r} has no duplicated values: all {len(col)} rows are distinct")


# -- means --------------------------------------------------------------------------------


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _mean(function: str, table: Any, column_name: str, value: float, op: str) -> bool:
    (col,) = _start(table, column_name)
    try:
        mean = pc.mean(col).as_py()
    except pa.ArrowNotImplementedError:
        raise TypeError(f"{function}: column {column_name!r} has type {col.type}; "
                        f"a mean needs a numeric column") from None
    if mean is None:
        return _fail(function, f"column {column_name!r} has no values to average")
    if _COMPARE[op](mean, value):
        return True
    values = len(col) - col.null_count
    return _fail(
        function,
        f"column {column_name!r} has mean {mean} over {values} non-null "
        f"{'value' if values == 1 else 'values'}, not {op} {value}")


def expect_column_mean_greater_than(table: pa.Table, column_name: str, value: float) -> bool:
    """Expect the mean of a column to be greater than the supplied value.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to calculate the mean of.
        value: the value to compare the mean with.

    Returns:
        a boolean.
    """
    return _mean("expect_column_mean_greater_than", table, column_name, value, ">")


def expect_column_mean_greater_or_equal_than(table: pa.Table, column_name: str,
                                             value: float) -> bool:
    """Expect the mean of a column to be equal or greater than the supplied value.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to calculate the mean of.
        value: the value to compare the mean with.

    Returns:
        a boolean.
    """
    return _mean("expect_column_mean_greater_or_equal_than", table, column_name, value, ">=")


def expect_column_mean_smaller_than(table: pa.Table, column_name: str, value: float) -> bool:
    """Expect the mean of a column to be smaller than the supplied value.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to calculate the mean of.
        value: the value to compare the mean with.

    Returns:
        a boolean.
    """
    return _mean("expect_column_mean_smaller_than", table, column_name, value, "<")


def expect_column_mean_smaller_or_equal_than(table: pa.Table, column_name: str,
                                             value: float) -> bool:
    """Expect the mean of a column to be equal or smaller than the supplied value.

    Parameters:
        table: the pyarrow table to test.
        column_name: the column to calculate the mean of.
        value: the value to compare the mean with.

    Returns:
        a boolean.
    """
    return _mean("expect_column_mean_smaller_or_equal_than", table, column_name, value, "<=")


# -- concatenation ------------------------------------------------------------------------


def _as_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col if col.type == pa.string() else pc.cast(col, pa.string())


def expect_column_equal_concatenation(table: pa.Table, target_column: str, columns: list[str],
                                      separator: str = "") -> bool:
    """Expect the target column to be equal to the concatenation of the columns in the list.

    Columns that are not strings (the target too) are cast to strings. A null in any of the
    columns makes the row's concatenation null, which matches only a null target.

    Parameters:
        table: the pyarrow table to test.
        target_column: the column to compare with the concatenation of the columns.
        columns: the list of columns to concatenate.
        separator: the separator to use when concatenating the columns.

    Returns:
        a boolean.
    """
    if not columns:
        raise ValueError("expect_column_equal_concatenation: columns must name at least "
                         "one column to concatenate")
    target, *parts = _start(table, target_column, *columns)
    target = _as_string(target)
    joined = pc.binary_join_element_wise(*(_as_string(p) for p in parts),
                                         pa.scalar(separator, pa.string()))
    both_null = pc.and_(pc.is_null(joined), pc.is_null(target))
    same = pc.or_(pc.fill_null(pc.equal(joined, target), False), both_null)
    differs = pc.invert(same)
    count = pc.sum(differs).as_py() or 0
    if count == 0:
        return True
    rows = _rows(differs)
    shown = [f"row {r}: {_show(t)} != {_show(j)}" for r, t, j in zip(
        rows.to_pylist(), pc.take(target, rows).to_pylist(), pc.take(joined, rows).to_pylist(),
        strict=True)]
    return _fail(
        "expect_column_equal_concatenation",
        f"column {target_column!r} differs from the concatenation of {list(columns)} with "
        f"separator {separator!r} in {_rows_text(count)} of {len(target)}, "
        f"e.g. (target != concatenation) [{', '.join(shown)}]")
