"""Workers in network namespaces of their own: hosts with their own addresses.

The test makes two namespaces with ``ip netns``, each joined to this machine by a veth
pair and routed through it, and starts a worker inside each. Objects then travel
between them over a real (virtual) network, from one address to another, as between
machines. Where the machine does not allow namespaces (no root, no ``ip``), the test
says so and does not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.test_dataplane import FAN_OUT, _lines
from tests.conftest import (
    IMPORT_ROOTS,
    Cluster,
    import_territories,
    scheduler_only,
    start_daemon,
    write_project,
)

pytestmark = pytest.mark.timeout(300)


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _netns_allowed() -> str:
    """Why namespaces cannot be made here, or "" if they can."""
    if shutil.which("ip") is None:
        return "the ip command is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"faas-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str, str]]]:
    """Two namespaces: (name, this machine's address on its link, its own address)."""
    why = _netns_allowed()
    if why:
        pytest.skip(f"network namespaces are not available: {why}")
    tag = uuid.uuid4().hex[:5]
    made: list[tuple[str, str, str]] = []
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    was = forward.read_text().strip()
    try:
        forward.write_text("1\n")  # this machine routes between the namespaces
        for i in (1, 2):
            ns, outside, inside = f"faas-{tag}-{i}", f"fo{tag}{i}", f"fi{tag}{i}"
            subnet = f"10.{200 + i}.{int(tag[:2], 16) % 250}"
            _ip("netns", "add", ns)
            made.append((ns, f"{subnet}.1", f"{subnet}.2"))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("addr", "add", f"{subnet}.1/24", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("addr", "add", f"{subnet}.2/24", "dev", inside, ns=ns)
            _ip("link", "set", inside, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("route", "add", "default", "via", f"{subnet}.1", ns=ns)
        yield made
    finally:
        for ns, _, _ in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth goes too
        forward.write_text(f"{was}\n")


def test_workers_in_their_own_network_namespaces_exchange_objects(
    namespaces: list[tuple[str, str, str]], example_data: Path, tmp_path: Path
) -> None:
    with scheduler_only(tmp_path, listen="0.0.0.0:0") as c:
        _run_across_namespaces(c, namespaces, example_data, tmp_path)


def _run_across_namespaces(
    c: Cluster, namespaces: list[tuple[str, str, str]], example_data: Path, tmp_path: Path
) -> None:
    port = c.address.rpartition(":")[2]
    for ns, gateway, own in namespaces:
        proc, data = start_daemon(
            ["worker", "--scheduler", f"{gateway}:{port}", "--listen", f"{own}:0",
             "--host-id", ns, "--memory", "3GiB", "--token-file", str(c.worker_token),
             "--shm-dir", str(tmp_path / f"shm-{ns}"), "--spill-dir", str(tmp_path / f"spill-{ns}"),
             "--env-dir", str(tmp_path / "envs"), *IMPORT_ROOTS],
            "faasd worker", tmp_path / f"{ns}.log",
            prefix=["ip", "netns", "exec", ns],
        )
        c.workers.append(proc)
        assert data.startswith(own), data  # it serves objects on its namespace's address
    c.wait_workers(2)
    import_territories(c, example_data)
    proc = c.faas("submit", str(write_project(tmp_path, FAN_OUT)), "-n", "adventure", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    hosts = {w["worker_id"]: w["host_id"] for w in c.json("info")["workers"]}
    nodes = c.json("job", "get", result["run_id"])["nodes"]
    where = {n: hosts[nodes[n]["worker"]] for n in ("produced", "west", "east")}
    assert where["west"] != where["east"], where
    puller = "west" if where["west"] != where["produced"] else "east"
    log = (tmp_path / f"{where[puller]}.log").read_text()
    assert "pulled object" in log
    (line,) = [ln for ln in _lines(result, puller) if ln.startswith("BACKED BY")]
    assert f"shm-{where[puller]}" in line, line
    summary = "SELECT count(*) AS n, sum(k) AS k FROM {}"
    for table in ("west", "east"):
        assert c.json("query", summary.format(table), "-n", "adventure") == [
            {"n": 3_000_000, "k": str(4_499_998_500_000)}
        ]
