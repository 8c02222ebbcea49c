"""``faasd scheduler ...`` and ``faasd worker ...``: the two long-running daemons."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from faas.protocol import sizes
from faas.protocol.auth import ensure_token, load_token
from faas.protocol.errors import FaasError

log = logging.getLogger("faasd")

def parse_size(text: str) -> int:
    try:
        return sizes.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cores(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a number of cores is a whole number, 1 or more, not {text!r}")
    return int(text)


CONFIG_HELP = (
    "a TOML file of settings: keys are the long options without dashes (listen, memory, "
    "shm-dir, ...), at the top level or under [scheduler] / [worker]; options given on "
    "the command line win"
)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from faas.protocol.version import VERSION

    p = argparse.ArgumentParser(prog="faasd", description="faas daemons")
    p.add_argument("--version", action="version", version=f"faasd {VERSION}",
                   help="print faasd's version and exit")
    p.add_argument("--log-level", default=os.environ.get("FAAS_LOG_LEVEL", "INFO"),
                   metavar="LEVEL",
                   help="DEBUG, INFO, WARNING or ERROR (default: FAAS_LOG_LEVEL, else INFO)")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("scheduler", help="run the cluster's scheduler")
    s.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
    s.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (port 0 picks a free one)")
    s.add_argument("--home", default=os.environ.get("FAAS_HOME", "~/.faas"),
                   help="where the catalog, warehouse, token and logs live (default: FAAS_HOME, "
                        "else ~/.faas)")
    s.add_argument("--warehouse", default=None,
                   help="warehouse URI: file://DIR or s3://BUCKET/PREFIX "
                        "(default: file://HOME/warehouse)")
    _s3_options(s)
    s.add_argument("--catalog", default=None, help="catalog URI (default: sqlite:///HOME/catalog.db)")
    s.add_argument("--token-file", default=None, help="cluster token (default: HOME/token, created)")
    s.add_argument("--host-id", default=None, help="identity of this host (default: hostname)")
    s.add_argument("--run-log-limit", type=parse_size, default=None, metavar="SIZE",
                   help="output a run may print before its later lines are dropped "
                        "(default 16MiB)")
    s.add_argument("--client-idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="close a client connection that sends nothing for this long (default 300)")
    s.add_argument("--query-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a query that runs this long, unless it asks for another bound "
                        "(default 300)")
    s.add_argument("--worker-wait", type=float, default=None, metavar="SECONDS",
                   help="how long work waits for a worker while none is registered (default 30)")
    s.add_argument("--query-result-limit", type=parse_size, default=None, metavar="SIZE",
                   help="the largest result a query may return, in Arrow bytes (default 1GiB)")
    s.add_argument("--protect", action="append", default=None, metavar="BRANCH",
                   help="a branch only admins may change (repeatable; default: main)")
    s.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve the Iceberg REST catalog here, at http://HOST:PORT/iceberg/<ref>")
    w = sub.add_parser("worker", help="run a worker on this host")
    w.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
    w.add_argument("--scheduler", default=None, help="scheduler HOST:PORT (required)")
    w.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT where other workers fetch objects")
    w.add_argument("--host-id", default=None, help="identity of this host (default: hostname)")
    w.add_argument("--memory", type=parse_size, default=None, help="memory to offer, e.g. 8GiB")
    w.add_argument("--cpus", type=_cores, default=None,
                   help="cores functions may reserve with @faas.model(cpus=N) (default: the "
                        "cores this process may run on)")
    w.add_argument("--shm-dir", default=None, help="shared-memory directory (default /dev/shm)")
    w.add_argument("--spill-dir", default=None,
                   help="local disk for objects spilled from shared memory "
                        "(default ~/.cache/faas/spill)")
    w.add_argument("--object-memory", type=parse_size, default=None,
                   help="shared memory for objects and cached columns before the least recently "
                        "used spill to disk (default: half of --memory)")
    w.add_argument("--token-file", default=os.environ.get("FAAS_TOKEN_FILE"), required=False,
                   help="the cluster token, as the scheduler has it (default: FAAS_TOKEN_FILE; "
                        "required)")
    w.add_argument("--env-dir", default=None,
                   help="where function environments are cached (default ~/.cache/faas/envs)")
    w.add_argument("--python", action="append", default=[], metavar="PATH",
                   help="another interpreter to offer functions (repeatable)")
    w.add_argument("--import-root", action="append", default=[], metavar="DIR",
                   help="a directory `faas table import` may read files from (repeatable; "
                        "none: no local files)")
    w.add_argument("--isolation", choices=("sandbox", "none"), default="sandbox",
                   help="run each function in a sandbox (default; the worker refuses to start "
                        "where one cannot be built) or in none (logged as a warning)")
    w.add_argument("--private", action="append", default=[], metavar="PATH",
                   help="a path functions never see, even inside a directory their sandbox "
                        "shows (repeatable; the token file always is)")
    w.add_argument("--function-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a function that runs this long when its model sets no timeout "
                        "(default 3600; 0: never)")
    w.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long running functions may take to finish before "
                        "they are stopped (default 30)")
    _s3_options(w)
    loc = sub.add_parser("local", help="the resident daemon of a FAAS_HOME: a scheduler and one "
                                       "worker on loopback (the faas CLI starts it)")
    loc.add_argument("--home", default=os.environ.get("FAAS_HOME", "~/.faas"),
                     help="the home it serves (default: FAAS_HOME, else ~/.faas)")
    loc.add_argument("--idle", type=float, default=30.0, metavar="MINUTES",
                     help="stop after this long with no client and no run (default 30)")
    loc.add_argument("--memory", type=parse_size, default=None, help="memory for the worker")
    loc.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the scheduler")
    u = sub.add_parser("user", help="manage the users of a scheduler's home (add prints the "
                                    "new user's token file)")
    u.add_argument("action", choices=("add", "ls", "rm"),
                   help="add a user (or give one a new role and token), list them, remove one")
    u.add_argument("name", nargs="?", default=None, help="the user's name (add, rm)")
    u.add_argument("--role", dest="user_role", choices=("reader", "writer", "admin"), default="writer",
                   help="what the user may do (add; default writer)")
    u.add_argument("--home", default=os.environ.get("FAAS_HOME", "~/.faas"),
                   help="the scheduler's home (default: FAAS_HOME, else ~/.faas)")
    return p, {"scheduler": s, "worker": w, "local": loc, "user": u}


def _settings(path: str, role: str, sub: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings for ``role`` in a TOML file, checked against the role's options."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise FaasError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FaasError(f"config {path}: {exc}") from None
    roles = ("scheduler", "worker")
    found = {k: v for k, v in data.items() if k not in roles}
    section = data.get(role, {})
    if not isinstance(section, dict):
        raise FaasError(f"config {path}: [{role}] must be a table")
    found.update(section)
    known = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    settings: dict[str, Any] = {}
    for key, value in found.items():
        dest = key.replace("-", "_")
        if dest not in known:
            options = ", ".join(sorted(d.replace("_", "-") for d in known))
            raise FaasError(f"config {path}: {role} has no setting {key!r} (it has: {options})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value) if known[dest].type is not None else value
        settings[dest] = value
    return settings


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The settings among ``names`` given a value (the daemon's own defaults stand for
    the rest)."""
    return {name: getattr(args, name) for name in names if getattr(args, name)}


def _s3_options(p: argparse.ArgumentParser) -> None:
    # Options for the S3 warehouse; credentials come only from the AWS SDK's usual
    # places (environment, profile, instance role), never from the command line.
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: "
                        "AWS_ENDPOINT_URL; sets it for this daemon)")
    p.add_argument("--s3-region", default=None,
                   help="S3 region (default: AWS_REGION, else us-east-1 with an endpoint)")


def _apply_s3_options(args: argparse.Namespace) -> None:
    """Put the S3 options into this process's environment, where the store reads them
    (store.warehouse) and from where the function processes inherit them."""
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    if args.s3_region:
        os.environ["AWS_REGION"] = args.s3_region


async def _serve(daemon: Any, ready: str, grace: float = 0.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        if hasattr(daemon, "wait_registered"):
            await daemon.wait_registered()
        print(ready.format(d=daemon), flush=True)
        await stop.wait()
        log.info("stopping: signal received")
        if hasattr(daemon, "drain"):
            # A second signal stops at once.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: drain.cancel())
            drain = asyncio.ensure_future(daemon.drain(grace))
            try:
                await drain
            except asyncio.CancelledError:
                log.warning("stopping now: second signal")
    finally:
        await daemon.close()


def main(argv: list[str] | None = None) -> int:
    # Everything a daemon creates (home, catalog, warehouse, logs, run records, objects,
    # environments) is its user's alone: files 0600, directories 0700. Its functions run
    # as that user and inherit the mask.
    os.umask(0o077)
    parser, roles = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            roles[args.role].set_defaults(**_settings(args.config, args.role, roles[args.role]))
        except FaasError as exc:
            print(f"faasd: error: {exc}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # the command line wins over the file
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.role == "local":
        from faas.faasd.local import serve

        return serve(Path(args.home).expanduser().absolute(), idle=args.idle * 60,
                     memory=str(args.memory) if args.memory else None, listen=args.listen)
    if args.role == "user":
        return _user(args)
    _apply_s3_options(args)
    try:
        if args.role == "scheduler":
            from faas.scheduler.server import Scheduler

            home = Path(args.home).expanduser()
            token = load_token(args.token_file) if args.token_file else ensure_token(home / "token")
            daemon: Any = Scheduler(
                home=home, token=token, listen=args.listen, warehouse=args.warehouse,
                catalog=args.catalog, host_id=args.host_id,
                **_given(args, "run_log_limit", "client_idle_timeout", "query_timeout",
                         "worker_wait", "query_result_limit", "protect", "http"),
            )
            asyncio.run(_serve(daemon, "faasd scheduler listening on {d.address}"))
        else:
            from faas.faasd.worker import Worker

            if not args.scheduler:
                raise FaasError("a worker needs its scheduler: pass --scheduler HOST:PORT")
            if not args.token_file:
                raise FaasError("a worker needs the cluster token: pass --token-file or set FAAS_TOKEN_FILE")
            daemon = Worker(
                args.scheduler, token=load_token(args.token_file), host_id=args.host_id,
                memory=args.memory, shm_dir=args.shm_dir, listen=args.listen,
                env_dir=args.env_dir, pythons=args.python, object_memory=args.object_memory,
                spill_dir=args.spill_dir, cpus=args.cpus,
                **({} if args.function_timeout is None
                   else {"function_timeout": args.function_timeout}),
                import_roots=args.import_root, isolation=args.isolation,
                private_paths=[args.token_file, *args.private],
            )
            asyncio.run(
                _serve(
                    daemon,
                    "faasd worker {d.worker_id} registered with {d.scheduler}, serving data on "
                    "{d.peer.address}",
                    grace=args.grace,
                )
            )
    except FaasError as exc:
        print(f"faasd: error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("faasd: error: could not register with the scheduler within 30s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _user(args: argparse.Namespace) -> int:
    """``faasd user add|ls|rm``: edits HOME/users.json, which the scheduler reads again."""
    from faas.scheduler.users import Users

    users = Users(Path(args.home).expanduser())
    try:
        if args.action == "ls":
            for name, role in users.names().items():
                print(f"{name}\t{role}")
            return 0
        if not args.name:
            raise FaasError(f"faasd user {args.action} needs the user's name")
        if args.action == "rm":
            users.remove(args.name)
            print(f"removed user {args.name}", file=sys.stderr)
            return 0
        sys.stdout.write(users.add(args.name, args.user_role))
        print(f"user {args.name} ({args.user_role}): keep the line above as its token file "
              "(FAAS_TOKEN_FILE)", file=sys.stderr)
        return 0
    except FaasError as exc:
        print(f"faasd: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
