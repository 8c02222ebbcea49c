"""Find, start, replace and stop the resident daemon of a ``FAAS_HOME``.

With no cluster address, every command talks to one background daemon per home
(``faasd local``: a scheduler and a worker on loopback). The first command
starts it; later ones read ``HOME/daemon.json`` and connect. Finding it costs a
file read and a process check, no connection. Two commands starting at once
take ``HOME/daemon.lock`` in turn, so they share one daemon. A daemon that
died, or that runs another build of faas, is replaced on the next command with
a one-line notice.

Everything here is synchronous and imports little: it runs before every command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faas.protocol.errors import FaasError
from faas.protocol.replies import Cluster
from faas.protocol.version import build_id, settings_fingerprint

INFO_FILE = "daemon.json"
LOCK_FILE = "daemon.lock"
DEFAULT_IDLE_MINUTES = 30.0
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
LOCK_TIMEOUT = 120.0
_FIELDS = {"version": str, "pid": int, "address": str}

Notice = Callable[[str], None]


def idle_minutes_default() -> float:
    """``FAAS_LOCAL_IDLE`` (minutes) where set, else 30."""
    raw = os.environ.get("FAAS_LOCAL_IDLE", "")
    if not raw:
        return DEFAULT_IDLE_MINUTES
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not (0 < minutes < math.inf):
        raise FaasError(f"FAAS_LOCAL_IDLE={raw!r} is not a number of minutes above 0")
    return minutes


def read_info(home: Path) -> dict[str, Any] | None:
    """What ``HOME/daemon.json`` says, or None when there is none.

    Raises FaasError when it is there but is not a daemon's record."""
    path = home / INFO_FILE
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None  # and if the home itself is the trouble, opening it says so
    except OSError as exc:
        raise FaasError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    problem = "" if isinstance(info, dict) else "not JSON"
    if not problem:
        assert isinstance(info, dict)
        for name, kind in _FIELDS.items():
            if not isinstance(info.get(name), kind):
                problem = f"no {kind.__name__} {name!r}"
                break
    if problem:
        raise FaasError(
            f"{path} is not a faas daemon record ({problem}): remove it, or run "
            f"'faas local stop', which does"
        )
    return info


def _is_daemon(pid: int, role: str = "local") -> bool:
    """Is ``pid`` a live ``faasd ROLE`` process (not a pid reused by something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # `python -m faas.faasd ROLE` (how faas starts it) or the `faasd` script.
    daemon = any(a == b"faas.faasd" or a.rsplit(b"/", 1)[-1] == b"faasd" for a in cmdline)
    return daemon and role.encode() in cmdline


def _open_home(home: Path) -> None:
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (home / "logs").mkdir(mode=0o700, exist_ok=True)
        probe = home / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FaasError(
            f"cannot use FAAS_HOME {home}: {exc.strerror or exc} (set FAAS_HOME, or --home, to "
            f"a directory you can write)"
        ) from None


class _Lock:
    """``HOME/daemon.lock``, held while one command checks, starts or stops the daemon."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise FaasError(
                        f"another faas command has held {self.path} for over "
                        f"{LOCK_TIMEOUT:.0f} s; is one stuck starting the daemon?"
                    ) from None
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def ensure_daemon(
    home: Path, *, notice: Notice, idle_minutes: float | None = None,
    memory: str | None = None, port: int = 0,
) -> dict[str, Any]:
    """The running daemon of ``home`` (its daemon.json), started or replaced if need be."""
    info = read_info(home)
    if (info is not None and info["version"] == build_id() and info.get("home") == str(home)
            and _is_daemon(info["pid"])):
        if info.get("settings", settings_fingerprint()) != settings_fingerprint():
            notice("the local faas daemon was started with other AWS_* settings (its "
                   "functions use those); 'faas local stop' to start one with these")
        return info
    _open_home(home)
    with _Lock(home):
        info = read_info(home)  # another command may have started it meanwhile
        if info is not None and info.get("home") != str(home):
            # Copied from another home with it: that daemon serves the other one.
            notice(f"{home / INFO_FILE} describes the daemon of {info.get('home')}; starting "
                   f"one for {home}")
            info = None
        if info is not None:
            if _is_daemon(info["pid"]):
                if info["version"] == build_id():
                    return info
                busy = _runs_in_flight(home, info)
                if busy:
                    raise FaasError(
                        f"the local faas daemon (pid {info['pid']}) runs faas "
                        f"{info['version']}, not {build_id()}, and has {busy} run(s) in flight: "
                        f"let them finish, or 'faas local stop' to cancel them"
                    )
                notice(f"replacing the local faas daemon (pid {info['pid']}, faas "
                       f"{info['version']}) with faas {build_id()}")
                _stop(info)
            else:
                notice(f"the local faas daemon (pid {info['pid']}) is gone; starting a new one "
                       f"(logs: {home / 'logs'})")
                _stop_worker(info)
            (home / INFO_FILE).unlink(missing_ok=True)
        return _start(home, idle_minutes if idle_minutes is not None else idle_minutes_default(),
                      memory, port)


def ask_daemon(home: Path, info: dict[str, Any], timeout: float = 10.0) -> Cluster:
    """What a live daemon says of itself (its cluster info: runs, idle time, workers).

    Raises FaasError when it does not answer."""
    import asyncio

    from faas.client.client import Client
    from faas.protocol.auth import ADMIN_TOKEN, load_token

    async def ask() -> Cluster:
        return await Client(info["address"], token=load_token(home / ADMIN_TOKEN)).info()

    try:
        return asyncio.run(asyncio.wait_for(ask(), timeout))
    except TimeoutError:
        raise FaasError(f"the local faas daemon on {info['address']} did not answer "
                        f"within {timeout:.0f} s") from None


def _runs_in_flight(home: Path, info: dict[str, Any]) -> int:
    """How many runs a live daemon has going; 0 when it cannot say."""
    try:
        return ask_daemon(home, info).runs
    except (FaasError, OSError, ValueError):
        return 0


def _start(home: Path, idle_minutes: float, memory: str | None, port: int) -> dict[str, Any]:
    log = home / "logs" / "daemon.log"
    args = [sys.executable, "-m", "faas.faasd", "local", "--home", str(home),
            "--idle", repr(idle_minutes), "--listen", f"127.0.0.1:{port}"]
    if memory:
        args += ["--memory", memory]
    start_offset = log.stat().st_size if log.exists() else 0
    # Its own session: no terminal, so a Ctrl-C or a closed terminal never reaches it.
    pid = os.posix_spawn(
        sys.executable, args, dict(os.environ, PYTHONUNBUFFERED="1"), setsid=True,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            info = read_info(home)
        except FaasError:
            info = None  # being written
        if info is not None and info.get("pid") == pid:
            return info
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise FaasError(
                f"the local faas daemon did not start: {_last_error(log, start_offset)} "
                f"(log: {log})"
            )
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    raise FaasError(f"the local faas daemon did not start within {START_TIMEOUT:.0f} s (log: {log})")


def _last_error(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].removeprefix("faasd: error: ")


def _wait_gone(pid: int, role: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_daemon(pid, role):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, role: str) -> None:
    """SIGTERM a ``faasd ROLE`` process, SIGKILL if it does not go in time."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, role, STOP_TIMEOUT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, role, 5)


def _stop(info: dict[str, Any]) -> None:
    """Stop the daemon (it stops its worker and removes daemon.json), then whatever of its
    worker is left."""
    _terminate(info["pid"], "local")
    _stop_worker(info)


def _stop_worker(info: dict[str, Any]) -> None:
    """A worker left by a daemon that died (its parent-death signal also stops it)."""
    pid = info.get("worker_pid")
    if isinstance(pid, int) and _is_daemon(pid, "worker"):
        _terminate(pid, "worker")


def stop_daemon(home: Path, *, notice: Notice) -> dict[str, Any] | None:
    """Stop the home's daemon; what daemon.json said of it, or None if none was running."""
    path = home / INFO_FILE
    if not path.exists():
        return None
    with _Lock(home):
        try:
            info = read_info(home)
        except FaasError:
            path.unlink(missing_ok=True)
            notice(f"removed {path}, which was not a faas daemon record")
            return None
        if info is None:
            return None
        if _is_daemon(info["pid"]):
            _stop(info)
        else:
            _stop_worker(info)
            info = {**info, "dead": True}
        path.unlink(missing_ok=True)
        return info


def status(home: Path) -> dict[str, Any] | None:
    """daemon.json of the home's daemon, if one is running."""
    info = read_info(home)
    if info is None or not _is_daemon(info["pid"]):
        return None
    return info
