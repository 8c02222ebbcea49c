"""The static project reader (``read_project``): what it accepts and the problems it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

import faas
from faas.protocol.errors import PlanInvalid
from faas.scheduler.reader import read_project
from tests.unit.scheduler.planner_helpers import EXAMPLE, line_of, only, plan, read_problems, src

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- reading


def test_files_without_models_are_fine() -> None:
    files = {
        "helpers.py": "def shout(s):\n    return s.upper()\n",
        "models.py": src("""
            import faas

            @faas.model()
            def m(x=faas.Model("raw.t")):
                return x
            """),
        "README.md": "# not python",
        "notes.txt": "SELECT 1",
    }
    project = read_project(files)
    assert [m.name for m in project.models] == ["m"]
    assert project.name == "" and project.config == {}


def test_generate_py_alone_has_no_models() -> None:
    files = {"generate.py": (EXAMPLE / "generate.py").read_text(encoding="utf-8")}
    problems = read_problems(files)
    assert len(problems) == 1
    assert "defines no models" in problems[0]
    assert "@faas.model" in problems[0]


def test_empty_project_is_invalid() -> None:
    assert "defines no models" in read_problems({})[0]
    assert "defines no models" in read_problems({"faas_project.toml": "[project]\n"})[0]


def test_subdirectory_module_name() -> None:
    files = {"pkg/sub/models.py": "import faas\n@faas.model()\ndef m():\n    pass\n"}
    (m,) = read_project(files).models
    assert m.module == "pkg.sub.models"
    assert m.where == "pkg/sub/models.py:3"


def test_alternative_decorator_spellings() -> None:
    files = {"m.py": src("""
        from faas import Model, Parameter, model, python

        @python("3.12", pip={"duckdb": "1.1.3"})
        @model(name="renamed", materialize="append", columns=["a", "b"], memory="2GiB")
        def f(x=Model("t", ["a"], "a > 0"), *, year=Parameter("year")):
            return x
        """)}
    (m,) = read_project(files).models
    assert m.name == "renamed" and m.function == "f"
    assert m.materialize == "append"
    assert m.columns == ["a", "b"]
    assert m.memory == "2GiB"
    assert m.python == "3.12" and m.pip == {"duckdb": "1.1.3"}
    (i,) = m.inputs
    assert (i.param, i.name, i.columns, i.filter) == ("x", "t", ["a"], "a > 0")
    (prm,) = m.params
    assert (prm.param, prm.name) == ("year", "year")


def test_undecorated_functions_and_other_decorators_are_ignored() -> None:
    files = {"m.py": src("""
        import functools
        import faas

        def helper(x, y):
            return x

        @functools.lru_cache
        def cached(n):
            return n

        @faas.model()
        def m(t=faas.Model("raw.t")):
            return t
        """)}
    assert [m.name for m in read_project(files).models] == ["m"]


def test_reader_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    files = {
        "a.py": src(f"""
            import nonexistent_module_for_faas_tests
            import faas
            open({str(marker)!r}, "w").write("ran")
            raise SystemExit(3)

            @faas.model(materialize="replace")
            def a(t=faas.Model("raw.t")):
                raise RuntimeError("never called")
            """),
        "b.py": src("""
            import sys
            sys.exit(1)
            import os
            os._exit(1)

            import faas

            @faas.model()
            def b(a=faas.Model("a")):
                return a
            """),
    }
    project = read_project(files)
    assert sorted(m.name for m in project.models) == ["a", "b"]
    assert not marker.exists()
    p = plan(files, {"raw.t": ["x"]})
    assert p.order == ["a", "b"]


def test_async_model_is_a_problem() -> None:
    text = src("""
        import faas

        @faas.model()
        async def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"m.py": text})
    assert only(problems, "async").startswith(f"m.py:{line_of(text, 'async def')}:")


# --------------------------------------------------------------------------- reader problems


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("@faas.model(materialize=MODE)", "MODE"),
        ("@faas.model(name=NAME)", "NAME"),
        ("@faas.model(columns=cols())", "cols()"),
        ("@faas.model(memory=f'{GB}G')", "GB"),
        ("@faas.model(MODEL_NAME)", "MODEL_NAME"),
    ],
)
def test_non_literal_decorator_argument(line: str, needle: str) -> None:
    text = src(f"""
        import faas

        MODE = "replace"

        {line}
        def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"models.py": text})
    p = only(problems, "must be a literal")
    assert p.startswith(f"models.py:{line_of(text, line)}:")
    assert needle in p


@pytest.mark.parametrize(
    ("default", "needle"),
    [
        ('faas.Model(NAME)', "NAME"),
        ('faas.Model("t", columns=cols())', "cols()"),
        ('faas.Model("t", columns=["a", COL])', "COL"),
        ('faas.Model("t", filter="a > " + str(LIMIT))', "LIMIT"),
        ('faas.Parameter(PARAM)', "PARAM"),
    ],
)
def test_non_literal_input_argument(default: str, needle: str) -> None:
    text = src(f"""
        import faas

        @faas.model()
        def m(
            ok=faas.Model("raw.ok"),
            x={default},
        ):
            return x
        """)
    problems = read_problems({"models.py": text})
    p = only(problems, "must be a literal", needle)
    assert p.startswith(f"models.py:{line_of(text, 'x=')}:")


def test_non_literal_python_version() -> None:
    text = src("""
        import faas

        @faas.model()
        @faas.python(VERSION, pip=PINS)
        def m(t=faas.Model("raw.t")):
            return t
        """)
    problems = read_problems({"m.py": text})
    line = line_of(text, "@faas.python")
    assert len([p for p in problems if p.startswith(f"m.py:{line}:")]) == 2
    only(problems, "VERSION")
    only(problems, "PINS")


def test_syntax_error_names_file_and_line() -> None:
    files = {
        "good.py": "import faas\n@faas.model()\ndef g():\n    pass\n",
        "bad.py": "import faas\n\n\ndef broken(:\n    pass\n",
    }
    problems = read_problems(files)
    assert len(problems) == 1
    assert problems[0].startswith("bad.py:4: syntax error")


def test_indentation_error_is_a_syntax_error() -> None:
    problems = read_problems({"m.py": "import faas\nif True:\npass\n"})
    assert len(problems) == 1
    assert problems[0].startswith("m.py:3: syntax error")


def test_syntax_error_without_a_line_number() -> None:
    # ast.parse reports a NUL byte with lineno=None; the problem must still read file:line.
    problems = read_problems({"m.py": "import faas\x00\n"})
    assert len(problems) == 1
    assert problems[0].startswith("m.py:")
    assert "syntax error" in problems[0]
    assert "None" not in problems[0], problems[0]


def test_bad_toml_is_a_problem() -> None:
    files = {
        "faas_project.toml": "[project\nname = 'x'\n",
        "m.py": "import faas\n@faas.model()\ndef m():\n    pass\n",
    }
    problems = read_problems(files)
    assert only(problems, "faas_project.toml").startswith("faas_project.toml:")


def test_duplicate_model_names_name_both_places() -> None:
    files = {
        "a.py": src("""
            import faas

            @faas.model()
            def sales():
                pass
            """),
        "b.py": src("""
            import faas


            @faas.model(name="sales")
            def other_sales():
                pass
            """),
    }
    problems = read_problems(files)
    p = only(problems, "'sales'", "already defined")
    first = f"a.py:{line_of(files['a.py'], 'def sales')}"
    second = f"b.py:{line_of(files['b.py'], 'def other_sales')}"
    assert p.startswith(second + ":") and first in p


def test_duplicate_model_names_in_one_file() -> None:
    text = src("""
        import faas

        @faas.model()
        def m():
            pass

        @faas.model()
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "already defined")
    assert p.startswith(f"m.py:{line_of(text, 'def m', 2)}:")
    assert f"m.py:{line_of(text, 'def m', 1)}" in p


@pytest.mark.parametrize("value", ['"overwrite"', '"REPLACE"', "True", "1"])
def test_bad_materialize_value(value: str) -> None:
    text = src(f"""
        import faas

        @faas.model(materialize={value})
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "materialize")
    assert p.startswith(f"m.py:{line_of(text, '@faas.model')}:")
    assert "'replace'" in p and "'append'" in p
    assert value.strip('"') in p


def test_unknown_keyword_to_model_decorator() -> None:
    text = src("""
        import faas

        @faas.model(
            materialise="replace",
        )
        def m():
            pass
        """)
    p = only(read_problems({"m.py": text}), "materialise")
    assert p.startswith(f"m.py:{line_of(text, 'materialise=')}:")
    assert "faas.model" in p and "materialize" in p  # lists what it does take


def test_unknown_keyword_to_model_input() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model("raw.t", cols=["a"], where="a > 1")):
            pass
        """)
    problems = read_problems({"m.py": text})
    assert len(problems) == 2
    line = line_of(text, "cols=")
    for kw in ("'cols'", "'where'"):
        p = only(problems, kw)
        assert p.startswith(f"m.py:{line}:")
        assert "faas.Model" in p and "columns" in p and "filter" in p


def test_too_many_positional_arguments() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model("raw.t", ["a"], "a > 1", "extra")):
            pass
        """)
    p = only(read_problems({"m.py": text}), "too many arguments")
    assert p.startswith(f"m.py:{line_of(text, 'faas.Model')}:")


def test_model_input_without_a_name() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(t=faas.Model(""), u=faas.Model(columns=["a"])):
            pass
        """)
    problems = read_problems({"m.py": text})
    assert len([p for p in problems if "needs a table or model name" in p]) == 2


@pytest.mark.parametrize(
    "signature",
    [
        "t",                       # no default at all
        "t=None",                  # a default that is not faas.Model/Parameter
        't="raw.t"',               # a bare string instead of faas.Model("raw.t")
        "t=faas.Table('raw.t')",   # a call, but not one the planner knows
    ],
)
def test_parameter_without_model_or_parameter_default(signature: str) -> None:
    text = src(f"""
        import faas

        @faas.model()
        def m(
            ok=faas.Model("raw.ok"),
            *,
            {signature},
        ):
            pass
        """)
    p = only(read_problems({"m.py": text}), "'t'")
    assert p.startswith(f"m.py:{line_of(text, f'    {signature},')}:")
    assert "model 'm'" in p
    assert "faas.Model(...)" in p and "faas.Parameter(...)" in p


def test_positional_parameter_without_default() -> None:
    text = src("""
        import faas

        @faas.model()
        def m(first, second=faas.Model("raw.t")):
            pass
        """)
    p = only(read_problems({"m.py": text}), "'first'")
    assert p.startswith(f"m.py:{line_of(text, 'def m')}:")


def test_bare_decorator_is_consistent_with_the_sdk() -> None:
    # `@faas.model` without parentheses: the reader and the SDK must agree on it. Either the
    # reader reports it, or the SDK really makes a model of the function (today faas.model(fn)
    # returns the inner `wrap`, so the module attribute the worker calls is not the model).
    files = {"m.py": "import faas\n\n@faas.model\ndef m(t=faas.Model('raw.t')):\n    return t\n"}
    try:
        read_project(files)
    except PlanInvalid as exc:
        assert any(p.startswith("m.py:3:") for p in exc.problems), exc.problems
        return

    def m(t: object = None) -> object:
        return t

    wrapped = faas.model(m)  # type: ignore[arg-type]
    assert wrapped is m, "the reader accepts a bare @faas.model but the SDK replaces the function"
    assert wrapped("x") == "x"


# --------------------------------------------------------------------------- cores


def test_declared_cores_reach_the_plan_and_bad_ones_are_problems() -> None:
    good = src('''
        import faas

        @faas.model(cpus=4)
        def heavy(t=faas.Model("t")):
            return t
        ''')
    p = plan({"models.py": good}, {"ns.t": ["a"]})
    assert p.nodes["heavy"].spec.cpus == 4
    assert [n.cpus for n in p.describe() if n.name == "heavy"] == [4]
    for bad in ("0", "2.5", "True", "'4'"):
        text = good.replace("cpus=4", f"cpus={bad}")
        problem = only(read_problems({"models.py": text}), "cpus")
        assert problem == (
            f"models.py:{line_of(text, 'cpus=')}: cpus must be a whole number of cores "
            f"(1 or more), not {bad}"
        )


def test_a_sql_model_declares_cores_in_its_header() -> None:
    (spec,) = read_project({"m.sql": "-- faas: cpus=3\nSELECT * FROM t\n"}).models
    assert spec.name == "m" and spec.cpus == 3
    (problem,) = read_problems({"m.sql": "-- faas: cpus=lots\nSELECT * FROM t\n"})
    assert problem == "m.sql:1: cpus must be a whole number of cores (1 or more), not 'lots'"
