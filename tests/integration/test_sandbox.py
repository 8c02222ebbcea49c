"""Hostile functions against real daemons: what a function's sandbox keeps from it.

Each test submits a project whose function attacks what it should not touch (its inputs,
the column cache, the token, the worker's environment, the network, the host's processes,
the worker's memory) and checks that the attack failed, that nothing it aimed at changed,
and that the daemons kept serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    IMPORT_ROOTS,
    ROOT,
    Cluster,
    import_territories,
    one_line_error,
    scheduler_only,
    start_daemon,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.timeout(240)

# What the tampering functions below share: try an action, print what happened.
ATTEMPT = '''

def attempt(what, path, how, action):
    try:
        action()
        outcome = "DONE"
    except OSError as exc:
        outcome = type(exc).__name__
    print(f"ATTEMPT {{what}} {{how}} {{outcome}} {{path}}")


def write_open(path):
    with open(path, "r+b") as f:
        f.write(b"Hacked")
'''

# Tries every way to change each Arrow file it has mapped (its input object, the cached
# columns of its scan) and the worker's object and column directories; prints what happened.
TAMPER = '''
import mmap
import os
import faas

SHM = {shm!r}
''' + ATTEMPT + '''

def write_mmap(path):
    fd = os.open(path, os.O_RDONLY)
    view = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    view[:6] = b"Hacked"


def find_stores():
    # The worker's store, by its path on the host: it is not there for the function.
    found = []
    for top, dirs, _ in os.walk(SHM):
        found += [os.path.join(top, d) for d in dirs if d in ("objects", "columns")]
    return found


@faas.model()
def copied(t=faas.Model("territories")):
    return t


@faas.model(materialize="replace")
def tamper(c=faas.Model("copied"), t=faas.Model("territories")):
    mapped = sorted({{line.split()[-1] for line in open("/proc/self/maps")
                      if line.rstrip().endswith(".arrow")}})
    for path in mapped:
        what = "column" if os.path.basename(path).startswith("col-") else "object"
        attempt(what, path, "open", lambda: write_open(path))
        attempt(what, path, "mmap", lambda: write_mmap(path))
        attempt(what, path, "unlink", lambda: os.unlink(path))
        attempt(what, path, "rename", lambda: os.rename(path, path + ".x"))
    print(f"STORES {{len(find_stores())}}")
    return c
'''


def test_a_function_cannot_change_its_inputs_or_the_column_cache(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    assert cluster.shm_dir is not None
    project = write_project(tmp_path, TAMPER.format(shm=str(cluster.shm_dir)))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    tried = [tuple(line.split()[2:5]) for line in out.splitlines() if " ATTEMPT " in line]
    # It had an input object and cached columns mapped, and every write failed.
    assert {what for what, _, _ in tried} == {"object", "column"}, out
    assert {how for _, how, _ in tried} == {"open", "mmap", "unlink", "rename"}, out
    assert all(outcome != "DONE" for _, _, outcome in tried), out
    assert "STORES 0" in out, out
    # The cache still holds the table as it is: a different project reads it through the
    # cache (no Hacked rows, the same rows as the source file).
    other = write_project(tmp_path, '''
        import faas

        @faas.model(materialize="replace")
        def regions(t=faas.Model("territories", columns=["Region", "Country"])):
            return t
    ''', name="other")
    proc = cluster.faas("submit", str(other), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = cluster.json("query", "SELECT Country, count(*) AS n FROM adventure.regions GROUP BY ALL")
    text = (example_data / "territories.csv").read_text()
    assert "Hacked" not in str(rows)
    assert sum(r["n"] for r in rows) == len(text.strip().splitlines()) - 1
    assert {r["Country"] for r in rows} == {
        line.split(",")[2] for line in text.strip().splitlines()[1:]
    }
    assert cluster.alive()


# Under --no-cache a function is handed the warehouse's own data files of its scan: it
# tries to change each one it finds under the worker's shared memory; prints what happened.
HANDED = '''
import os
import faas

SHM = {shm!r}
''' + ATTEMPT + '''


@faas.model(materialize="replace")
def handed(t=faas.Model("territories")):
    files = [os.path.join(top, name) for top, _, names in os.walk(SHM)
             if os.path.basename(top).startswith("scan-") for name in names]
    print(f"HANDED {{len(files)}}")
    for path in files:
        attempt("data", path, "open", lambda: write_open(path))
        attempt("data", path, "truncate", lambda: os.truncate(path, 0))
        attempt("data", path, "unlink", lambda: os.unlink(path))
        attempt("data", path, "rename", lambda: os.rename(path, path + ".x"))
    return t
'''


def test_a_function_cannot_change_the_data_files_of_its_scan(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    """The data files a --no-cache scan hands over are the warehouse's own, bound read-only:
    every way to change them fails, and the table reads as it was."""
    import_territories(cluster, example_data)
    assert cluster.shm_dir is not None
    data = sorted(cluster.home.glob("**/territories-*/data/**/*.parquet"))
    assert data, "no data file of territories in the warehouse"
    before = {p: p.read_bytes() for p in data}
    project = write_project(tmp_path, HANDED.format(shm=str(cluster.shm_dir)))
    proc = cluster.faas("submit", str(project), "-n", "adventure", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert f"HANDED {len(data)}" in out, out
    tried = [tuple(line.split()[2:5]) for line in out.splitlines() if " ATTEMPT " in line]
    assert {how for _, how, _ in tried} == {"open", "truncate", "unlink", "rename"}, out
    assert all(outcome != "DONE" for _, _, outcome in tried), out
    assert {p: p.read_bytes() for p in data} == before
    rows = cluster.json("query", "SELECT count(*) AS n FROM adventure.territories")
    text = (example_data / "territories.csv").read_text()
    assert rows == [{"n": len(text.strip().splitlines()) - 1}]
    assert cluster.alive()


PEEK = '''
import glob
import os
import socket
import faas


def found(label, ok):
    print(f"PEEK {{label}} {{'FOUND' if ok else 'hidden'}}")


@faas.model(materialize="replace"{internet})
def peek(t=faas.Model("territories")):
    try:
        found("token", bool(open({token!r}).read()))
    except OSError:
        found("token", False)
    found("secret-env", "{secret}" in repr(dict(os.environ)))
    seen = ""
    for name in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
        try:
            seen += open(name, "rb").read().decode("latin-1")
        except OSError:
            pass
    found("secret-proc", "{secret}" in seen)
    found("token-path-proc", {token!r} in seen)
    # The scheduler's home (catalog, logs, warehouse): not even its path, though this
    # model's output is written into a staging directory in that warehouse.
    found("catalog", os.path.exists({home!r}))
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
        found("network", True)
    except OSError as exc:
        print(f"NETWORK {{exc}}")
        found("network", False)
    return t
'''


def _peeks(out: str) -> dict[str, str]:
    return {line.split()[2]: line.split()[3] for line in out.splitlines() if " PEEK " in line}


def test_a_function_sees_no_token_no_worker_environment_and_no_network(
    tmp_path: Path, example_data: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    with scheduler_only(tmp_path) as c:
        c.add_worker(tmp_path, "w", env={"WORKER_SECRET": secret})
        c.wait_workers(1)
        import_territories(c, example_data)
        port = c.address.rpartition(":")[2]
        fields = dict(token=str(c.worker_token), secret=secret, home=str(c.home), port=port)
        for internet, network in (("", "hidden"), (", internet_access=True", "FOUND")):
            project = write_project(tmp_path, PEEK.format(internet=internet, **fields),
                                    name=f"p{bool(internet)}")
            if internet:  # the plan says which functions may reach the network
                plan = c.faas("submit", str(project), "-n", "adventure", "--dry-run")
                assert "internet access" in plan.stdout, plan.stdout
            proc = c.faas("submit", str(project), "-n", "adventure")
            assert proc.returncode == 0, proc.stderr
            peeks = _peeks(proc.stdout + proc.stderr)
            assert peeks == {
                "token": "hidden", "secret-env": "hidden", "secret-proc": "hidden",
                "token-path-proc": "hidden", "catalog": "hidden", "network": network,
            }, proc.stdout + proc.stderr
            # Its output went into the warehouse all the same.
            assert c.json("table", "get", "adventure.peek")["rows"] == 10
        assert c.alive()


ESCAPE = '''
import subprocess
import sys
import faas


@faas.model(materialize="replace")
def escape(t=faas.Model("territories")):
    # A grandchild in a session of its own, that would outlive its function.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return t
'''


def _running(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except (OSError, ValueError):
            continue
    return pids


def test_a_setsid_grandchild_is_gone_when_its_function_ends(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    marker = f"faas-escape-{uuid.uuid4().hex}"
    project = write_project(tmp_path, ESCAPE.format(marker=marker))
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: not _running(marker), "the grandchild to be gone", timeout=10)
    assert cluster.alive()


SCRATCH = '''
import faas


@faas.model(materialize="replace", memory="64MiB")
def scratch(t=faas.Model("territories")):
    with open("/tmp/big", "wb") as f:
        for _ in range(300):
            f.write(b"x" * 2**20)
    return t
'''


def test_scratch_writes_past_the_reservation_stop_the_function_with_the_memory_error(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    project = write_project(tmp_path, SCRATCH)
    proc = cluster.faas("submit", str(project), "-n", "adventure")
    assert proc.returncode != 0
    assert "model 'scratch' used" in proc.stderr and "over its limit of 128 MiB" in proc.stderr, (
        proc.stderr
    )
    assert "retrying once with 128 MiB" in proc.stderr
    assert cluster.alive()
    # The worker goes on running functions.
    ok = write_project(tmp_path, SCRATCH.replace("range(300)", "range(8)"), name="ok")
    proc = cluster.faas("submit", str(ok), "-n", "adventure")
    assert proc.returncode == 0, proc.stderr


def test_a_worker_that_cannot_build_sandboxes_refuses_to_start_unless_told_none(
    tmp_path: Path, example_data: Path
) -> None:
    # A user namespace in which no more user namespaces may be made: no sandbox there.
    no_userns = ["unshare", "--user", "--map-root-user", "sh", "-c",
                 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh"]
    with scheduler_only(tmp_path) as c:
        log = tmp_path / "refused.log"
        proc = subprocess.run(
            [*no_userns, sys.executable, "-m", "faas.faasd", "worker", "--scheduler", c.address,
             "--token-file", str(c.worker_token), "--shm-dir", str(tmp_path / "shm-r")],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert proc.returncode != 0
        line = one_line_error(proc, "cannot build function sandboxes on this host",
                              "--isolation none")
        assert "unshare" in line
        log.write_text(proc.stderr)
        worker, _ = start_daemon(
            ["worker", "--scheduler", c.address, "--token-file", str(c.worker_token),
             "--shm-dir", str(tmp_path / "shm-n"), "--isolation", "none", *IMPORT_ROOTS],
            "faasd worker", tmp_path / "none.log", prefix=no_userns,
        )
        c.workers.append(worker)
        c.wait_workers(1)
        assert "functions run without a sandbox (--isolation none)" in (tmp_path / "none.log").read_text()
        assert [w["isolation"] for w in c.json("info")["workers"]] == ["none"]
        assert "NO SANDBOX" in c.faas("info").stdout
        import_territories(c, example_data)
        project = write_project(tmp_path, "import faas\n\n@faas.model()\ndef m(t=faas.Model('territories')):\n    return t\n")
        proc = c.faas("submit", str(project), "-n", "adventure")
        assert proc.returncode == 0, proc.stderr
