"""Plumbing shared by the ``faas`` commands: settings, the active branch, running a call.

With ``--cluster HOST:PORT`` (or ``FAAS_CLUSTER``) commands go to that
cluster's scheduler. Without one, faas runs embedded: commands talk to the
resident daemon of ``FAAS_HOME`` (default ``~/.faas``), a scheduler and a worker
on loopback that the first command starts in the background (``faas local``).
The active branch (``faas checkout``) is kept in ``FAAS_HOME/HEAD`` and is the
default ref of every command.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from faas.client.client import Client
from faas.client.home import active_branch as _active_branch
from faas.client.home import home_path
from faas.protocol.blocking import drive
from faas.protocol.errors import FaasError, FunctionFailed, PlanInvalid

T = TypeVar("T")

# -h as well as --help, on every command, as git and gh have it.
HELP = {"help_option_names": ["-h", "--help"]}


def group(help: str) -> typer.Typer:
    """A command group of ``faas``."""
    return typer.Typer(no_args_is_help=True, help=help, context_settings=HELP)


def json_flag() -> Any:
    """The ``--json`` flag, the same on every command."""
    return typer.Option(False, "--json", help="print JSON instead of text")


app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="faas: data pipelines as functions",
    context_settings=HELP,
)
table_app = group("Tables in the lakehouse: import, list, inspect, revert, drop.")
namespace_app = group("Namespaces in the lakehouse.")
branch_app = group("Branches of the catalog: create, list, diff, merge, delete.")
tag_app = group("Tags: names for commits that never move.")
app.add_typer(table_app, name="table")
app.add_typer(namespace_app, name="namespace")
app.add_typer(branch_app, name="branch")
app.add_typer(tag_app, name="tag")


class Settings:
    cluster: str | None = None
    token_file: str | None = None
    home: str | None = None


settings = Settings()


def _version(value: bool) -> None:
    if value:
        from faas.protocol.version import VERSION

        typer.echo(f"faas {VERSION}")
        raise typer.Exit()


@app.callback()
def _global(
    cluster: str | None = typer.Option(None, "--cluster", envvar="FAAS_CLUSTER", help="scheduler HOST:PORT; none means embedded"),
    token_file: str | None = typer.Option(None, "--token-file", envvar="FAAS_TOKEN_FILE", help="cluster token file"),
    home: str | None = typer.Option(None, "--home", envvar="FAAS_HOME", help="embedded mode's home (default ~/.faas)"),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="print faas's version and exit"),
) -> None:
    settings.cluster = cluster
    settings.token_file = token_file
    settings.home = home


def home_dir() -> Path:
    return home_path(settings.home)


def active_branch() -> str:
    """The branch `faas checkout` chose, ``main`` until then."""
    return _active_branch(home_dir())


def set_active_branch(name: str) -> None:
    home = home_dir()
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / "HEAD.tmp"
    tmp.write_text(name + "\n")
    tmp.replace(home / "HEAD")


def ref_or_active(ref: str | None) -> str:
    return ref or active_branch()


REF_HELP = "branch, tag, BRANCH@HASH or @HASH (default: the active branch)"


def err(text: str) -> None:
    typer.echo(text, err=True)


def fail(message: str) -> NoReturn:
    """Refuse a command before it reaches the cluster: one line, exit 1."""
    err(f"error: {message}")
    raise typer.Exit(1)


def local_client() -> Client:
    """A client of this home's resident daemon, started (or replaced) if need be."""
    from faas.client.local import ensure_daemon
    from faas.protocol.auth import ADMIN_TOKEN, load_token

    home = home_dir()
    info = ensure_daemon(home, notice=lambda text: err(f"note: {text}"))
    return Client(info["address"], token=load_token(home / ADMIN_TOKEN), blocking=True)


class _Terminated(BaseException):
    """SIGTERM arrived (a timeout, CI, systemd): the command stops as on Ctrl-C."""


def _terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated


def run(work: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` against the cluster, or against this home's resident daemon (found,
    started or replaced first). The client blocks on its sockets and ``work`` runs
    without an event loop, so a command never pays for loading asyncio. Ctrl-C or SIGTERM
    hangs up: a run attached to this command is cancelled by the scheduler."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        if settings.cluster:
            client = Client(settings.cluster, token_file=settings.token_file, blocking=True)
        else:
            client = local_client()
        return drive(work(client))
    except FunctionFailed as exc:
        if exc.detail:
            err(exc.detail.rstrip())
        err(f"error: {exc}")
        raise typer.Exit(1) from None
    except PlanInvalid as exc:
        err(f"error: {exc}")
        raise typer.Exit(1) from None
    except FaasError as exc:
        err(f"error: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err("cancelled")
        raise typer.Exit(130) from None
    except _Terminated:
        err("cancelled")
        raise typer.Exit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_json(data: Any) -> None:
    """``data`` as JSON; a reply's fields (not its message tag) for a reply."""
    import msgspec

    plain = msgspec.to_builtins(data)
    for item in plain if isinstance(plain, list) else [plain]:
        if isinstance(item, dict):
            item.pop("op", None)
    typer.echo(json.dumps(plain, indent=2, default=str))


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{p!r} is not NAME=VALUE", param_hint="--param")
        params[name] = value
    return params
