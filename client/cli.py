"""The ``faas`` command line: runs, queries, tables, namespaces.

Branch, tag and history commands live in :mod:`client.cli_refs`.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from faas.client.cli_common import (
    REF_HELP,
    app,
    err,
    fail,
    json_flag,
    namespace_app,
    parse_params,
    print_json,
    ref_or_active,
    run,
    table_app,
)
from faas.client.client import Client
from faas.client.progress import view_for
from faas.protocol.errors import AlreadyExists, FaasError
from faas.protocol.messages import LogLine, RunFinished, TaskEvent
from faas.protocol.replies import PlannedNode


@app.command()
def submit(
    project: Path = typer.Argument(Path("."), help="project directory"),
    namespace: str = typer.Option(..., "--namespace", "-n", help="namespace of inputs and outputs"),
    ref: str | None = typer.Option(None, "--ref", help="branch to read from and publish to (default: the active branch)"),
    param: list[str] = typer.Option([], "--param", "-p", help="run parameter NAME=VALUE"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    strict: bool = typer.Option(False, "--strict", help="a failing expectation, or a column a model does not declare, fails the run"),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="run every function, reusing no cached output or column"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    detach: bool = typer.Option(
        False, "--detach", "-d",
        help="print the run id and return; the run goes on (faas job logs RUN_ID --follow)",
    ),
) -> None:
    """Run a pipeline project and publish its outputs (unchanged functions come from the cache)."""
    _run_project(project, namespace, ref_or_active(ref), parse_params(param), dry_run=dry_run,
                 strict=strict, no_cache=no_cache, as_json=as_json, detach=detach)


@app.command("run")
def bauplan_run(
    project_dir: Path = typer.Option(Path("."), "--project-dir", "-p", help="project directory"),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n",
        help="namespace of inputs and outputs (default: bauplan_project.yml's "
             "defaults.namespace, else 'bauplan', as in Bauplan)",
    ),
    ref: str | None = typer.Option(None, "--ref", "-r", help="branch to read from and publish to (default: the active branch)"),
    param: list[str] = typer.Option([], "--param", help="run parameter NAME=VALUE"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    strict: bool = typer.Option(False, "--strict/--no-strict", help="a failing expectation, or a column a model does not declare, fails the run"),
    no_cache: bool = typer.Option(False, "--no-cache", help="run every function afresh"),
    cache: str | None = typer.Option(None, "--cache", help="on or off (Bauplan's older flag)"),
    transaction: str | None = typer.Option(
        None, "--transaction", "-t", help="on (faas runs are always transactions)"
    ),
    no_transaction: bool = typer.Option(False, "--no-transaction", hidden=True, help="refused: faas runs are always transactions"),
    preview: str | None = typer.Option(None, "--preview", help="accepted for Bauplan's CLI; faas shows no previews"),
    arg: list[str] = typer.Option([], "--arg", "-a", help="accepted for Bauplan's CLI; ignored"),
    priority: int | None = typer.Option(None, "--priority", help="accepted for Bauplan's CLI; ignored"),
    as_json: bool = json_flag(),
    detach: bool = typer.Option(
        False, "--detach", "-d",
        help="print the run id and return; the run goes on (faas job logs RUN_ID --follow)",
    ),
) -> None:
    """Run a project the way Bauplan's `bauplan run` does (bauplan_project.yml and
    @bauplan decorators, or faas's own): its flags, its default namespace."""
    if cache not in (None, "on", "off"):
        raise typer.BadParameter("must be on or off", param_hint="--cache")
    if no_transaction or transaction == "off":
        fail("faas runs are always transactions: their outputs publish together or not at "
             "all (drop --no-transaction)")
    _run_project(project_dir, namespace or _default_namespace(project_dir), ref_or_active(ref),
                 parse_params(param), dry_run=dry_run, strict=strict,
                 no_cache=no_cache or cache == "off", as_json=as_json, detach=detach)


def _default_namespace(project: Path) -> str:
    """A Bauplan project's namespace when none is given: its defaults.namespace, else
    Bauplan's own default, 'bauplan'."""
    for name in ("bauplan_project.yml", "bauplan_project.yaml"):
        path = project / name
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                found = (data.get("defaults") or {}).get("namespace")
            except (yaml.YAMLError, AttributeError, OSError):
                found = None  # the run says what is wrong with the file
            return str(found) if found else "bauplan"
    return "bauplan"


def _run_project(
    project: Path, namespace: str, ref: str, params: dict[str, str], *, dry_run: bool,
    strict: bool, no_cache: bool, as_json: bool, detach: bool,
) -> None:
    async def work(c: Client) -> RunFinished | list[PlannedNode] | str:
        if dry_run:
            return await c.plan(project, namespace=namespace, ref=ref, params=params)
        submitted = await c.submit(
            project, namespace=namespace, ref=ref, params=params, strict=strict,
            no_cache=no_cache, detach=detach,
        )
        if detach:
            return submitted.run_id
        logs: list[dict[str, Any]] = []
        cached: list[str] = []
        if not as_json:
            err(f"run {submitted.run_id}: {len(submitted.nodes)} models")
        view = nullcontext() if as_json else view_for(submitted.run_id, submitted.nodes)
        with view:
            async for ev in submitted:
                if isinstance(ev, LogLine):
                    logs.append({"node": ev.node, "stream": ev.stream, "line": ev.line})
                if isinstance(ev, TaskEvent) and ev.cached:
                    cached.append(ev.node)
                if not as_json:
                    view.update(ev)  # type: ignore[union-attr]
        result = await submitted.result()
        if as_json:
            out = {
                "run_id": result.run_id, "status": result.status, "commit": result.commit or None,
                "tables": result.tables, "seconds": round(result.seconds, 3), "logs": logs,
                "cached": cached,
                "error": None if result.error is None else
                {"kind": result.error.kind, "message": result.error.message, "detail": result.error.detail},
            }
            print_json(out)
        elif cached:
            err(f"from cache: {', '.join(cached)}")
        if result.status != "success":
            if result.branch and not as_json:
                err(f"nothing was published; the run's outputs so far are on branch {result.branch}")
            await submitted.wait()  # raises the run's error
        return result

    result = run(work)
    if detach and not dry_run:
        if as_json:
            print_json({"run_id": result, "status": "running"})
        else:
            typer.echo(result)
            err(f"run {result} goes on in the background: faas job logs {result} --follow")
        return
    if dry_run:
        if as_json:
            print_json(result)
        else:
            print_plan(result, ref, namespace)  # type: ignore[arg-type]
        return
    if not as_json:
        assert isinstance(result, RunFinished)
        typer.echo(
            f"run {result.run_id} succeeded in {result.seconds:.2f}s"
            + (f"; committed {', '.join(result.tables)} at {result.commit[:12]}" if result.commit
               else "; every output was already published")
        )


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over the lakehouse tables"),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="namespace for bare names"),
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    as_json: bool = json_flag(),
    limit: int = typer.Option(50, "--limit", help="rows to print (tables only)"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="stop the query after this many seconds (default: the "
        "scheduler's, 300)", min=0.001,
    ),
) -> None:
    """Run SQL over the tables at a ref."""
    ref = ref_or_active(ref)
    table = run(lambda c: c.query(sql, namespace=namespace, ref=ref, timeout=timeout))
    if as_json:
        print_json(table.to_pylist())
        return
    _print_table(table, limit)


def print_plan(nodes: list[PlannedNode], ref: str, namespace: str) -> None:
    """The plan as text: the DAG by levels, then each node with what it reads and writes."""
    typer.echo(f"plan at {ref}, namespace {namespace}: {len(nodes)} nodes (nothing was run)")
    levels: dict[int, list[str]] = {}
    for n in nodes:
        levels.setdefault(n.level, []).append(n.name)
    for level, names in sorted(levels.items()):
        typer.echo(f"  {'    ' * level}{'└─ ' if level else ''}{', '.join(names)}")
    for n in nodes:
        env = f"python {n.python or 'default'}" + (
            f" + {', '.join(f'{k}=={v}' for k, v in n.pip.items())}" if n.pip else ""
        )
        out = "expectation" if n.kind == "expectation" else (
            f"-> {n.output} ({n.materialize or 'in memory only'})"
        )
        net = ", internet access" if n.internet_access else ""
        typer.echo(f"\n{n.name} [{n.kind}, {env}{net}] {out}   {n.where}")
        for i in n.inputs:
            what = f"table {i.from_}@{i.snapshot_id}" if i.source == "table" else f"model {i.from_}"
            cols = ", ".join(i.columns) if i.columns else "all columns"
            filt = f" where {i.filter}" if i.filter else ""
            typer.echo(f"    {i.param} <- {what}: {cols}{filt}")
        for name, value in n.params.items():
            typer.echo(f"    {name} = {value!r}")


def _print_table(table: Any, limit: int) -> None:
    names = table.column_names
    rows = table.slice(0, limit).to_pylist()
    cells = [[str(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    typer.echo("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for c in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    if table.num_rows > limit:
        typer.echo(f"... {table.num_rows - limit} more rows")


@table_app.command("ls")
def table_ls(
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="only the tables of this namespace"),
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """List tables."""
    ref = ref_or_active(ref)
    tables = run(lambda c: c.tables(namespace, ref))
    if as_json:
        print_json(tables)
    else:
        for t in tables:
            typer.echo(t)


@table_app.command("get")
def table_get(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE"),
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """Show a table: schema, rows, snapshot and Iceberg metadata location."""
    ref = ref_or_active(ref)
    info = run(lambda c: c.table(key, ref))
    if as_json:
        print_json(info)
        return
    typer.echo(f"{info.key}: {info.rows} rows, {info.files} files, {info.bytes} bytes")
    typer.echo(f"snapshot {info.snapshot_id}\nmetadata {info.metadata_location}")
    if info.partitioned_by:
        typer.echo(f"partitioned by {info.partitioned_by}")
    for f in info.schema:
        typer.echo(f"  {f.name}: {f.type}")


def _table_and_files(key: str | None, name: str | None, namespace: str | None,
                     paths: list[str] | None, search_uri: list[str] | None) -> tuple[str, list[str]]:
    """The table and files of an import or create, given as faas writes them (KEY FILES...)
    or as Bauplan does (--name NS.T --search-uri URI, --namespace for a bare name)."""
    if key and name and key != name:
        fail(f"the table is named twice: {key!r} and --name {name!r}")
    table = key or name
    if not table:
        fail("name the table: faas table import NAMESPACE.TABLE FILES... (or --name)")
    if "." not in table and namespace:
        table = f"{namespace}.{table}"
    files = list(paths or []) + list(search_uri or [])
    if not files:
        fail(f"name the files to read for {table}: paths or globs after the table, or "
             "--search-uri")
    return table, files


PARTITIONED_BY_HELP = ('the table\'s partitions: "day(order_date), country" (a column, or '
                       "year, month, day, hour, bucket(N, c), truncate(N, c) of one)")


@table_app.command("import")
def table_import(
    key: str | None = typer.Argument(None, help="NAMESPACE.TABLE to create or replace"),
    paths: list[str] | None = typer.Argument(None, help="CSV or Parquet files or globs"),
    name: str | None = typer.Option(None, "--name", help="the table, as Bauplan's CLI names it"),
    search_uri: list[str] | None = typer.Option(
        None, "--search-uri", help="files or globs (local, or s3://...), as Bauplan's CLI takes them"
    ),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="namespace of a bare table name"),
    ref: str | None = typer.Option(None, "--ref", "--branch", "-b", help=REF_HELP),
    mode: str = typer.Option("replace", "--mode", help="replace or append"),
    format: str | None = typer.Option(
        None, "--format", help="csv, tsv or parquet, for files whose suffix does not say"
    ),
    partitioned_by: str = typer.Option(
        "", "--partitioned-by", help=PARTITIONED_BY_HELP + " (default: the table's own)"
    ),
    plan: Path | None = typer.Option(
        None, "--plan", help="write the import plan for these files to this TOML file "
        "(types seen, files, the type each column gets) and import nothing",
    ),
    apply: Path | None = typer.Option(
        None, "--apply", help="import following this (edited) plan: files that disagree "
        "are read with its types, and its fills",
    ),
    as_json: bool = json_flag(),
) -> None:
    """Import CSV or Parquet files as a table (schema inferred)."""
    from faas.client.import_plan import read_plan, write_plan

    table, files = _table_and_files(key, name, namespace, paths, search_uri)
    ref = ref_or_active(ref)
    if mode not in ("replace", "append"):
        raise typer.BadParameter("must be 'replace' or 'append'", param_hint="--mode")
    if format is not None and format not in ("csv", "tsv", "parquet"):
        raise typer.BadParameter("must be csv, tsv or parquet", param_hint="--format")
    if plan is not None and apply is not None:
        raise typer.BadParameter("write a plan or apply one, not both", param_hint="--plan")
    if plan is not None:
        proposed = run(lambda c: c.plan_import(table, files, ref=ref, format=format))
        write_plan(proposed, plan)
        if as_json:
            print_json(proposed)
        else:
            typer.echo(f"wrote the plan for {table} ({len(proposed.columns)} columns, "
                       f"{len(proposed.files)} files) to {plan}: edit it, then --apply {plan}")
        return
    try:
        columns = read_plan(apply) if apply is not None else None
    except FaasError as exc:
        fail(str(exc))
    info = run(lambda c: c.import_table(table, files, ref=ref, mode=mode, format=format,
                                        plan=columns, partitioned_by=partitioned_by))
    if as_json:
        print_json(info)
    else:
        typer.echo(f"imported {info.key}: {info.rows} rows")


@table_app.command("create")
def table_create(
    key: str | None = typer.Argument(None, help="NAMESPACE.TABLE to create"),
    name: str | None = typer.Option(None, "--name", help="the table, as Bauplan's CLI names it"),
    search_uri: list[str] | None = typer.Option(
        None, "--search-uri", help="files or globs whose schema the table takes"
    ),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="namespace of a bare table name"),
    ref: str | None = typer.Option(None, "--ref", "--branch", "-b", help=REF_HELP),
    format: str | None = typer.Option(
        None, "--format", help="csv, tsv or parquet, for files whose suffix does not say"
    ),
    partitioned_by: str = typer.Option("", "--partitioned-by", help=PARTITIONED_BY_HELP),
    as_json: bool = json_flag(),
) -> None:
    """Create an empty table with the schema of CSV or Parquet files (then faas table import)."""
    table, files = _table_and_files(key, name, namespace, None, search_uri)
    if format is not None and format not in ("csv", "tsv", "parquet"):
        raise typer.BadParameter("must be csv, tsv or parquet", param_hint="--format")
    ref = ref_or_active(ref)
    info = run(lambda c: c.create_table(table, files, ref=ref, format=format,
                                        partitioned_by=partitioned_by))
    if as_json:
        print_json(info)
    else:
        parts = f", partitioned by {info.partitioned_by}" if info.partitioned_by else ""
        typer.echo(f"created {info.key}: {len(info.schema)} columns{parts}")


@namespace_app.command("ls")
def namespace_ls(
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """List namespaces."""
    names = run(lambda c: c.namespaces(ref_or_active(ref)))
    if as_json:
        print_json(names)
    else:
        for n in names:
            typer.echo(n)


@namespace_app.command("create")
def namespace_create(
    name: str,
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="succeed if it exists"),
    as_json: bool = json_flag(),
) -> None:
    """Create a namespace."""
    ref = ref_or_active(ref)

    async def work(c: Client) -> None:
        try:
            await c.create_namespace(name, ref)
        except AlreadyExists:
            if not if_not_exists:
                raise

    run(work)
    if as_json:
        print_json({"namespace": name})
    else:
        typer.echo(f"created namespace {name}")


@app.command()
def info(as_json: bool = json_flag()) -> None:
    """Show the cluster: scheduler and workers."""
    data = run(lambda c: c.info())
    if as_json:
        print_json(data)
        return
    typer.echo(f"scheduler {data.scheduler}")
    if data.iceberg:
        typer.echo(f"iceberg   {data.iceberg}/<ref> (Iceberg REST catalog)")
    if data.console:
        typer.echo(f"console   {data.console}")
    for w in data.workers:
        typer.echo(
            f"  worker {w.worker_id} on {w.host_id}"
            + (" (draining: finishing its functions, taking no new ones)" if w.draining else "")
            + (" (NO SANDBOX: --isolation none)" if w.isolation == "none" else "")
            + f": {w.memory_available / 2**30:.1f} of "
            f"{w.memory_total / 2**30:.1f} GiB free, {w.memory_reserved / 2**30:.1f} GiB "
            f"reserved, {w.cpus_reserved} of {w.cpus} cores reserved, "
            f"{w.shm_bytes / 2**30:.2f} GiB of objects in use, python "
            f"{', '.join(w.python_versions)}"
        )
        for f in w.functions:
            typer.echo(f"    running {f.node}" + (f" of {f.run_id}" if f.run_id else ""))


@namespace_app.command("rm")
def namespace_rm(
    name: str,
    ref: str | None = typer.Option(None, "--ref", help="branch (default: the active branch)"),
    as_json: bool = json_flag(),
) -> None:
    """Drop an empty namespace (a commit)."""
    out = run(lambda c: c.drop_namespace(name, ref_or_active(ref)))
    if as_json:
        print_json(out)
    else:
        typer.echo(f"dropped namespace {name} at {out.commit[:12]}")


@table_app.command("create-external")
def table_create_external(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE to create"),
    source: str = typer.Option(
        ..., "--from", help="Parquet files (a path, a glob, s3://bucket/path/*.parquet), or an "
        "Iceberg table's .metadata.json",
    ),
    ref: str | None = typer.Option(None, "--ref", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """Register existing Parquet files, or an existing Iceberg table, as a table: nothing is
    copied; it is read like any table, at any ref."""
    ref = ref_or_active(ref)
    info = run(lambda c: c.create_external_table(key, source, ref=ref))
    if as_json:
        print_json(info)
    else:
        typer.echo(f"created external table {info.key}: {info.rows} rows in {info.files} files")


@table_app.command("rm")
def table_rm(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE"),
    ref: str | None = typer.Option(None, "--ref", help="branch (default: the active branch)"),
    as_json: bool = json_flag(),
) -> None:
    """Drop a table from a branch (a commit; older commits still have it)."""
    out = run(lambda c: c.drop_table(key, ref_or_active(ref)))
    if as_json:
        print_json(out)
    else:
        typer.echo(f"dropped {key} at {out.commit[:12]}")


@table_app.command("revert")
def table_revert(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE"),
    to: str = typer.Option(..., "--to", help="ref whose version of the table to restore"),
    ref: str | None = typer.Option(None, "--ref", help="branch to change (default: the active branch)"),
    as_json: bool = json_flag(),
) -> None:
    """Make a table on a branch what it is at another ref, in one commit."""
    branch = ref_or_active(ref)
    out = run(lambda c: c.revert_table(key, branch=branch, to_ref=to))
    if as_json:
        print_json(out)
    elif not out.changed:
        typer.echo(f"{key} on {branch} is already as at {to}: nothing to revert")
    else:
        typer.echo(f"reverted {key} on {branch} to its state at {to} ({out.commit[:12]})")


# Options of `faas` itself that take a value (cli_common._global).
_VALUED = ("--cluster", "--token-file", "--home")


def _command_name(argv: list[str]) -> str | None:
    """The command or group ``argv`` names (``submit``, ``branch``), past faas's own
    options; None where it names none."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _only(name: str | None) -> typer.Typer:
    """``app`` with the top-level command or group ``name`` alone, so that typer builds
    click's command for it and not for the forty others (about 15 ms on every command);
    the whole app where ``name`` is none of them (its help and errors list them all)."""
    import copy

    from typer.main import get_command_name

    commands = [c for c in app.registered_commands
                if (c.name or get_command_name(c.callback.__name__ if c.callback else "")) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main() -> None:
    import faas.client.cli_jobs  # noqa: F401  (registers job)
    import faas.client.cli_local  # noqa: F401  (registers local)
    import faas.client.cli_refs  # noqa: F401  (registers branch, tag, log, checkout)
    import faas.client.cli_secrets  # noqa: F401  (registers secret)

    try:
        _only(_command_name(sys.argv[1:]))()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
