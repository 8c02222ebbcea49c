"""What a data engineer would write instead of the example pipeline: one DuckDB process.

It reads the source tables' Parquet files (the same files faas reads, found from
their Iceberg snapshots), runs the three models' SQL — taken from
``examples/adventureworks/models.py`` itself, so both sides run the same
queries — and writes three zstd Parquet files.

    python -m bench.baseline SPEC.json     # the timed process

SPEC.json: ``{"files": {table: [parquet paths]}, "out": DIR, "threads": N|null}``.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "adventureworks"
MODELS = ("dim_product", "dim_country", "fact_sale")


def model_sql(models: Path = EXAMPLE / "models.py") -> dict[str, str]:
    """Each model's query: the string literal its body passes to ``con.sql``."""
    found: dict[str, str] = {}
    for fn in ast.parse(models.read_text()).body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "sql" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found[fn.name] = str(node.args[0].value)
    return found


def source_files(metadata_location: str) -> list[str]:
    """The Parquet files of a table's current snapshot."""
    from pyiceberg.table import StaticTable

    table = StaticTable.from_metadata(metadata_location)
    return [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]


def run(spec: dict[str, Any]) -> None:
    import duckdb

    con = duckdb.connect()
    if spec.get("threads"):
        con.execute(f"SET threads = {int(spec['threads'])}")
    for table, files in spec["files"].items():
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files!r})")
    sql = model_sql()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    parquet = "(FORMAT parquet, COMPRESSION zstd)"
    for name in MODELS[:-1]:  # the dimensions: fact_sale joins them
        con.execute(f"CREATE TABLE {name} AS {sql[name]}")
        con.execute(f"COPY {name} TO '{out / name}.parquet' {parquet}")
    # The fact table streams from the query into its file, never held whole.
    con.execute(f"COPY ({sql[MODELS[-1]]}) TO '{out / MODELS[-1]}.parquet' {parquet}")


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
