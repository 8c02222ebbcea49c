"""SQL models, typed parameters and plan-time checks, without a cluster."""

from __future__ import annotations

import pyarrow as pa
import pytest

from faas.protocol.errors import PlanInvalid
from faas.scheduler.dag import SourceTable, build_plan
from faas.scheduler.reader import read_project

TOML = """
[parameters.limit]
type = "int"
default = 10

[parameters.flag]
type = "bool"
default = false

[parameters.ratio]
type = "float"
required = true
"""


def lookup(key: str) -> SourceTable | None:
    if key != "ns.t":
        return None
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    return SourceTable(key=key, metadata_location="file:///m.json", snapshot_id=1, schema=schema)


def plan(files: dict[str, str], params: dict[str, str] | None = None, versions: set[str] | None = None):  # type: ignore[no-untyped-def]
    return build_plan(read_project(files, partial=True), "ns", "main", params or {}, lookup, python_versions=versions)


def problems(files: dict[str, str], params: dict[str, str] | None = None, versions: set[str] | None = None) -> list[str]:
    with pytest.raises(PlanInvalid) as info:
        plan(files, params, versions)
    return info.value.problems


def test_sql_model_inputs_options_and_parameters() -> None:
    sql = "-- faas: materialize=append memory=2GiB\nSELECT a FROM t WHERE a < $limit AND $flag\n"
    p = plan({"faas_project.toml": TOML, "q.sql": sql}, {"ratio": "0.5"})
    node = p.nodes["q"]
    assert node.spec.kind == "sql" and node.spec.materialize == "append" and node.spec.memory == "2GiB"
    assert [i.key for i in node.inputs] == ["ns.t"]  # type: ignore[union-attr]
    assert node.params == {"limit": 10, "flag": False}  # typed from the TOML defaults


def test_sql_model_reading_another_model() -> None:
    files = {"a.sql": "SELECT a FROM t", "b.sql": "WITH x AS (SELECT * FROM a) SELECT * FROM x"}
    p = plan(files)
    assert p.order == ["a", "b"] and p.nodes["b"].deps == ["a"]


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("SELEC a FROM t", "q.sql:1:"),
        ("-- faas: materialise=replace\nSELECT a FROM t", "unknown option 'materialise=replace'"),
        ("-- faas: materialize=sometimes\nSELECT a FROM t", "materialize must be replace, append, overwrite_partitions or none"),
        ("SELECT a FROM t WHERE a > ?", "named parameters"),
        ("DELETE FROM t", "only SELECT"),
        ("SELECT a FROM nope", "'nope'"),
    ],
)
def test_sql_model_mistakes(sql: str, needle: str) -> None:
    found = problems({"q.sql": sql})
    assert any(needle in p for p in found), found


def test_sql_file_name_must_be_an_identifier() -> None:
    assert any("must be an identifier" in p for p in problems({"my-query.sql": "SELECT a FROM t"}))


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ({"ratio": "half"}, "--param ratio: parameter 'ratio' is float: 'half' is not one"),
        ({"ratio": "1", "flag": "maybe"}, "use true or false"),
        ({}, "parameter 'ratio' is required: pass --param ratio=VALUE"),
        ({"ratio": "1", "other": "x"}, "the project has no parameter 'other'"),
    ],
)
def test_typed_parameter_mistakes(given: dict[str, str], needle: str) -> None:
    files = {"faas_project.toml": TOML, "q.sql": "SELECT a FROM t WHERE a < $limit AND $ratio > 0"}
    assert any(needle in p for p in problems(files, given)), problems(files, given)


def test_typed_parameter_values_reach_python_models() -> None:
    files = {
        "faas_project.toml": TOML,
        "m.py": "import faas\n@faas.model()\ndef m(t=faas.Model('t'), n=faas.Parameter('limit'),"
                " r=faas.Parameter('ratio'), f=faas.Parameter('flag')):\n    return t\n",
    }
    assert plan(files, {"ratio": "2.5", "flag": "yes", "limit": "3"}).nodes["m"].params == {
        "n": 3, "r": 2.5, "f": True,
    }


@pytest.mark.parametrize(
    ("filter_", "needle"),
    [
        ("a >", "syntax error"),
        ("zz = 1", "unknown column 'zz'"),
        ("a = 'text'", "bad filter"),
    ],
)
def test_scan_filters_are_checked_against_the_table(filter_: str, needle: str) -> None:
    files = {"m.py": f"import faas\n@faas.model()\ndef m(t=faas.Model('t', filter={filter_!r})):\n    return t\n"}
    found = problems(files)
    assert len(found) == 1 and needle in found[0] and found[0].startswith("m.py:3:")


def test_filters_on_models_must_parse_and_read_nothing_else() -> None:
    files = {
        "m.py": "import faas\n@faas.model()\ndef up(t=faas.Model('t')):\n    return t\n"
                "@faas.model()\ndef a(u=faas.Model('up', filter='a >')):\n    return u\n"
                "@faas.model()\ndef b(u=faas.Model('up', filter='a IN (SELECT a FROM secrets)')):\n"
                "    return u\n",
    }
    found = problems(files)
    assert any("m.py:6:" in p and "bad filter" in p for p in found), found
    assert any("m.py:9:" in p and "may not read other tables" in p for p in found), found


def test_python_version_must_be_offered_by_a_worker() -> None:
    files = {"m.py": "import faas\n@faas.model()\n@faas.python('3.9')\ndef m(t=faas.Model('t')):\n    return t\n"}
    found = problems(files, versions={"3.11", "3.12"})
    assert found == ["m.py:4: model 'm' asks for Python 3.9, which no worker offers (workers have: 3.11, 3.12)"]
    assert plan(files, versions=None).nodes["m"].spec.python == "3.9"  # no workers known: not checked


def test_expectations_read_inputs_and_cannot_be_inputs() -> None:
    files = {
        "m.py": "import faas\n@faas.model()\ndef up(t=faas.Model('t')):\n    return t\n"
                "@faas.expectation()\ndef check(u=faas.Model('up')):\n    return True\n"
                "@faas.model()\ndef down(c=faas.Model('check')):\n    return c\n",
    }
    found = problems(files)
    assert any("reads 'check', which is neither a model" in p for p in found), found
    ok = {"m.py": files["m.py"].split("@faas.model()\ndef down")[0]}
    p = plan(ok)
    assert p.nodes["check"].spec.is_expectation and p.nodes["check"].deps == ["up"]


def test_project_defaults_for_python_and_packages() -> None:
    toml = '[project]\nname = "x"\npython = "3.12"\n\n[project.pip]\nsix = "1.16.0"\nidna = "3.7"\n'
    files = {
        "faas_project.toml": toml,
        "m.py": "import faas\n@faas.model()\ndef plain(t=faas.Model('t')):\n    return t\n"
                "@faas.model()\n@faas.python('3.11', pip={'six': '1.17.0'})\n"
                "def own(t=faas.Model('t')):\n    return t\n",
        "q.sql": "SELECT a FROM t",
    }
    p = plan(files)
    assert (p.nodes["plain"].spec.python, p.nodes["plain"].spec.pip) == ("3.12", {"six": "1.16.0", "idna": "3.7"})
    assert (p.nodes["own"].spec.python, p.nodes["own"].spec.pip) == ("3.11", {"six": "1.17.0", "idna": "3.7"})
    assert p.nodes["q"].spec.python is None  # SQL models run in the worker's own environment


def test_reading_and_planning_problems_come_together() -> None:
    files = {
        "a.py": "import faas\n@faas.model(materialize=M)\ndef a(t=faas.Model('nope')):\n    return t\n",
        "b.py": "def broken(:\n",
    }
    found = problems(files)
    assert any(p.startswith("a.py:2:") and "literal" in p for p in found), found
    assert any(p.startswith("b.py:1: syntax error") for p in found), found
    assert any("reads 'nope'" in p for p in found), found
