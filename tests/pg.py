"""A throwaway PostgreSQL server for tests: one per session, one database per test.

The server binaries come from the distribution's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin`` on Debian and Ubuntu, else ``pg_ctl`` on
PATH); ``.ci/run`` installs it when it runs as root. PostgreSQL refuses to run
as root, so as root the cluster belongs to the ``postgres`` system user the
package creates, and ``initdb``/``pg_ctl`` run as that user through ``runuser``.

The cluster lives in /dev/shm when there is room (a new database per test is
then ~10 ms instead of ~200 ms). A watchdog process stops the server and removes
its directory if the test process dies without tearing down.

Without the binaries the tests that need the server are skipped, naming the
reason, unless ``FAAS_TEST_POSTGRES=required`` (set by ``.ci/run`` once it has
the server), which turns the skip into an error.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

USER = "faas"
_START_ATTEMPTS = 3
_TIMEOUT_S = 60
_RAM_DIR = "/dev/shm"
_RAM_DIR_MIN_FREE = 1 << 30


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL as a user would type it (no password: trust auth)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"


def find_bindir() -> Path | None:
    """The newest PostgreSQL server bin directory, or None."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    if candidates:

        def version(bindir: Path) -> tuple[int, ...]:
            name = bindir.parent.name
            return tuple(int(x) for x in name.split(".") if x.isdigit())

        return max(candidates, key=version)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb", path=str(Path(on_path).parent)):
        return Path(on_path).parent
    return None


def _scratch_parent() -> str | None:
    """/dev/shm when it has room, else the default temporary directory.

    Every test database is a fresh copy of a template of some 300 files; on
    tmpfs that takes about 10 ms, on a disk filesystem about 200 ms.
    """
    try:
        if shutil.disk_usage(_RAM_DIR).free >= _RAM_DIR_MIN_FREE and os.access(_RAM_DIR, os.W_OK):
            return _RAM_DIR
    except OSError:
        pass
    return None


def _free_port() -> int:
    # PostgreSQL cannot listen on port 0 and report the port it got, so take a
    # free one and retry the start if another process grabs it first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a server binary, and the uid/gid to chown to."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, but there is no 'postgres' system user to run the "
            "PostgreSQL test server (the Debian 'postgresql' package creates it)"
        ) from None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid
    prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    return prefix, entry.pw_uid, entry.pw_gid


def _run(cmd: list[str], cwd: Path, log: Path | None = None) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit status {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}{tail}"
        )


def _missing(reason: str) -> NoReturn:
    if os.environ.get("FAAS_TEST_POSTGRES") == "required":
        pytest.fail(f"FAAS_TEST_POSTGRES=required, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1 and a free port."""
    bindir = find_bindir()
    if bindir is None:
        _missing(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/pg_ctl or "
            "pg_ctl on PATH): install the 'postgresql' package; .ci/run does when run as root"
        )
    prefix, uid, gid = _as_server_user()
    # Not under pytest's basetemp: its root-only parent directory would stop the
    # postgres user from reaching the data directory.
    base = Path(tempfile.mkdtemp(prefix="faas-pg-", dir=_scratch_parent()))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    stop = [*pg_ctl, "-m", "immediate", "-w", "stop"]
    watchdog = _start_watchdog(base, stop)
    try:
        sockets.mkdir()
        if uid is not None and gid is not None:
            for path in (base, sockets):
                os.chown(path, uid, gid)
        _run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
             "-E", "UTF8", "--no-locale", "--no-sync"],
            cwd=base,
        )
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            options = (
                f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                _run(
                    [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", str(_TIMEOUT_S),
                     "start"],
                    cwd=base,
                    log=log,
                )
                break
            except RuntimeError:
                # Most likely the port was taken between choosing and binding it.
                if attempt == _START_ATTEMPTS:
                    raise
                _stop(stop, base)
        server = PostgresServer("127.0.0.1", port, USER, data)
        _wait_ready(server)
        yield server
    finally:
        _stop(stop, base)
        shutil.rmtree(base, ignore_errors=True)
        # Nothing left for it to do; it exits on end of input.
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.wait(timeout=_TIMEOUT_S)


def _stop(stop: list[str], cwd: Path) -> None:
    # Fails harmlessly when no server is running.
    subprocess.run(stop, cwd=cwd, capture_output=True, timeout=_TIMEOUT_S, check=False)


# Waits for end of input, which comes when the test process exits however it
# exits (even SIGKILL), then stops the server and removes its directory. Without
# it a killed session would leave a postmaster running and, in /dev/shm, its files.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
base, stop = sys.argv[1], sys.argv[2:]
subprocess.run(stop, cwd=base, capture_output=True, timeout=60, check=False)
shutil.rmtree(base, ignore_errors=True)
"""


def _start_watchdog(base: Path, stop: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(base), *stop],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=base,
        # Its own session: a Ctrl-C meant for pytest must not kill it first.
        start_new_session=True,
    )


def _wait_ready(server: PostgresServer) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            with psycopg.connect(server.conninfo(), connect_timeout=5):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database on the session's server: ``postgresql://faas@127.0.0.1:PORT/t_...``."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        # Copying the files of the tiny template is several times faster than the
        # WAL_LOG default of PostgreSQL 15 (the only way before 15).
        strategy = " STRATEGY = FILE_COPY" if conn.info.server_version >= 150000 else ""
        conn.execute(sql.SQL("CREATE DATABASE {}" + strategy).format(sql.Identifier(name)))
    try:
        yield postgres_server.url(name)
    finally:
        # Each database is a copy of template1 (~7 MB); drop it even if the test
        # left a connection open.
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            # WITH (FORCE) is PostgreSQL 13 and later.
            force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name))
            )
