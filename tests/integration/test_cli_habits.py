"""The CLI's habits, as git and gh have them: -h everywhere, --version, help for every
option in one style, git's diff direction, a no-op that exits 0, JSON nulls, events in
the order things happened, expectations that read as passed or failed.

Help and option checks walk the real command trees in-process; the rest runs real
daemons and the ``faas`` CLI as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer
from click.testing import CliRunner

from faas.client.cli import app, main  # noqa: F401  (main registers every command group)
from faas.faasd.__main__ import _parser
from faas.protocol.version import VERSION
from tests.conftest import ROOT, Cluster, import_example, write_project

pytestmark = pytest.mark.timeout(300)


def _faas_tree() -> click.Command:
    import faas.client.cli_jobs  # noqa: F401
    import faas.client.cli_local  # noqa: F401
    import faas.client.cli_refs  # noqa: F401

    return typer.main.get_command(app)


def _commands(c: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    yield path, c
    if isinstance(c, click.Group):
        for name, sub in c.commands.items():
            yield from _commands(sub, [*path, name])


def test_every_faas_command_takes_h_and_documents_every_option() -> None:
    runner = CliRunner()
    seen = 0
    for path, command in _commands(_faas_tree(), []):
        result = runner.invoke(_faas_tree(), [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and "-h" in result.output, path
        assert command.help, f"faas {' '.join(path)} has no help"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"faas {' '.join(path)} {param.opts[0]} has no help"
                # Flags take no value: no <bool> metavar to misread.
                if param.is_flag:
                    assert "BOOL" not in result.output.upper().replace("BOOLEAN", ""), path
        seen += 1
    assert seen > 30


def test_a_command_is_built_alone_and_the_same_as_in_the_whole_tree() -> None:
    """`faas X ...` builds click's command for X alone (typer builds every command it
    holds); X's tree is the one the whole app has, found past faas's own options, and a
    line that names no command, or an unknown one, gets the whole app."""
    from faas.client.cli import _command_name, _only

    def shape(c: click.Command) -> object:
        sub = sorted((n, shape(s)) for n, s in c.commands.items()) if isinstance(c, click.Group) else []
        return (c.help, [(p.name, p.opts, getattr(p, "help", None)) for p in c.params], sub)

    whole = _faas_tree()
    assert isinstance(whole, click.Group)
    for name, command in whole.commands.items():
        for argv in ([name, "--json"], ["--cluster", "h:1", "--home=/x", name], ["--version", name]):
            assert _command_name(argv) == name
            alone = typer.main.get_command(_only(name))
            assert isinstance(alone, click.Group) and list(alone.commands) == [name], argv
            assert shape(alone.commands[name]) == shape(command), name
    assert _command_name(["--cluster", "submit"]) is None  # submit is the address there
    assert _command_name(["--", "submit"]) is None
    assert _only(None) is app and _only("nosuch") is app


def test_every_faasd_option_is_documented_in_one_style() -> None:
    parser, roles = _parser()
    for name, p in [("faasd", parser), *roles.items()]:
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            # One style: lower-case phrases, as faas's options have them (or a name in
            # capitals: HOST:PORT, S3, DEBUG).
            assert not action.help[0].isupper() or re.match(r"[A-Z][A-Z0-9_]+\b", action.help), (
                action.help
            )


def test_version_of_both_commands() -> None:
    for module, name in (("faas.client.cli", "faas"), ("faas.faasd", "faasd")):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{name} {VERSION}"
    proc = subprocess.run([sys.executable, "-m", "faas.client.cli", "-h"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Commands" in proc.stdout


CHECKED = '''
import faas


@faas.expectation()
def has_rows(fact_sale=faas.Model("fact_sale")):
    return fact_sale.num_rows > 0


@faas.expectation()
def impossible(fact_sale=faas.Model("fact_sale")):
    return fact_sale.num_rows < 0
'''


def test_events_come_in_causal_order_and_expectations_read_passed_or_failed(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_example(cluster, example_data)
    project = write_project(tmp_path, CHECKED)
    example = ROOT / "examples" / "adventureworks"
    (project / "models.py").write_text((example / "models.py").read_text())
    (project / "checks.py").write_text(CHECKED)
    (project / "faas_project.toml").write_text((example / "faas_project.toml").read_text())
    proc = cluster.faas("submit", str(project), "-n", "adventure", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()

    def at(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, (pattern, proc.stderr)
        return found[0]

    # fact_sale may start while the dimensions are made (it scans sale meanwhile), but it
    # finishes only after their rows are ready: that is said first.
    assert at(r"dim_product: ready \(\d+ rows") < at(r"fact_sale: done")
    assert at(r"dim_country: (ready|done)") < at(r"fact_sale: done")
    assert at(r"has_rows: passed$") > at(r"fact_sale: (ready|done)")
    assert at(r"impossible: failed$") > 0
    assert not [line for line in lines if re.search(r"(has_rows|impossible): done", line)]
    run_id = re.search(r"run (run-\S+)", proc.stdout + proc.stderr)
    assert run_id is not None
    job = cluster.json("job", "get", run_id.group(1))
    assert job["nodes"]["has_rows"]["state"] == "passed"
    assert job["nodes"]["impossible"]["state"] == "failed"
    text = cluster.faas("job", "get", run_id.group(1), check=True).stdout
    assert "has_rows: passed" in text and "impossible: failed" in text
    replayed = cluster.faas("job", "logs", run_id.group(1), check=True).stdout
    assert re.search(r"has_rows: passed$", replayed, re.MULTILINE), replayed
    assert re.search(r"impossible: failed$", replayed, re.MULTILINE), replayed


def test_no_op_revert_exits_zero_and_json_has_nulls(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_example(cluster, example_data)
    cluster.faas("tag", "create", "v1", check=True)
    proc = cluster.faas("table", "revert", "adventure.sale", "--to", "v1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "adventure.sale on main is already as at v1: nothing to revert"
    out = cluster.json("table", "revert", "adventure.sale", "--to", "v1", "--json")
    assert out["changed"] is False and out["commit"] == cluster.json("log", "-n", "1")[0]["hash"]

    example = ROOT / "examples" / "adventureworks"
    first = json.loads(cluster.faas("submit", str(example), "-n", "adventure", "--json",
                                    check=True).stdout)
    assert first["commit"] and first["error"] is None
    again = json.loads(cluster.faas("submit", str(example), "-n", "adventure", "--json",
                                    check=True).stdout)
    assert again["commit"] is None and again["tables"] == []  # nothing to publish
    job = cluster.json("job", "get", again["run_id"])
    assert job["commit"] is None and job["branch"] is None and job["error"] is None
    for node in job["nodes"].values():
        assert node["error"] is None, node
        assert "" not in node.values(), node


def test_a_hint_names_an_option_that_exists(cluster: Cluster, tmp_path: Path) -> None:
    """The importer's hint for a file whose suffix says nothing names --format, which
    faas table import has."""
    data = tmp_path / "prices.txt"
    data.write_text("product,price\nbolt,0.25\nnut,0.1\n")
    cluster.faas("namespace", "create", "shop", check=True)
    proc = cluster.faas("table", "import", "shop.prices", str(data))
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: cannot tell the format of ") and "--format csv" in line, line
    out = cluster.json("table", "import", "shop.prices", str(data), "--format", "csv", "--json")
    assert out["rows"] == 2
    bad = cluster.faas("table", "import", "shop.prices", str(data), "--format", "xls")
    assert bad.returncode != 0 and "--format" in bad.stderr
