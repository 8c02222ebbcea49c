"""Planner problems: every mistake reported together, and malformed literals as one problem."""

from __future__ import annotations

import pytest

from faas.protocol.errors import PlanInvalid
from tests.unit.scheduler.planner_helpers import only, plan_problems, read_problems, src

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- all at once


def test_every_reader_mistake_reported_together() -> None:
    files = {
        "broken.py": "def f(:\n",
        "a.py": src("""
            import faas

            MODE = "replace"

            @faas.model(materialize=MODE)
            def a(t=faas.Model("raw.t", cols=["x"])):
                pass

            @faas.model(materialize="upsert")
            def b(t, u=faas.Model(NAME)):
                pass
            """),
        "b.py": src("""
            import faas

            @faas.model(name="a")
            def dup():
                pass
            """),
    }
    problems = read_problems(files)
    only(problems, "broken.py:1: syntax error")
    only(problems, "a.py:5:", "MODE")
    only(problems, "a.py:6:", "'cols'")
    only(problems, "a.py:9:", "'upsert'")
    only(problems, "a.py:10:", "'t'", "faas.Model(...)")
    assert any(p.startswith("a.py:10:") and "NAME" in p for p in problems)
    only(problems, "already defined", "a.py:6", "b.py:4")
    # one line per mistake; faas.Model(NAME) may add a second line ("needs a name")
    assert 7 <= len(problems) <= 8, problems


def test_every_planning_mistake_reported_together() -> None:
    text = src("""
        import faas

        @faas.model(columns=["id"])
        def up(t=faas.Model("missing_table")):
            pass

        @faas.model(materialize="replace")
        def down(
            u=faas.Model("up", columns=["id", "ghost"]),
            s=faas.Model("sale", columns=["amount", "phantom"]),
            year=faas.Parameter("year"),
        ):
            pass

        @faas.model()
        def loop1(x=faas.Model("loop2")):
            pass

        @faas.model()
        def loop2(x=faas.Model("loop1")):
            pass

        @faas.model(materialize="replace")
        def own(x=faas.Model("ns.own")):
            pass
        """)
    problems = plan_problems({"m.py": text}, {"ns.sale": ["amount"], "ns.own": ["x"]},
                             params={"stray": "1"})
    only(problems, "'missing_table'", "'ns.missing_table'")
    only(problems, "'ghost'")
    only(problems, "'phantom'", "'ns.sale'")
    only(problems, "--param year=VALUE")
    only(problems, "--param stray")
    only(problems, "cycle", "loop1", "loop2")
    only(problems, "also reads", "'ns.own'")
    assert len(problems) == 7, problems
    err = PlanInvalid(problems)
    assert str(err).startswith("7 problems in the project:")


# --------------------------------------------------------------------------- malformed literals


@pytest.mark.parametrize(
    ("files", "needle", "params"),
    [
        # literal, but of the wrong type: a problem at the decorator, not a TypeError
        ({"m.py": "import faas\n@faas.model(name=3)\ndef m():\n    pass\n"}, "m.py:2:", {}),
        # a string where a list of columns belongs: one problem, not one per character
        ({"m.py": "import faas\n@faas.model()\ndef m(t=faas.Model('t', columns='OrderDate')):\n"
                  "    pass\n"}, "m.py:3:", {}),
        # faas_project.toml tables of the wrong type: a problem naming the file, not a crash
        ({"m.py": "import faas\n@faas.model()\ndef m(y=faas.Parameter('y')):\n    pass\n",
          "faas_project.toml": "parameters = 3\n"}, "faas_project.toml", {"y": "1"}),
        ({"m.py": "import faas\n@faas.model()\ndef m():\n    pass\n",
          "faas_project.toml": "project = 'adventureworks'\n"}, "faas_project.toml", {}),
    ],
    ids=["model-name-int", "columns-string", "parameters-not-a-table", "project-not-a-table"],
)
def test_wrongly_typed_literal_is_one_problem(
    files: dict[str, str], needle: str, params: dict[str, str]
) -> None:
    problems = plan_problems(files, {"ns.t": ["OrderDate"]}, params=params)
    assert len(problems) == 1, problems
    assert needle in problems[0]


def test_two_models_cannot_write_the_same_table() -> None:
    # name="ns.x" and a model x in namespace ns both become table ns.x.
    text = src("""
        import faas

        @faas.model(name="ns.x", materialize="replace")
        def a():
            pass

        @faas.model(materialize="replace")
        def x():
            pass
        """)
    problems = plan_problems({"m.py": text})
    only(problems, "'ns.x'")
