"""What a model may return, and how the function process turns it into Arrow."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from faasd.runner import to_arrow


def test_arrow_table_passes_through() -> None:
    t = pa.table({"a": [1, 2]})
    assert to_arrow(t, "m") is t


def test_list_of_dicts() -> None:
    got = to_arrow([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], "m")
    assert got.to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_record_batch_and_reader() -> None:
    t = pa.table({"a": [1, 2, 3]})
    assert to_arrow(t.to_batches()[0], "m").equals(t)
    assert to_arrow(pa.RecordBatchReader.from_batches(t.schema, t.to_batches()), "m").equals(t)


def test_duckdb_relation() -> None:
    with duckdb.connect() as con:
        rel = con.sql("SELECT 1 AS a UNION ALL SELECT 2 ORDER BY a")
        assert to_arrow(rel, "m").column("a").to_pylist() == [1, 2]


def test_anything_else_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="model 'm' returned int; return a pyarrow Table"):
        to_arrow(42, "m")
