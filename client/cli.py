"""The ``faas`` command line.

With ``--cluster HOST:PORT`` (or ``FAAS_CLUSTER``) commands go to that
cluster's scheduler. Without one, faas runs embedded: a scheduler and a worker
start on loopback for the command, against ``FAAS_HOME`` (default ``~/.faas``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, TypeVar

import typer

from client.client import Client
from protocol.errors import AlreadyExists, FaasError, FunctionFailed, PlanInvalid
from protocol.messages import LogLine, RunFinished, TaskEvent

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="faas: data pipelines as functions")
table_app = typer.Typer(no_args_is_help=True, help="tables in the lakehouse")
namespace_app = typer.Typer(no_args_is_help=True, help="namespaces in the lakehouse")
app.add_typer(table_app, name="table")
app.add_typer(namespace_app, name="namespace")


class Settings:
    cluster: str | None = None
    token_file: str | None = None
    home: str | None = None


settings = Settings()


@app.callback()
def _global(
    cluster: Optional[str] = typer.Option(None, "--cluster", envvar="FAAS_CLUSTER", help="scheduler HOST:PORT; none means embedded"),
    token_file: Optional[str] = typer.Option(None, "--token-file", envvar="FAAS_TOKEN_FILE", help="cluster token file"),
    home: Optional[str] = typer.Option(None, "--home", envvar="FAAS_HOME", help="embedded mode's home (default ~/.faas)"),
) -> None:
    settings.cluster = cluster
    settings.token_file = token_file
    settings.home = home


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _run(work: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``work`` against the cluster, or against an embedded one started for it."""

    async def go() -> T:
        if settings.cluster:
            return await work(Client(settings.cluster, token_file=settings.token_file))
        from client.embedded import embedded_cluster

        home = Path(settings.home).expanduser() if settings.home else None
        async with embedded_cluster(home) as (address, token):
            return await work(Client(address, token=token))

    try:
        try:
            import uvloop

            return uvloop.run(go())
        except ImportError:
            return asyncio.run(go())
    except FunctionFailed as exc:
        if exc.detail:
            _err(exc.detail.rstrip())
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    except PlanInvalid as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    except FaasError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _err("cancelled")
        raise typer.Exit(130) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{p!r} is not NAME=VALUE", param_hint="--param")
        params[name] = value
    return params


@app.command()
def submit(
    project: Path = typer.Argument(Path("."), help="project directory"),
    namespace: str = typer.Option(..., "--namespace", "-n", help="namespace of inputs and outputs"),
    ref: str = typer.Option("main", "--ref", help="branch to read from and publish to"),
    param: list[str] = typer.Option([], "--param", "-p", help="run parameter NAME=VALUE"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Run a pipeline project and publish its outputs."""
    params = _parse_params(param)

    async def work(c: Client) -> RunFinished | list[dict[str, Any]]:
        if dry_run:
            return await c.plan(project, namespace=namespace, ref=ref, params=params)
        run = await c.submit(project, namespace=namespace, ref=ref, params=params)
        logs: list[dict[str, Any]] = []
        if not as_json:
            _err(f"run {run.run_id}: {len(run.nodes)} models")
        async for ev in run:
            if isinstance(ev, LogLine):
                logs.append({"node": ev.node, "stream": ev.stream, "line": ev.line})
                if not as_json:
                    _err(f"  [{ev.node}] {ev.line}")
            elif isinstance(ev, TaskEvent) and not as_json and ev.state != "queued":
                extra = f" ({ev.rows} rows)" if ev.state == "done" else ""
                extra += f" on {ev.worker}" if ev.state == "running" else ""
                _err(f"{time.strftime('%H:%M:%S')} {ev.node}: {ev.state}{extra}")
        result = await run.result()
        if as_json:
            out = {
                "run_id": result.run_id, "status": result.status, "commit": result.commit,
                "tables": result.tables, "seconds": round(result.seconds, 3), "logs": logs,
                "error": None if result.error is None else
                {"kind": result.error.kind, "message": result.error.message, "detail": result.error.detail},
            }
            _print_json(out)
        if result.status != "success":
            await run.wait()  # raises the run's error
        return result

    result = _run(work)
    if dry_run:
        if as_json:
            _print_json(result)
        else:
            for node in result:  # type: ignore[union-attr]
                inputs = ", ".join(f"{i['param']}<-{i['from']}" for i in node["inputs"])
                typer.echo(f"{node['name']} -> {node['output']} [{node['materialize'] or 'in memory'}]")
                typer.echo(f"    inputs: {inputs or '-'}; python {node['python'] or 'default'}")
        return
    if not as_json:
        assert isinstance(result, RunFinished)
        typer.echo(
            f"run {result.run_id} succeeded in {result.seconds:.2f}s"
            + (f"; committed {', '.join(result.tables)} at {result.commit[:12]}" if result.commit else "")
        )


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over the lakehouse tables"),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="namespace for bare names"),
    ref: str = typer.Option("main", "--ref"),
    as_json: bool = typer.Option(False, "--json"),
    limit: int = typer.Option(50, "--limit", help="rows to print (tables only)"),
) -> None:
    """Run SQL over the tables at a ref."""
    table = _run(lambda c: c.query(sql, namespace=namespace, ref=ref))
    if as_json:
        _print_json(table.to_pylist())
        return
    _print_table(table, limit)


def _print_table(table: Any, limit: int) -> None:
    names = table.column_names
    rows = table.slice(0, limit).to_pylist()
    cells = [[str(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    typer.echo("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    typer.echo("  ".join("-" * w for w in widths))
    for c in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    if table.num_rows > limit:
        typer.echo(f"... {table.num_rows - limit} more rows")


@table_app.command("ls")
def table_ls(
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n"),
    ref: str = typer.Option("main", "--ref"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List tables."""
    tables = _run(lambda c: c.tables(namespace, ref))
    if as_json:
        _print_json(tables)
    else:
        for t in tables:
            typer.echo(t)


@table_app.command("get")
def table_get(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE"),
    ref: str = typer.Option("main", "--ref"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a table: schema, rows, snapshot and Iceberg metadata location."""
    info = _run(lambda c: c.table(key, ref))
    if as_json:
        _print_json(info)
        return
    typer.echo(f"{info['key']}: {info['rows']} rows, {info['files']} files, {info['bytes']} bytes")
    typer.echo(f"snapshot {info['snapshot_id']}\nmetadata {info['metadata_location']}")
    for f in info["schema"]:
        typer.echo(f"  {f['name']}: {f['type']}")


@table_app.command("import")
def table_import(
    key: str = typer.Argument(..., help="NAMESPACE.TABLE to create or replace"),
    paths: list[str] = typer.Argument(..., help="CSV or Parquet files or globs"),
    ref: str = typer.Option("main", "--ref"),
    mode: str = typer.Option("replace", "--mode", help="replace or append"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import CSV or Parquet files as a table (schema inferred)."""
    if mode not in ("replace", "append"):
        raise typer.BadParameter("must be 'replace' or 'append'", param_hint="--mode")
    info = _run(lambda c: c.import_table(key, paths, ref=ref, mode=mode))
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"imported {info['key']}: {info['rows']} rows")


@namespace_app.command("ls")
def namespace_ls(ref: str = typer.Option("main", "--ref"), as_json: bool = typer.Option(False, "--json")) -> None:
    """List namespaces."""
    names = _run(lambda c: c.namespaces(ref))
    if as_json:
        _print_json(names)
    else:
        for n in names:
            typer.echo(n)


@namespace_app.command("create")
def namespace_create(
    name: str,
    ref: str = typer.Option("main", "--ref"),
    if_not_exists: bool = typer.Option(False, "--if-not-exists", help="succeed if it exists"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a namespace."""

    async def work(c: Client) -> None:
        try:
            await c.create_namespace(name, ref)
        except AlreadyExists:
            if not if_not_exists:
                raise

    _run(work)
    if as_json:
        _print_json({"namespace": name})
    else:
        typer.echo(f"created namespace {name}")


@app.command()
def info(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the cluster: scheduler and workers."""
    data = _run(lambda c: c.info())
    if as_json:
        _print_json(data)
        return
    typer.echo(f"scheduler {data['scheduler']}")
    for w in data["workers"]:
        typer.echo(
            f"  worker {w['worker_id']} on {w['host_id']}: {w['memory_available'] / 2**30:.1f} of "
            f"{w['memory_total'] / 2**30:.1f} GiB free, python {', '.join(w['python_versions'])}"
        )


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
