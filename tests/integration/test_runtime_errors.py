"""Errors at run time, in the user's terms: the user's own frames with project-relative
``file:line``, and one final line naming the model and where it went wrong.

Real daemons; every project is run with ``faas submit`` as a subprocess, and each test
asserts the exact line a user reads, and that no faas frame or shared-memory path shows.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Cluster, import_territories, write_project

pytestmark = pytest.mark.timeout(300)


def _submit(c: Cluster, project: Path) -> subprocess.CompletedProcess[str]:
    return c.faas("submit", str(project), "-n", "adventure")


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    text = proc.stdout + proc.stderr
    assert "faasd/" not in text and "/dev/shm" not in text and "site-packages" not in text, text
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    return line


@pytest.fixture
def territories(cluster: Cluster, example_data: Path) -> Cluster:
    import_territories(cluster, example_data)
    return cluster


RAISES = '''\
import faas


@faas.model()
def boom(t=faas.Model("territories")):
    rows = t.to_pylist()
    return by_region(rows)


def by_region(rows):
    return {r["Region"]: r for r in rows}["Atlantis"]
'''


def test_a_model_that_raises_shows_only_its_own_frames(territories: Cluster, tmp_path: Path) -> None:
    proc = _submit(territories, write_project(tmp_path, RAISES))
    assert _error_line(proc) == "error: model 'boom' (models.py:11) raised KeyError: 'Atlantis'"
    assert textwrap.dedent('''\
        Traceback (most recent call last):
          File "models.py", line 7, in boom
            return by_region(rows)
          File "models.py", line 11, in by_region
            return {r["Region"]: r for r in rows}["Atlantis"]
        KeyError: 'Atlantis'
        ''') in proc.stderr


NONE = '''\
import faas


@faas.model()
def nothing(t=faas.Model("territories")):
    t.num_rows


@faas.expectation()
def vague(t=faas.Model("territories")):
    return t.num_rows
'''


def test_a_model_that_returns_none_is_told_what_was_expected(
    territories: Cluster, tmp_path: Path
) -> None:
    proc = _submit(territories, write_project(tmp_path, NONE))
    assert _error_line(proc) in (
        "error: model 'nothing' (models.py:5) returned None, expected a table (a pyarrow "
        "Table or RecordBatchReader, a DuckDB relation, a pandas or polars DataFrame, or a "
        "list of dicts)",
        "error: expectation 'vague' (models.py:10) returned int, expected True or False",
    )
    assert "Traceback" not in proc.stderr


WRONG_COLUMN = '''\
import faas


@faas.model()
def report(pricey=faas.Model("pricey", columns=["Regoin"])):
    return pricey
'''


def test_a_wrong_column_of_a_sql_model_is_found_before_anything_runs(
    territories: Cluster, tmp_path: Path
) -> None:
    project = write_project(tmp_path, WRONG_COLUMN)
    (project / "pricey.sql").write_text(
        "-- faas: materialize=replace\nSELECT SalesTerritoryKey, Region\nFROM territories\n"
    )
    proc = _submit(territories, project)
    assert _error_line(proc) == (
        "error: models.py:5: SQL model 'pricey' has no column 'Regoin' "
        "(it has: SalesTerritoryKey, Region)"
    )
    assert territories.json("job", "ls") == []  # nothing ran


AT_FIRST_READ = '''\
import faas


@faas.model()
def regions(t=faas.Model("territories")):
    return t.select(["Region"])


@faas.model()
def report(r=faas.Model("regions", columns=["Country"])):
    return r
'''


def test_a_wrong_column_of_a_python_model_is_said_in_one_line_at_first_read(
    territories: Cluster, tmp_path: Path
) -> None:
    proc = _submit(territories, write_project(tmp_path, AT_FIRST_READ))
    assert _error_line(proc) == (
        "error: model 'report' (models.py:10): input 'r' asks for column 'Country', which "
        "model 'regions' does not have (it has: Region)"
    )
    assert "Traceback" not in proc.stderr


def test_sql_errors_name_the_line_they_are_on(territories: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "sql"
    project.mkdir()
    # A syntax error on line 3: found when the project is read.
    (project / "broken.sql").write_text("-- faas: materialize=replace\nSELECT Region\nFORM territories\n")
    proc = _submit(territories, project)
    assert _error_line(proc) == (
        "error: broken.sql:3: Parser Error: syntax error at or near \"territories\""
    )
    # A column that is not there, on line 3: found when DuckDB binds it in the run.
    (project / "broken.sql").write_text(
        "-- faas: materialize=replace\nSELECT SalesTerritoryKey,\n  Regoin\nFROM territories\n"
    )
    proc = _submit(territories, project)
    line = _error_line(proc)
    assert line.startswith("error: SQL model 'broken' (broken.sql:3): Binder Error: "), line
    assert '"Regoin"' in line


def test_a_wrong_ref_fails_even_when_the_sql_reads_no_table(territories: Cluster) -> None:
    proc = territories.faas("query", "select 1 AS one", "--ref", "mian")
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and "'mian'" in line, line
    assert territories.json("query", "select 1 AS one", "--ref", "main") == [{"one": 1}]
