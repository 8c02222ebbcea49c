"""``faas secret``: values a run's functions need that no one reads back.

``faas secret set NAME`` reads the value from standard input (prompting, without echo,
on a terminal) so that it never sits in a shell history or a process list; a project
parameter of ``type = "secret"`` receives it. ``faas secret ls`` shows names, who set
them and when; no command shows a value.
"""

from __future__ import annotations

import sys
import time

import typer

from faas.client.cli_common import app, fail, group, json_flag, print_json, run

secret_app = group("Secrets: values parameters of type secret receive, stored sealed on the scheduler.")
app.add_typer(secret_app, name="secret")


@secret_app.command("set")
def secret_set(
    name: str = typer.Argument(..., help="the secret's name (a parameter of type secret reads it)"),
    as_json: bool = json_flag(),
) -> None:
    """Store a secret, its value read from standard input (a prompt on a terminal)."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of secret {name}: ")
    else:
        value = sys.stdin.read()
        # A value piped in (echo, a file) ends with the newline that closed it.
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
    if not value:
        fail(f"no value for secret {name!r}: pipe it in (faas secret set {name} < FILE) or "
             "type it at the prompt")
    changed = run(lambda c: c.set_secret(name, value))
    if as_json:
        print_json(changed)
    else:
        typer.echo(f"stored secret {changed.name}")


@secret_app.command("ls")
def secret_ls(as_json: bool = json_flag()) -> None:
    """List the secrets: names, who set them and when (never their values)."""
    found = run(lambda c: c.secrets())
    if as_json:
        print_json(found)
        return
    for s in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.set_at))
        typer.echo(f"{s.name}  set by {s.set_by or '?'} at {when}")


@secret_app.command("rm")
def secret_rm(name: str, as_json: bool = json_flag()) -> None:
    """Delete a secret (runs reading it then fail to plan until it is set again)."""
    changed = run(lambda c: c.delete_secret(name))
    if as_json:
        print_json(changed)
    else:
        typer.echo(f"deleted secret {changed.name}")
