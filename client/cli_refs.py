"""``faas branch``, ``faas tag``, ``faas checkout`` and ``faas log``: the catalog as git."""

from __future__ import annotations

import typer

from faas.client.cli_common import (
    REF_HELP,
    active_branch,
    app,
    branch_app,
    fail,
    json_flag,
    print_json,
    ref_or_active,
    run,
    set_active_branch,
    tag_app,
)
from faas.client.client import Client
from faas.protocol.errors import InvalidInput, NotFound
from faas.protocol.replies import Ref

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' or plain seconds."""
    t = text.strip().lower()
    try:
        if t and t[-1] in DURATION_UNITS:
            return float(t[:-1]) * DURATION_UNITS[t[-1]]
        return float(t)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 12h or 7d") from None


def _show_refs(refs: list[Ref], as_json: bool, active: str | None = None) -> None:
    if as_json:
        print_json(refs)
        return
    for r in refs:
        mark = "*" if r.name == active else " "
        typer.echo(f"{mark} {r.name:<30} {r.head[:12]}  {r.message}")


@branch_app.command("ls")
def branch_ls(
    all_: bool = typer.Option(False, "--all", "-a", help="also the transaction branches of runs"),
    as_json: bool = json_flag(),
) -> None:
    """List branches (* marks the active one)."""
    _show_refs(run(lambda c: c.branches(include_runs=all_)), as_json, active_branch())


@branch_app.command("create")
def branch_create(
    name: str,
    from_ref: str | None = typer.Option(None, "--from", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """Create a branch: a new name for a commit; no data is copied."""
    ref = run(lambda c: c.create_branch(name, ref_or_active(from_ref)))
    if as_json:
        print_json(ref)
    else:
        typer.echo(f"created branch {name} at {ref.head[:12]}")


@branch_app.command("rm")
def branch_rm(name: str, as_json: bool = json_flag()) -> None:
    """Delete a branch (never the active one)."""
    if name == active_branch():
        fail(f"cannot delete branch {name!r}: it is the active branch (run 'faas checkout main' first)")
    run(lambda c: c.delete_branch(name))
    if as_json:
        print_json({"deleted": name})
    else:
        typer.echo(f"deleted branch {name}")


@branch_app.command("merge")
def branch_merge(
    source: str = typer.Argument(..., help="branch, tag or @HASH to merge"),
    into: str | None = typer.Option(None, "--into", help="target branch (default: the active branch)"),
    message: str | None = typer.Option(None, "--message", "-m", help="the merge commit's message (default: merge SOURCE into TARGET)"),
    ff: bool = typer.Option(False, "--ff", help="move the target instead of committing, when possible"),
    as_json: bool = json_flag(),
) -> None:
    """Merge a branch into another: one commit, or a conflict and nothing written."""
    target = ref_or_active(into)
    out = run(lambda c: c.merge(source, target, message=message, fast_forward=ff))
    if as_json:
        print_json(out)
    elif not out.changes and not out.fast_forward:
        typer.echo(f"{target} already contains {source}")
    else:
        how = "fast-forwarded" if out.fast_forward else "merged"
        typer.echo(
            f"{how} {source} into {target} at {out.commit[:12]} ({len(out.changes)} changes)"
        )


@branch_app.command("diff")
def branch_diff(
    ref_a: str = typer.Argument(..., metavar="A", help="the ref to start from"),
    ref_b: str | None = typer.Argument(None, metavar="[B]", help="the ref to go to (default: the active branch)"),
    as_json: bool = json_flag(),
) -> None:
    """What changes going from A to B, as git diff A B: tables added, dropped, changed."""
    target = ref_or_active(ref_b)
    diffs = run(lambda c: c.diff(ref_a, target))
    if as_json:
        print_json(diffs)
        return
    if not diffs:
        typer.echo(f"no differences between {ref_a} and {target}")
    for d in diffs:
        if d.kind == "namespace":
            typer.echo(f"{d.status:<8} namespace {d.key}")
            continue
        typer.echo(
            f"{d.status:<8} {d.key}  snapshot {d.old_snapshot_id} -> {d.new_snapshot_id}, "
            f"rows {d.old_rows} -> {d.new_rows}"
        )


@branch_app.command("prune")
def branch_prune(
    runs: bool = typer.Option(False, "--runs", help="delete transaction branches of finished runs"),
    older_than: str | None = typer.Option(None, "--older-than", help="only those older than e.g. 7d"),
    as_json: bool = json_flag(),
) -> None:
    """Delete old transaction branches of runs (running ones are kept)."""
    if not runs:
        raise typer.BadParameter("say what to prune: --runs", param_hint="--runs")
    age = parse_duration(older_than) if older_than else None
    deleted = run(lambda c: c.prune_runs(older_than=age))
    if as_json:
        print_json(deleted)
    else:
        typer.echo(f"deleted {len(deleted)} run branches")


@app.command()
@branch_app.command("checkout")
def checkout(
    name: str,
    create: bool = typer.Option(False, "-b", help="create the branch from the active one first"),
    as_json: bool = json_flag(),
) -> None:
    """Make a branch the default ref of every command (kept in FAAS_HOME); also
    `faas branch checkout`, as Bauplan's CLI has it."""

    async def work(c: Client) -> Ref:
        if create:
            return await c.create_branch(name, active_branch())
        for b in await c.branches(include_runs=True):
            if b.name == name:
                return b
        if any(t.name == name for t in await c.tags()):
            raise InvalidInput(f"{name!r} is a tag: read it with --ref {name}, or branch from it")
        raise NotFound(f"no branch {name!r}: create it with 'faas checkout -b {name}'")

    ref = run(work)
    set_active_branch(name)
    if as_json:
        print_json(ref)
    else:
        typer.echo(f"on branch {name} ({ref.head[:12]})")


@tag_app.command("ls")
def tag_ls(as_json: bool = json_flag()) -> None:
    """List tags."""
    _show_refs(run(lambda c: c.tags()), as_json)


@tag_app.command("create")
def tag_create(
    name: str,
    from_ref: str | None = typer.Option(None, "--from", help=REF_HELP),
    as_json: bool = json_flag(),
) -> None:
    """Name a commit; a tag never moves."""
    ref = run(lambda c: c.create_tag(name, ref_or_active(from_ref)))
    if as_json:
        print_json(ref)
    else:
        typer.echo(f"tagged {ref.head[:12]} as {name}")


@tag_app.command("rm")
def tag_rm(name: str, as_json: bool = json_flag()) -> None:
    """Delete a tag."""
    run(lambda c: c.delete_tag(name))
    if as_json:
        print_json({"deleted": name})
    else:
        typer.echo(f"deleted tag {name}")


@app.command("log")
def log_(
    ref: str | None = typer.Argument(None, help=REF_HELP),
    n: int = typer.Option(20, "-n", help="how many commits"),
    as_json: bool = json_flag(),
) -> None:
    """Commits reachable from a ref, newest first (first parents)."""
    commits = run(lambda c: c.log(ref_or_active(ref), n))
    if as_json:
        print_json(commits)
        return
    for c in commits:
        props = " ".join(f"{k}={v}" for k, v in sorted(c.properties.items()))
        merge = " (merge)" if len(c.parents) > 1 else ""
        typer.echo(f"{c.hash[:12]} {c.created_at[:19]} {c.author}: {c.message}{merge}"
                   + (f"  [{props}]" if props else ""))
