"""Secrets through real daemons: faas secret set (from stdin), a parameter of type secret
receives the value; it never appears in any log, record, plan or JSON output, nor
anywhere under the daemons' directories (all grepped after the runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster

pytestmark = pytest.mark.timeout(300)

SECRET = "s3cr3t-Value-7f3a9c21"
OTHER = "0ther-Secret-5b6d"

TOML = '''
[parameters.api_key]
type = "secret"
'''

MODELS = '''
import faas


@faas.model(materialize="replace")
@faas.python("3.11")
def calls(t=faas.Model("t"), api_key=faas.Parameter("api_key")):
    import pyarrow as pa
    print(f"calling the service with {api_key}")
    print("key:", api_key[:6], api_key[6:])  # pieces are not the secret
    return pa.table({"key_length": [len(api_key)], "rows": [t.num_rows]})


@faas.model()
@faas.python("3.11")
def fails(calls=faas.Model("calls"), api_key=faas.Parameter("api_key")):
    if FAIL:
        raise ValueError(f"the service refused key {api_key}")
    return calls
'''


def _secret_set(c: Cluster, name: str, value: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faas.client.cli", "secret", "set", name],
                          input=value + "\n", env=c.env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _grep(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` holding ``needle``."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def test_a_secret_reaches_its_function_and_nothing_else(cluster: Cluster, tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("a\n1\n2\n")
    cluster.faas("namespace", "create", "ns", check=True)
    cluster.faas("table", "import", "ns.t", str(csv), check=True)
    project = tmp_path / "p"
    project.mkdir()
    (project / "faas_project.toml").write_text(TOML)
    (project / "models.py").write_text(MODELS.replace("FAIL", "False"))

    # Not set yet: said before anything runs.
    proc = cluster.faas("submit", str(project), "-n", "ns")
    assert proc.returncode == 1 and "secret 'api_key' is not set: store it with 'faas secret " \
        "set api_key'" in proc.stderr, proc.stderr
    assert _secret_set(cluster, "api_key", SECRET).returncode == 0
    listed = cluster.json("secret", "ls")
    assert [s["name"] for s in listed] == ["api_key"] and listed[0]["set_by"] == "admin"

    # A value on the command line is refused.
    proc = cluster.faas("submit", str(project), "-n", "ns", "--param", f"api_key={SECRET}")
    assert proc.returncode == 1 and "'api_key' is a secret parameter" in proc.stderr

    plan = cluster.json("submit", str(project), "-n", "ns", "--dry-run")
    assert next(n for n in plan if n["name"] == "calls")["params"] == {"api_key": "<secret api_key>"}
    outputs = [cluster.faas("submit", str(project), "-n", "ns", "--json", check=True)]
    run = __import__("json").loads(outputs[0].stdout)
    lines = [log["line"] for log in run["logs"]]
    assert "calling the service with ********" in lines, lines
    assert "key: s3cr3t -Value-7f3a9c21" in lines  # only the whole value is masked
    assert cluster.json("query", "SELECT key_length FROM calls", "-n", "ns") == [
        {"key_length": len(SECRET)}]

    # The same secret: cached. Another value: the model that reads it runs again.
    again = __import__("json").loads(
        cluster.faas("submit", str(project), "-n", "ns", "--json", check=True).stdout)
    assert set(again["cached"]) >= {"calls"}
    assert _secret_set(cluster, "api_key", OTHER).returncode == 0
    third = __import__("json").loads(
        cluster.faas("submit", str(project), "-n", "ns", "--json", check=True).stdout)
    assert "calls" not in third["cached"]
    assert cluster.json("query", "SELECT key_length FROM calls", "-n", "ns") == [
        {"key_length": len(OTHER)}]

    # A function's error that holds the secret is masked too.
    (project / "models.py").write_text(MODELS.replace("FAIL", "True"))
    failed = cluster.faas("submit", str(project), "-n", "ns")
    assert failed.returncode == 1
    assert "the service refused key ********" in failed.stderr, failed.stderr
    outputs += [failed, cluster.faas("job", "ls", "--json", check=True)]
    for job in cluster.json("job", "ls"):
        outputs.append(cluster.faas("job", "get", job["run_id"], "--json", check=True))
        outputs.append(cluster.faas("job", "logs", job["run_id"], check=True))
    for proc in outputs:
        for value in (SECRET, OTHER):
            assert value not in proc.stdout and value not in proc.stderr

    # Nowhere on disk: not in the scheduler's home (runs, catalog, logs, the sealed
    # secrets), the worker's shm, environments or spill, nor the daemons' logs.
    for value in (SECRET, OTHER):
        assert _grep(tmp_path, value.encode()) == []
    assert (cluster.home / "secrets.json").stat().st_mode & 0o777 == 0o600

    cluster.faas("secret", "rm", "api_key", check=True)
    assert cluster.json("secret", "ls") == []
    proc = cluster.faas("submit", str(project), "-n", "ns")
    assert "secret 'api_key' is not set" in proc.stderr
