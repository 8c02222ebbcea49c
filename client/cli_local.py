"""``faas local``: see, start and stop the resident daemon of this ``FAAS_HOME``."""

from __future__ import annotations

import time
from typing import Any

import typer

from faas.client.cli_common import app, err, fail, group, home_dir, json_flag, print_json
from faas.protocol.errors import FaasError
from faas.protocol.replies import Cluster

local_app = group("The background daemon that commands without --cluster talk to (one per FAAS_HOME).")
app.add_typer(local_app, name="local")


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _live(info: dict[str, Any]) -> Cluster | str:
    """What the daemon itself says (idle time, runs in flight), or why it did not."""
    from faas.client.local import ask_daemon

    try:
        return ask_daemon(home_dir(), info)
    except FaasError as exc:
        return str(exc)


@local_app.command("status")
def local_status(as_json: bool = json_flag()) -> None:
    """Is the daemon running: address, pid, uptime, idle timer, version, logs."""
    from faas.client.local import status

    home = home_dir()
    try:
        info = status(home)
    except FaasError as exc:
        fail(str(exc))
    if info is None:
        if as_json:
            print_json({"running": False, "home": str(home)})
        else:
            typer.echo(f"no local faas daemon is running for {home} (the next command starts one)")
        raise typer.Exit(1)
    live = _live(info)
    said = live if isinstance(live, Cluster) else None
    out = {
        "running": True, "home": str(home), "address": info["address"], "pid": info["pid"],
        "worker_pid": info.get("worker_pid"), "version": info["version"],
        "uptime_seconds": round(time.time() - info.get("started", time.time()), 1),
        "idle_seconds": round(said.idle_seconds, 1) if said else 0.0,
        "idle_limit_seconds": info.get("idle_seconds"), "runs": said.runs if said else 0,
        "workers": len(said.workers) if said else 0, "logs": info.get("logs"),
        "iceberg": info.get("iceberg", ""), "console": info.get("console", ""),
    }
    if said is None:
        out["error"] = live
    if as_json:
        print_json(out)
        return
    typer.echo(f"local faas daemon for {home}")
    typer.echo(f"  address  {out['address']} (pid {out['pid']}, worker pid {out['worker_pid']})")
    typer.echo(f"  version  {out['version']}")
    if out["iceberg"]:
        typer.echo(f"  iceberg  {out['iceberg']}/<ref> (Iceberg REST catalog, e.g. {out['iceberg']}/main)")
    if out["console"]:
        typer.echo(f"  console  {out['console']} (faas console opens it)")
    typer.echo(f"  uptime   {_span(out['uptime_seconds'])}")
    limit = out["idle_limit_seconds"] or 0
    if out["runs"]:
        typer.echo(f"  idle     no: {out['runs']} run(s) in flight")
    else:
        typer.echo(f"  idle     {_span(out['idle_seconds'])}; stops after {_span(limit)} idle "
                   f"(in {_span(limit - out['idle_seconds'])})")
    typer.echo(f"  logs     {out['logs']}")
    if "error" in out:
        err(f"error: the daemon did not answer: {out['error']}")
        raise typer.Exit(1)


@local_app.command("start")
def local_start(
    idle: float | None = typer.Option(
        None, "--idle", help="minutes with no client and no run before it stops "
        "(default 30, or FAAS_LOCAL_IDLE)"),
    memory: str | None = typer.Option(None, "--memory", help="memory for its worker, e.g. 8GiB"),
    port: int = typer.Option(0, "--port", help="the scheduler's port on 127.0.0.1 (0: any free one)"),
) -> None:
    """Start the daemon now (commands start it anyway when it is not running)."""
    from faas.client.local import ensure_daemon, status
    from faas.protocol.sizes import parse_size

    if memory is not None:
        try:
            parse_size(memory)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--memory") from None
    if idle is not None and idle <= 0:
        raise typer.BadParameter("must be more than 0 minutes", param_hint="--idle")
    home = home_dir()
    try:
        running = status(home)
        if running is not None:
            typer.echo(f"the local faas daemon is already running on {running['address']} "
                       f"(pid {running['pid']}); 'faas local stop' first to change its settings")
            return
        info = ensure_daemon(home, notice=lambda text: err(f"note: {text}"), idle_minutes=idle,
                             memory=memory, port=port)
    except FaasError as exc:
        fail(str(exc))
    typer.echo(f"started the local faas daemon on {info['address']} (pid {info['pid']}); "
               f"logs in {info['logs']}")


@local_app.command("stop")
def local_stop() -> None:
    """Stop the daemon and its worker (runs in flight are cancelled)."""
    from faas.client.local import stop_daemon

    home = home_dir()
    try:
        info = stop_daemon(home, notice=lambda text: err(f"note: {text}"))
    except FaasError as exc:
        fail(str(exc))
    if info is None:
        typer.echo(f"no local faas daemon was running for {home}")
    elif info.get("dead"):
        typer.echo(f"the local faas daemon (pid {info['pid']}) had already stopped; cleaned up")
    else:
        typer.echo(f"stopped the local faas daemon (pid {info['pid']})")


@app.command("console")
def console(
    no_open: bool = typer.Option(False, "--no-open", help="print the address, open no browser"),
    as_json: bool = json_flag(),
) -> None:
    """Open the web console: SQL over any ref, the catalog, runs as they happen."""
    from faas.client.cli_common import run, settings

    data = run(lambda c: c.info())
    if not data.console:
        fail("this scheduler serves no HTTP: start it with faasd scheduler --http HOST:PORT")
    token = None if settings.cluster else str(home_dir() / "admin.token")
    if as_json:
        print_json({"console": data.console, "token_file": token})
        return
    typer.echo(data.console)
    err("sign in with a user's token (NAME:SECRET" + (f", here the text of {token})" if token
                                                     else ", the text of its token file)"))
    if not no_open:
        import webbrowser

        webbrowser.open(data.console)
