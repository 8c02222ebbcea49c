"""Users and roles against a real scheduler: what a reader, a writer and an admin may do,
and that a user's token never makes anyone a worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from faas.protocol.auth import load_token
from faas.protocol.connection import connect
from faas.protocol.errors import HandshakeFailed
from faas.protocol.replies import ClientReply
from tests.conftest import (
    ROOT,
    Cluster,
    add_user,
    import_territories,
    one_line_error,
    write_project,
)

pytestmark = pytest.mark.timeout(240)

PROJECT = '''
import faas


@faas.model(materialize="replace")
def copied(t=faas.Model("territories")):
    return t
'''




def as_user(c: Cluster, token: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**c.env(), "FAAS_TOKEN_FILE": str(token)}
    return subprocess.run([sys.executable, "-m", "faas.client.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def test_a_reader_reads_and_cannot_submit_import_or_merge(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    reader = add_user(cluster, tmp_path, "rita", "reader")
    project = write_project(tmp_path, PROJECT)
    assert as_user(cluster, reader, "namespace", "ls").returncode == 0
    assert as_user(cluster, reader, "query", "SELECT count(*) FROM adventure.territories").returncode == 0
    assert as_user(cluster, reader, "submit", str(project), "-n", "adventure", "--dry-run").returncode == 0
    for args in (
        ("submit", str(project), "-n", "adventure", "--ref", "dev"),
        ("table", "import", "adventure.again", str(example_data / "territories.csv")),
        ("branch", "create", "mine"),
        ("branch", "merge", "main", "--into", "dev"),
        ("secret", "rm", "token"),
    ):
        line = one_line_error(as_user(cluster, reader, *args), "user 'rita' (reader) may not")
        assert "it needs the writer role" in line or "protected branch" in line, line
    assert [b["name"] for b in cluster.json("branch", "ls")] == ["main"]
    assert as_user(cluster, reader, "secret", "ls").returncode == 0  # names only
    assert cluster.alive()


def test_a_writer_works_on_branches_and_cannot_change_main_which_an_admin_merges(
    cluster: Cluster, example_data: Path, tmp_path: Path
) -> None:
    import_territories(cluster, example_data)
    writer = add_user(cluster, tmp_path, "walt", "writer")
    project = write_project(tmp_path, PROJECT)
    # main is protected: the writer's run, import and merge into it are refused.
    line = one_line_error(as_user(cluster, writer, "submit", str(project), "-n", "adventure"),
                          "user 'walt' (writer) may not change protected branch 'main'")
    assert "ask an admin to merge" in line
    one_line_error(as_user(cluster, writer, "table", "import", "adventure.t2",
                           str(example_data / "territories.csv")), "protected branch 'main'")
    # On a branch of its own, it works; its commits carry its name.
    assert as_user(cluster, writer, "branch", "create", "walt-dev").returncode == 0
    proc = as_user(cluster, writer, "submit", str(project), "-n", "adventure", "--ref", "walt-dev")
    assert proc.returncode == 0, proc.stderr
    log = cluster.json("log", "walt-dev", "-n", "1")
    assert log[0]["author"] == "walt", log
    one_line_error(as_user(cluster, writer, "branch", "merge", "walt-dev", "--into", "main"),
                   "user 'walt' (writer) may not change protected branch 'main'")
    assert "copied" not in cluster.faas("table", "ls", "-n", "adventure", check=True).stdout
    # The admin merges it, as itself.
    cluster.faas("branch", "merge", "walt-dev", "--into", "main", check=True)
    assert cluster.json("log", "main", "-n", "1")[0]["author"] == "admin"
    assert "copied" in cluster.faas("table", "ls", "-n", "adventure", check=True).stdout


def test_no_user_token_makes_a_worker_and_the_cluster_token_makes_no_client(
    cluster: Cluster,
) -> None:
    admin = load_token(cluster.token_file)
    decoder = msgspec.msgpack.Decoder(ClientReply)

    async def go() -> None:
        # A user's token (the admin's, even) proves nothing as a worker...
        with pytest.raises(HandshakeFailed, match="token does not match"):
            await connect(cluster.address, decoder, token=admin, role="worker", host_id="w")
        # ...and the cluster token proves nothing as a client.
        with pytest.raises(HandshakeFailed, match="token does not match"):
            await connect(cluster.address, decoder, token=load_token(cluster.worker_token),
                          role="client", host_id="c")

    asyncio.run(go())
    assert len(cluster.json("info")["workers"]) == 1
    assert cluster.alive()
