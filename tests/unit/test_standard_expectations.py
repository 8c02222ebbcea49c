"""faas.standard_expectations: Bauplan's standard expectations, with failure messages."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from faas import standard_expectations as se
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)


def chunked(data: dict[str, list[Any]], chunks: int = 3,
            schema: pa.Schema | None = None) -> pa.Table:
    """A table of ``data`` made of ``chunks`` record batches (fewer when rows are fewer)."""
    t = pa.table(data, schema=schema)
    n = t.num_rows
    if n < 2:
        return t
    step = -(-n // chunks)
    t = pa.Table.from_batches([b for i in range(0, n, step) for b in t.slice(i, step).to_batches()],
                              schema=t.schema)
    assert t.column(0).num_chunks > 1
    return t


def failed(capsys: pytest.CaptureFixture[str]) -> str:
    """The failure message: the one line printed to stderr, the same as last_failure()."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    message = se.last_failure()
    assert message is not None and err == message + "\n"
    return message


def passed(capsys: pytest.CaptureFixture[str]) -> None:
    assert se.last_failure() is None
    assert capsys.readouterr().err == ""


# -- the module ---------------------------------------------------------------------------


def test_imports_as_a_submodule_and_the_package_stays_free_of_pyarrow() -> None:
    code = ("import sys, faas; assert 'pyarrow' not in sys.modules; "
            "assert 'standard_expectations' not in faas.__all__; "
            "from faas import standard_expectations; import faas.standard_expectations as m; "
            "assert m is standard_expectations; assert callable(m.expect_column_no_nulls)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


BAUPLAN_SIGNATURES = {
    "expect_column_accepted_values": ["table", "column_name", "accepted_values"],
    "expect_column_all_null": ["table", "column_name"],
    "expect_column_all_unique": ["table", "column_name"],
    "expect_column_equal_concatenation": ["table", "target_column", "columns", "separator"],
    "expect_column_mean_greater_or_equal_than": ["table", "column_name", "value"],
    "expect_column_mean_greater_than": ["table", "column_name", "value"],
    "expect_column_mean_smaller_or_equal_than": ["table", "column_name", "value"],
    "expect_column_mean_smaller_than": ["table", "column_name", "value"],
    "expect_column_no_nulls": ["table", "column_name"],
    "expect_column_not_unique": ["table", "column_name"],
    "expect_column_some_null": ["table", "column_name"],
}


def test_names_and_arguments_are_bauplans() -> None:
    public = {name for name in se.__all__ if name.startswith("expect_")}
    assert public == set(BAUPLAN_SIGNATURES)
    for name, params in BAUPLAN_SIGNATURES.items():
        sig = inspect.signature(getattr(se, name))
        assert list(sig.parameters) == params, name
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()), name
    sep = inspect.signature(se.expect_column_equal_concatenation).parameters["separator"]
    assert sep.default == ""


# -- nulls --------------------------------------------------------------------------------


def test_no_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": [1, None, 3, None, 5, 6, None], "y": list(range(7))})
    assert se.expect_column_no_nulls(t, "y") is True
    passed(capsys)
    assert se.expect_column_no_nulls(t, "x") is False
    assert failed(capsys) == ("expect_column_no_nulls: column 'x' has 3 null rows of 7, "
                              "e.g. rows [1, 3, 6]")


def test_all_null(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": pa.array([None] * 6, pa.int64()), "y": [None, 2, None, 4, None, None]})
    assert se.expect_column_all_null(t, "x") is True
    passed(capsys)
    assert se.expect_column_all_null(t, "y") is False
    assert failed(capsys) == ("expect_column_all_null: column 'y' has 2 non-null rows of 6, "
                              "e.g. [2, 4]")


def test_some_null(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": [1, 2, None, 4], "y": [1, 2, 3, 4]})
    assert se.expect_column_some_null(t, "x") is True
    passed(capsys)
    assert se.expect_column_some_null(t, "y") is False
    assert failed(capsys) == "expect_column_some_null: column 'y' has no null rows of 4"


# -- values -------------------------------------------------------------------------------


def test_accepted_values(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"status": ["paid", "pending", "lost", "paid", "stolen", "lost", "paid"]})
    assert se.expect_column_accepted_values(t, "status", ["paid", "pending", "lost", "stolen"])
    passed(capsys)
    assert se.expect_column_accepted_values(t, "status", ["paid", "pending"]) is False
    assert failed(capsys) == (
        "expect_column_accepted_values: column 'status' has 3 rows of 7 with values not in "
        "accepted_values, e.g. ['lost', 'stolen']")


def test_accepted_values_null_is_accepted_only_when_none_is_listed(
        capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"n": [1, None, 2, None, 1]})
    assert se.expect_column_accepted_values(t, "n", [1, 2]) is False
    assert failed(capsys) == (
        "expect_column_accepted_values: column 'n' has 2 rows of 5 with values not in "
        "accepted_values, e.g. [None]")
    assert se.expect_column_accepted_values(t, "n", [1, 2, None]) is True
    passed(capsys)


def test_accepted_values_fit_the_column_type(capsys: pytest.CaptureFixture[str]) -> None:
    # Python ints against an int32 column, strings against a dictionary-encoded column.
    t = chunked({"small": pa.array([1, 2, 3, 2], pa.int32()),
                 "cat": pa.array(["a", "b", "a", "c"]).dictionary_encode()})
    assert se.expect_column_accepted_values(t, "small", [1, 2, 3]) is True
    assert se.expect_column_accepted_values(t, "cat", ["a", "b"]) is False
    assert failed(capsys).endswith("has 1 row of 4 with values not in accepted_values, "
                                   "e.g. ['c']")
    with pytest.raises(TypeError, match=r"accepted_values \['x'\] do not fit column 'small' "
                                        r"of type int32"):
        se.expect_column_accepted_values(t, "small", ["x"])


def test_accepted_values_empty_list_accepts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": ["a", "b"]})
    assert se.expect_column_accepted_values(t, "x", []) is False
    assert "has 2 rows of 2" in failed(capsys)


def test_all_unique(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"id": [1, 2, 3, 4, 5, 6], "dup": [7, 3, 7, 1, 3, 7]})
    assert se.expect_column_all_unique(t, "id") is True
    passed(capsys)
    assert se.expect_column_all_unique(t, "dup") is False
    assert failed(capsys) == (
        "expect_column_all_unique: column 'dup' has 2 duplicated values over 5 rows of 6, "
        "e.g. [7 (3 rows), 3 (2 rows)]")


def test_unique_counts_null_as_one_value(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"one_null": [1, None, 2], "two_nulls": [None, 1, None]})
    assert se.expect_column_all_unique(t, "one_null") is True
    assert se.expect_column_all_unique(t, "two_nulls") is False
    assert failed(capsys).endswith("1 duplicated value over 2 rows of 3, e.g. [None (2 rows)]")
    assert se.expect_column_not_unique(t, "two_nulls") is True
    assert se.expect_column_not_unique(t, "one_null") is False
    capsys.readouterr()


def test_not_unique(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"customer": ["a", "b", "a", "c"], "order": ["o1", "o2", "o3", "o4"]})
    assert se.expect_column_not_unique(t, "customer") is True
    passed(capsys)
    assert se.expect_column_not_unique(t, "order") is False
    assert failed(capsys) == ("expect_column_not_unique: column 'order' has no duplicated "
                              "values: all 4 rows are distinct")


# -- means --------------------------------------------------------------------------------

MEANS: list[tuple[Callable[[pa.Table, str, float], bool], str]] = [
    (se.expect_column_mean_greater_than, ">"),
    (se.expect_column_mean_greater_or_equal_than, ">="),
    (se.expect_column_mean_smaller_than, "<"),
    (se.expect_column_mean_smaller_or_equal_than, "<="),
]


@pytest.mark.parametrize(
    ("expect", "op", "value", "ok"),
    [(f, op, v, ok) for (f, op), cases in zip(MEANS, [
        [(2.0, True), (2.5, False), (3.0, False)],   # >
        [(2.0, True), (2.5, True), (3.0, False)],    # >=
        [(3.0, True), (2.5, False), (2.0, False)],   # <
        [(3.0, True), (2.5, True), (2.0, False)],    # <=
    ], strict=True) for v, ok in cases],
    ids=lambda x: x.__name__.removeprefix("expect_column_") if callable(x) else repr(x))
def test_mean(expect: Callable[[pa.Table, str, float], bool], op: str, value: float, ok: bool,
              capsys: pytest.CaptureFixture[str]) -> None:
    # The mean of the non-null values is 2.5; nulls are left out.
    t = chunked({"x": [1, None, 2, 3, None, 4]})
    assert expect(t, "x", value) is ok
    if ok:
        passed(capsys)
    else:
        assert failed(capsys) == (f"{expect.__name__}: column 'x' has mean 2.5 over 4 "
                                  f"non-null values, not {op} {value}")


@pytest.mark.parametrize(("expect", "op"), MEANS, ids=[op for _, op in MEANS])
def test_mean_of_no_values_fails(expect: Callable[[pa.Table, str, float], bool], op: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for t in (pa.table({"x": pa.array([], pa.float64())}),
              chunked({"x": pa.array([None, None, None], pa.float64())})):
        assert expect(t, "x", 0.0) is False
        assert failed(capsys) == f"{expect.__name__}: column 'x' has no values to average"


def test_mean_of_a_non_numeric_column_is_an_error() -> None:
    with pytest.raises(TypeError, match="column 's' has type string; a mean needs a numeric"):
        se.expect_column_mean_greater_than(pa.table({"s": ["a"]}), "s", 0.0)


# -- concatenation ------------------------------------------------------------------------


def test_equal_concatenation(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"first": ["Ada", "Alan", "Grace", "Edsger"],
                 "last": ["Lovelace", "Turing", "Hopper", "Dijkstra"],
                 "full": ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"],
                 "glued": ["AdaLovelace", "AlanTuring", "Grace-Hopper", "Edsger Dijkstra"]})
    assert se.expect_column_equal_concatenation(t, "full", ["first", "last"], " ") is True
    assert se.expect_column_equal_concatenation(
        t, target_column="full", columns=["first", "last"], separator=" ") is True
    passed(capsys)
    assert se.expect_column_equal_concatenation(t, "glued", ["first", "last"]) is False
    assert failed(capsys) == (
        "expect_column_equal_concatenation: column 'glued' differs from the concatenation of "
        "['first', 'last'] with separator '' in 2 rows of 4, e.g. (target != concatenation) "
        "[row 2: 'Grace-Hopper' != 'GraceHopper', row 3: 'Edsger Dijkstra' != 'EdsgerDijkstra']")


def test_equal_concatenation_casts_to_strings(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"year": [2024, 2025, 2026], "month": pa.array([1, 12, 7], pa.int8()),
                 "key": ["2024-1", "2025-12", "2026-07"], "number": [20241, 202512, 20267]})
    assert se.expect_column_equal_concatenation(t, "number", ["year", "month"]) is True
    passed(capsys)
    assert se.expect_column_equal_concatenation(t, "key", ["year", "month"], "-") is False
    assert failed(capsys).endswith(
        "in 1 row of 3, e.g. (target != concatenation) [row 2: '2026-07' != '2026-7']")


def test_equal_concatenation_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    # A null part makes the concatenation null: it matches a null target and nothing else.
    t = chunked({"a": ["x", None, "y", "z"], "b": ["1", "2", None, "3"],
                 "t": ["x1", None, "y", None]})
    assert se.expect_column_equal_concatenation(t.slice(0, 2), "t", ["a", "b"]) is True
    passed(capsys)
    assert se.expect_column_equal_concatenation(t, "t", ["a", "b"]) is False
    assert failed(capsys).endswith(
        "in 2 rows of 4, e.g. (target != concatenation) [row 2: 'y' != None, row 3: None != 'z3']")


def test_equal_concatenation_needs_columns() -> None:
    with pytest.raises(ValueError, match="columns must name at least one column"):
        se.expect_column_equal_concatenation(pa.table({"t": ["a"]}), "t", [])
    with pytest.raises(se.ColumnNotFoundError, match="column 'nope' is not in the table"):
        se.expect_column_equal_concatenation(pa.table({"t": ["a"]}), "t", ["t", "nope"])


# -- every expectation --------------------------------------------------------------------

CALLS: dict[str, Callable[[Any, str], bool]] = {
    "expect_column_no_nulls": se.expect_column_no_nulls,
    "expect_column_all_null": se.expect_column_all_null,
    "expect_column_some_null": se.expect_column_some_null,
    "expect_column_accepted_values": lambda t, c: se.expect_column_accepted_values(t, c, [1]),
    "expect_column_all_unique": se.expect_column_all_unique,
    "expect_column_not_unique": se.expect_column_not_unique,
    "expect_column_mean_greater_than":
        lambda t, c: se.expect_column_mean_greater_than(t, c, 0.0),
    "expect_column_mean_greater_or_equal_than":
        lambda t, c: se.expect_column_mean_greater_or_equal_than(t, c, 0.0),
    "expect_column_mean_smaller_than":
        lambda t, c: se.expect_column_mean_smaller_than(t, c, 0.0),
    "expect_column_mean_smaller_or_equal_than":
        lambda t, c: se.expect_column_mean_smaller_or_equal_than(t, c, 0.0),
    "expect_column_equal_concatenation":
        lambda t, c: se.expect_column_equal_concatenation(t, c, [c]),
}


def test_every_expectation_is_called_here() -> None:
    assert set(CALLS) == set(BAUPLAN_SIGNATURES)


@pytest.mark.parametrize("name", list(CALLS))
def test_unknown_column_is_an_error_naming_the_columns(name: str) -> None:
    t = pa.table({"a": [1], "b": [2]})
    with pytest.raises(KeyError) as info:
        CALLS[name](t, "nope")
    assert isinstance(info.value, se.ColumnNotFoundError)
    assert str(info.value) == "column 'nope' is not in the table; its columns: ['a', 'b']"


def test_a_column_named_twice_is_an_error() -> None:
    t = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(se.ColumnNotFoundError, match="column 'a' is in the table 2 times"):
        se.expect_column_no_nulls(t, "a")


EMPTY_RESULTS = {
    "expect_column_no_nulls": True,
    "expect_column_all_null": True,
    "expect_column_some_null": False,
    "expect_column_accepted_values": True,
    "expect_column_all_unique": True,
    "expect_column_not_unique": False,
    "expect_column_mean_greater_than": False,
    "expect_column_mean_greater_or_equal_than": False,
    "expect_column_mean_smaller_than": False,
    "expect_column_mean_smaller_or_equal_than": False,
    "expect_column_equal_concatenation": True,
}


@pytest.mark.parametrize("name", list(CALLS))
def test_empty_table(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    t = pa.table({"x": pa.array([], pa.int64())})
    assert CALLS[name](t, "x") is EMPTY_RESULTS[name]
    if EMPTY_RESULTS[name]:
        passed(capsys)
    else:
        assert failed(capsys).startswith(f"{name}: column 'x' has no ")


def test_last_failure_is_that_of_the_latest_call(capsys: pytest.CaptureFixture[str]) -> None:
    t = pa.table({"x": [1, None]})
    assert se.expect_column_no_nulls(t, "x") is False
    assert "column 'x' has 1 null row of 2" in (se.last_failure() or "")
    assert se.expect_column_some_null(t, "x") is True
    assert se.last_failure() is None
    with pytest.raises(KeyError):
        se.expect_column_no_nulls(t, "y")
    assert se.last_failure() is None
    capsys.readouterr()


def test_samples_are_short(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": [f"bad{i}" for i in range(20)] + ["w" * 100]})
    assert se.expect_column_accepted_values(t, "x", ["ok"]) is False
    assert failed(capsys).endswith("e.g. ['bad0', 'bad1', 'bad2', 'bad3', 'bad4']")
    assert se.expect_column_accepted_values(t.slice(20), "x", ["ok"]) is False
    message = failed(capsys)
    assert message.endswith("e.g. ['" + "w" * (se._VALUE_CHARS - 4) + "...]")
    nulls = chunked({"x": pa.array([None] * 50, pa.int64())})
    assert se.expect_column_no_nulls(nulls, "x") is False
    assert failed(capsys).endswith("has 50 null rows of 50, e.g. rows [0, 1, 2, 3, 4]")


# -- inputs -------------------------------------------------------------------------------


class ArrowStream:
    """Only the Arrow PyCapsule stream protocol, as a DuckDB relation or Polars frame has."""

    def __init__(self, table: pa.Table):
        self._table = table

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self._table.__arrow_c_stream__(requested_schema)


class ToArrow:
    def __init__(self, table: pa.Table):
        self._table = table

    def to_arrow(self) -> pa.Table:
        return self._table


def test_inputs_other_than_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    t = chunked({"x": [1, 2, None]})
    batch = pa.record_batch({"x": [1, 2, None]})
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches())
    for source in (batch, reader, ArrowStream(t), ToArrow(t)):
        assert se.expect_column_some_null(source, "x") is True, type(source).__name__
    for source in (batch, ArrowStream(t), ToArrow(t)):
        assert se.expect_column_no_nulls(source, "x") is False, type(source).__name__
        assert failed(capsys) == ("expect_column_no_nulls: column 'x' has 1 null row of 3, "
                                  "e.g. rows [2]")
