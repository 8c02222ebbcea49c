"""Fixtures that start real daemons as separate processes on 127.0.0.1 port 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from faas.faasd.launch import spawn_daemon, stop_daemon, stop_daemons, wait_ready
from faas.faasd.launch import start_daemon as _start_daemon
from faas.protocol.auth import ADMIN_TOKEN
from tests.pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

if TYPE_CHECKING:
    from faas.store.catalog import VersionedCatalog
    from faas.store.lakehouse import Lakehouse

ROOT = Path(__file__).resolve().parents[1]


def start_daemon(
    args: list[str], marker: str, log: Path, env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    return _start_daemon(args, marker, log, cwd=ROOT, env=env, prefix=prefix)
EXAMPLE = ROOT / "examples" / "adventureworks"
# Where test workers may import files from: the tests' temporary files and the checkout.
IMPORT_ROOTS = ("--import-root", tempfile.gettempdir(), "--import-root", str(ROOT))
SOURCE_TABLES = ("product", "product_category", "product_subcategory", "sale", "territories")


T = TypeVar("T")


# A project's way to wait at a Gate: ``wait_gate(ADDRESS)`` returns once the test opens it.
GATE_CODE = '''
def wait_gate(address):
    import socket
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"+")
        conn.recv(1)
'''


class Gate:
    """Where a test's functions wait until the test lets them go: a TCP server on loopback.

    A function's sandbox shares no file with the test, so functions that wait for it reach
    it over the network they ask for (``internet_access=True``) with :data:`GATE_CODE`.
    ``touch()`` opens the gate (named so a test reads as with a release file)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.lock = threading.Lock()
        self.waiting: list[socket.socket] = []
        self.arrived = 0
        self.opened = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.recv(1)
            with self.lock:
                self.arrived += 1
                if self.opened:
                    conn.sendall(b"g")
                    conn.close()
                else:
                    self.waiting.append(conn)

    def started(self) -> bool:
        """Whether a function has come to the gate."""
        with self.lock:
            return self.arrived > 0

    def touch(self) -> None:
        with self.lock:
            self.opened = True
            for conn in self.waiting:
                with contextlib.suppress(OSError):
                    conn.sendall(b"g")
                conn.close()
            self.waiting.clear()

    def close(self) -> None:
        self.touch()
        self.server.close()


def gated_project(tmp: Path, gate: Gate) -> Path:
    """A project whose one model (``waits``, never cached) reads ``territories``, prints
    "before the gate", waits at ``gate``, then prints "after the gate"."""
    project = tmp / "gated"
    project.mkdir(exist_ok=True)
    (project / "models.py").write_text(GATE_CODE + f'''
import faas


@faas.model(cache=False, internet_access=True)
def waits(t=faas.Model("territories")):
    print("before the gate", flush=True)
    wait_gate({gate.address!r})
    print("after the gate", flush=True)
    return t
''')
    return project


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.close()


def function_pid(node: str) -> int | None:
    """The host pid of the running function process of ``node`` (its process name is
    ``faas:NODE``, cut to 15 bytes), or None."""
    name = f"faas:{node}"[:15]
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == name:
                    return int(pid)
        except (OSError, ValueError):
            continue
    return None


def wait_until(condition: Callable[[], T | None], what: str, timeout: float = 60,
               every: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; if
    ``timeout`` seconds pass first, fail the test saying what it waited for."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"waited {timeout:g}s for {what}"
        time.sleep(every)
    return result


class FaasCli:
    """Runs the `faas` CLI in a subprocess with the environment its ``env()`` gives."""

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def faas(self, *args: str, check: bool = False, timeout: float = 180,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``faas ARGS``; with ``check``, a failure raises with its output."""
        proc = subprocess.run(
            [sys.executable, "-m", "faas.client.cli", *args], env=env or self.env(), cwd=ROOT,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"faas {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        """Run a `faas` command with --json; what it printed, parsed."""
        return json.loads(self.faas(*args, "--json", check=True).stdout)


@dataclass
class Cluster(FaasCli):
    """A scheduler and its workers. ``token_file``: its admin user's token, what clients
    use; ``worker_token``: the cluster token, what workers (and only they) use."""

    home: Path
    address: str
    token_file: Path
    worker_token: Path
    scheduler: subprocess.Popen[str]
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    data_addresses: list[str] = field(default_factory=list)
    shm_dir: Path | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FAAS_CLUSTER"] = self.address
        env["FAAS_TOKEN_FILE"] = str(self.token_file)
        env["FAAS_HOME"] = str(self.home)
        return env

    def add_worker(
        self, tmp: Path, name: str, *args: str, env: dict[str, str] | None = None
    ) -> Path:
        """Start one more worker (its own shm directory, shared environments); return its
        shm directory. ``args``: more flags, such as --host-id or --memory."""
        shm = tmp / f"shm-{name}"
        proc, address = start_daemon(
            ["worker", "--scheduler", self.address, "--token-file", str(self.worker_token),
             *IMPORT_ROOTS,
             "--shm-dir", str(shm), "--env-dir", str(tmp / "envs"),
             "--spill-dir", str(tmp / f"spill-{name}"), *args],
            "faasd worker", tmp / f"{name}.log", env=env,
        )
        self.workers.append(proc)
        self.data_addresses.append(address)
        return shm

    def wait_workers(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:

        def enough() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = self.json("info")["workers"]
            return found if len(found) >= n else None

        return wait_until(enough, f"{n} workers to register", timeout=timeout, every=0.2)

    def alive(self) -> bool:
        return self.scheduler.poll() is None and all(w.poll() is None for w in self.workers)


@contextmanager
def scheduler_only(
    tmp: Path, listen: str = "127.0.0.1:0", env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A scheduler (``env``: its environment; ``args``: more flags) and no worker yet: tests
    add workers as hosts of their own; every daemon started for the cluster is stopped at
    the end."""
    home = tmp / "home"
    home.mkdir()
    token_file = home / "token"
    token_file.write_text("test-cluster-token-" + os.urandom(8).hex() + "\n")
    sched, address = start_daemon(
        ["scheduler", "--listen", listen, "--home", str(home), "--token-file", str(token_file),
         *args],
        "faasd scheduler listening on", tmp / "scheduler.log", env=env,
    )
    port = address.rpartition(":")[2]
    c = Cluster(home=home, address=f"127.0.0.1:{port}", token_file=home / ADMIN_TOKEN,
                worker_token=token_file, scheduler=sched)
    try:
        yield c
    finally:
        for w in c.workers:
            stop_daemon(w)
        stop_daemon(sched)


@contextmanager
def http_cluster(tmp: Path, data: Path) -> Iterator[Cluster]:
    """A scheduler serving HTTP (Iceberg REST and the console) and one worker; main has
    adventure.territories and tag v1; branch dev also adventure.more."""
    with scheduler_only(tmp, args=["--http", "127.0.0.1:0"]) as c:
        c.add_worker(tmp, "w")
        c.wait_workers(1)
        import_territories(c, data)
        c.faas("tag", "create", "v1", check=True)
        c.faas("branch", "create", "dev", "--from", "main", check=True)
        c.faas("table", "import", "adventure.more", str(data / "territories.csv"),
               "--ref", "dev", check=True)
        yield c


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    home = tmp_path / "home"
    home.mkdir()
    token_file = home / "token"
    token_file.write_text("test-cluster-token-" + os.urandom(8).hex() + "\n")
    shm = tmp_path / "shm"
    # The scheduler and its worker start side by side (the worker connects as soon as the
    # scheduler listens), on a port chosen here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    sched = spawn_daemon(
        ["scheduler", "--listen", address, "--home", str(home), "--token-file", str(token_file)],
        tmp_path / "scheduler.log", cwd=ROOT,
    )
    worker = spawn_daemon(
        ["worker", "--scheduler", address, "--token-file", str(token_file), "--shm-dir", str(shm),
         *IMPORT_ROOTS,
         "--env-dir", str(tmp_path / "envs"), "--spill-dir", str(tmp_path / "spill")],
        tmp_path / "worker.log", cwd=ROOT,
    )
    c = Cluster(home=home, address=address, token_file=home / ADMIN_TOKEN, worker_token=token_file,
                scheduler=sched, shm_dir=shm, workers=[worker])
    try:
        wait_ready(sched, "faasd scheduler listening on", tmp_path / "scheduler.log")
        c.data_addresses.append(wait_ready(worker, "faasd worker", tmp_path / "worker.log"))
        yield c
    finally:
        stop_daemons([*c.workers, sched])


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog database for one test, on each catalog backend.

    The PostgreSQL server starts on first use, once per session; without its
    binaries the postgresql cases are skipped (see tests/pg.py).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def catalog(catalog_uri: str) -> Iterator[VersionedCatalog]:
    """A catalog whose main holds namespace ``ns`` and table ``ns.t`` (at location ``t1``)."""
    from faas.store.catalog import ROOT_COMMIT, Change, VersionedCatalog

    vc = VersionedCatalog(catalog_uri)
    try:
        vc.commit("main", ROOT_COMMIT, [Change("ns", "namespace", "{}")], "create ns")
        vc.commit("main", vc.head("main"), [Change("ns.t", "table", "t1")], "t1")
        yield vc
    finally:
        vc.close()


OpenLake = Callable[..., "Lakehouse"]


@pytest.fixture
def open_lake(tmp_path: Path) -> Iterator[OpenLake]:
    """Opens the test's lakehouse (under its directory) with the namespaces named;
    ``options`` are Lakehouse's (warehouse, catalog). All are closed after the test."""
    from faas.store.lakehouse import Lakehouse

    opened: list[Lakehouse] = []

    def open_(*namespaces: str, **options: Any) -> Lakehouse:
        lake = Lakehouse(tmp_path / "home", **options)
        opened.append(lake)
        for namespace in namespaces:
            lake.create_namespace(namespace)
        return lake

    try:
        yield open_
    finally:
        for lake in opened:
            lake.close()


@pytest.fixture(scope="session")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's source CSVs, small."""
    out = tmp_path_factory.mktemp("adventureworks")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--rows", "3000", "--out", str(out)],
        check=True, capture_output=True,
    )
    return out


def as_from_a_terminal() -> None:
    """For a CLI a test interrupts as Ctrl-C would (``preexec_fn``): SIGINT at its default,
    as a terminal's foreground job has it, even when the suite itself was started in the
    background by a shell that ignores SIGINT for its background jobs (and so for ours)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a command failed with exactly one error line, no traceback, naming ``needles``."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def import_territories(c: Cluster, data: Path, namespace: str = "adventure") -> None:
    """A namespace with the example's smallest table, for pipelines that need a source."""
    c.faas("namespace", "create", namespace, check=True)
    c.faas("table", "import", f"{namespace}.territories", str(data / "territories.csv"), check=True)


def add_user(c: Cluster, tmp: Path, name: str, role: str) -> Path:
    """``faasd user add``, as an operator runs it on the scheduler's host; the token file."""
    proc = subprocess.run(
        [sys.executable, "-m", "faas.faasd", "user", "add", name, "--role", role,
         "--home", str(c.home)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    token = tmp / f"{name}.token"
    token.write_text(proc.stdout)
    assert proc.stdout.startswith(f"{name}:") and f"user {name} ({role})" in proc.stderr
    return token


def write_project(tmp: Path, text: str, name: str = "p") -> Path:
    """A project directory holding ``text`` (dedented) as models.py."""
    root = tmp / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(textwrap.dedent(text))
    return root


def import_example(c: Cluster, data: Path, namespace: str = "adventure") -> None:
    c.faas("namespace", "create", namespace, check=True)
    for t in SOURCE_TABLES:
        c.faas("table", "import", f"{namespace}.{t}", str(data / f"{t}.csv"), check=True)


# -- the resident local daemon (embedded mode) -------------------------------------------

# A daemon a test forgot would stop by itself after this long (minutes); fixtures stop
# theirs at once, and the session's end removes any that remain.
os.environ.setdefault("FAAS_LOCAL_IDLE", "10")


@dataclass
class LocalHome(FaasCli):
    """A FAAS_HOME used without a cluster address: commands start its resident daemon."""

    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FAAS_CLUSTER", "FAAS_TOKEN_FILE")}
        env["FAAS_HOME"] = str(self.home)
        env.update(extra)
        return env

    def info(self) -> dict[str, Any]:
        return json.loads((self.home / "daemon.json").read_text())  # type: ignore[no-any-return]

    def daemons(self) -> list[int]:
        """Pids of live faasd processes (daemon or worker) started for this home: each
        names a path inside it."""
        return [pid for pid, cmd in faasd_processes() if str(self.home) in cmd]

    def stop(self) -> None:
        self.faas("local", "stop", timeout=60)
        for pid in self.daemons():
            _kill(pid)


def faasd_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every live faasd process on this machine."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        daemon = any(a == "faas.faasd" or a.rsplit("/", 1)[-1] == "faasd" for a in cmd)
        if daemon and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append((p.pid, " ".join(cmd)))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalHome]:
    h = LocalHome(tmp_path / "home")
    try:
        yield h
    finally:
        h.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No faasd process a test started outlives the suite: each names a path of its test."""
    base = str(session.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    for pid, cmd in faasd_processes():
        if base in cmd:
            _kill(pid)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that reach a PostgreSQL server are marked ``postgresql`` (``-m "not
    postgresql"`` leaves them out)."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = "postgres_url" in getattr(item, "fixturenames", ()) or (
            params is not None and params.params.get("catalog_uri") == "postgresql"
        )
        if on_postgres:
            item.add_marker(pytest.mark.postgresql)
