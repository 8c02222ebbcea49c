"""Bad input gets one clear line, a non-zero exit, no traceback; the daemons keep serving."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from faas.protocol.blocking import parse_address
from tests.conftest import Cluster, one_line_error

pytestmark = pytest.mark.timeout(180)




def test_missing_project_dir(cluster: Cluster, tmp_path: Path) -> None:
    proc = cluster.faas("submit", str(tmp_path / "nope"), "--namespace", "adventure")
    one_line_error(proc, "does not exist", "nope")


def test_model_reading_a_missing_table(cluster: Cluster, tmp_path: Path) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "models.py").write_text(
        "import faas\n\n\n@faas.model()\ndef m(x=faas.Model('salez')):\n    return x\n"
    )
    proc = cluster.faas("submit", str(tmp_path / "p"), "--namespace", "adventure")
    one_line_error(proc, "models.py:5", "'salez'", "adventure.salez")
    assert cluster.alive()


def test_bad_csv(cluster: Cluster, tmp_path: Path) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,b,c\r\n1,2,3\r\n4,5\r\n6,7,8,9\r\n")
    proc = cluster.faas("table", "import", "adventure.bad", str(bad))
    one_line_error(proc, "bad.csv")
    ls = cluster.faas("table", "ls", "--json", check=True)
    assert "adventure.bad" not in ls.stdout
    assert cluster.alive()


def test_files_that_disagree_are_imported_by_an_edited_plan(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two CSVs whose columns disagree: one error naming both files; --plan writes the plan,
    a person edits it, --apply imports by it."""
    (tmp_path / "a.csv").write_text("id,code\n1,007\n2,008\n")
    (tmp_path / "b.csv").write_text("id,code,note\n3,abc,late\n")
    files = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    cluster.faas("namespace", "create", "shop", check=True)
    proc = cluster.faas("table", "import", "shop.codes", *files)
    one_line_error(proc, "the 2 files disagree on 2 columns", "'code' (int64 in a.csv; string "
                   "in b.csv)", "'note' (missing from a.csv)", "--plan")
    assert cluster.json("table", "ls", "--namespace", "shop") == []

    plan = tmp_path / "plan.toml"
    said = cluster.faas("table", "import", "shop.codes", *files, "--plan", str(plan), check=True)
    assert f"--apply {plan}" in said.stdout
    text = plan.read_text()
    assert '[columns."code"]\ntype = "string"' in text and '[columns."note"]' in text
    assert cluster.json("table", "ls", "--namespace", "shop") == []  # a plan imports nothing
    # The person wants the ids as text too.
    plan.write_text(text.replace('[columns."id"]\ntype = "int64"', '[columns."id"]\ntype = "string"'))
    cluster.faas("table", "import", "shop.codes", *files, "--apply", str(plan), check=True)
    rows = cluster.json("query", "SELECT * FROM codes ORDER BY id", "-n", "shop")
    assert rows == [{"id": "1", "code": "007", "note": None}, {"id": "2", "code": "008", "note": None},
                    {"id": "3", "code": "abc", "note": "late"}]

    plan.write_text("[columns.id]\nfill = 3\n")
    one_line_error(cluster.faas("table", "import", "shop.codes", *files, "--apply", str(plan)),
                   str(plan), "column 'id' needs type")


def test_missing_import_file(cluster: Cluster, tmp_path: Path) -> None:
    cluster.faas("namespace", "create", "adventure", check=True)
    proc = cluster.faas("table", "import", "adventure.x", str(tmp_path / "none-*.csv"))
    one_line_error(proc, "none-*.csv")


def test_wrong_token(cluster: Cluster, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    env_token = cluster.token_file
    cluster.token_file = wrong
    try:
        proc = cluster.faas("namespace", "ls")
    finally:
        cluster.token_file = env_token
    one_line_error(proc, "token")
    assert cluster.alive()
    cluster.faas("namespace", "ls", check=True)


def test_unknown_namespace(cluster: Cluster) -> None:
    proc = cluster.faas("table", "ls", "--namespace", "ghost", "--json")
    one_line_error(proc, "namespace 'ghost' does not exist at ref 'main'")


def test_wrong_ref(cluster: Cluster) -> None:
    proc = cluster.faas("table", "ls", "--ref", "nosuchbranch")
    one_line_error(proc, "nosuchbranch")


def test_submit_into_missing_namespace(cluster: Cluster) -> None:
    from tests.conftest import EXAMPLE

    proc = cluster.faas("submit", str(EXAMPLE), "--namespace", "ghost")
    one_line_error(proc, "namespace 'ghost' does not exist", "faas namespace create ghost")


def test_unknown_cluster_address(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    token = tmp_path / "token"
    token.write_text("someone:" + "ab" * 32 + "\n")  # a user token: the address is what is wrong
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "faas.client.cli", "--cluster", f"127.0.0.1:{port}", "--token-file",
         str(token), "namespace", "ls"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    one_line_error(proc, f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff" + os.urandom(64),  # a huge length prefix
        b"\x00\x00\x00\x10" + os.urandom(16),  # a small frame of noise
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the wrong protocol entirely
    ],
)
def test_garbage_to_scheduler(cluster: Cluster, garbage: bytes) -> None:
    host, port = parse_address(cluster.address)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(garbage)
        s.settimeout(10)
        chunks = b""
        while True:  # the scheduler closes the connection instead of waiting for more
            data = s.recv(65536)
            if not data:
                break
            chunks += data
    assert cluster.alive()
    cluster.faas("namespace", "ls", check=True)


def test_malformed_frame_after_handshake_gets_a_typed_error(cluster: Cluster) -> None:
    import msgspec

    from faas.protocol.auth import load_token
    from faas.protocol.connection import connect
    from faas.protocol.messages import Error, ListNamespaces
    from faas.protocol.replies import ClientReply, Namespaces

    async def go() -> None:
        conn = await connect(
            cluster.address, msgspec.msgpack.Decoder(ClientReply),
            token=load_token(cluster.token_file), role="client", host_id="test",
        )
        await conn.send_raw(b"\x00\x00\x00\x05hello")
        reply = await conn.recv(timeout=10)
        assert isinstance(reply, Error) and reply.kind == "MalformedFrame"
        await conn.send(ListNamespaces())  # the same connection goes on
        assert isinstance(await conn.recv(timeout=10), Namespaces)
        await conn.aclose()

    asyncio.run(go())
    assert cluster.alive()
