"""The README, as a new user pastes it.

After ``make demo`` in a fresh home, every ``sh`` block of the README runs in order in
one shell, from a copy of the repository, exactly as written; the test fails with the
block that failed. Left out: the set-up commands at the top (``make demo`` runs first,
``make test`` is this suite) and the cluster set-up, which needs remote hosts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, as_from_a_terminal

pytestmark = pytest.mark.timeout(600)

SKIPPED = ("make demo", "# On the cluster's hosts")


def readme_blocks(text: str) -> list[str]:
    """The shell blocks a user pastes, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [b for b in blocks if not b.startswith(SKIPPED)]


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the repository's files (sharing its .venv) and the environment of a new
    user: a fresh home, faas not on PATH, no cluster."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    root = tmp_path / "faas"
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_symlink():  # faas/store -> ../store and the others, as a clone has them
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).symlink_to(os.readlink(source))
        elif source.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / rel)
    (root / ".venv").symlink_to(ROOT / ".venv")
    home = tmp_path / "home"
    home.mkdir()
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FAAS_") or k == "FAAS_LOCAL_IDLE"}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin),
    )
    try:
        yield root, env
    finally:
        subprocess.run([ROOT / ".venv" / "bin" / "faas", "local", "stop"], env=env, cwd=root,
                       capture_output=True, timeout=60)


def test_the_readme_works_when_pasted_after_make_demo(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    # The virtualenv exists (this suite runs in it): make is told not to rebuild it.
    demo = subprocess.run(["make", "-o", ".venv/.installed", "demo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=as_from_a_terminal)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "source .venv/bin/activate" in demo.stdout  # what to run next
    assert "faas table ls --namespace adventure" in demo.stdout

    blocks = readme_blocks((root / "README.md").read_text())
    assert len(blocks) >= 5
    script = ["set -e"]
    for i, block in enumerate(blocks, 1):
        script += [f"echo '>>> README block {i}' >&2", block.rstrip("\n")]
    script.append("echo '>>> README done' >&2")
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=480,
                          preexec_fn=as_from_a_terminal)
    reached = re.findall(r">>> README (block \d+|done)", proc.stderr)
    assert proc.returncode == 0 and reached[-1] == "done", (
        f"README {reached[-1] if reached else 'block 1'} failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )

    # The story held: new sales went through dev into main, then fact_sale was reverted.
    assert re.search(r"changed\s+adventure\.sale .*rows 20000 -> 30000", proc.stdout), proc.stdout
    faas = [str(ROOT / ".venv" / "bin" / "faas")]

    def rows(sql: str, ref: str) -> int:
        out = subprocess.run([*faas, "query", sql, "-n", "adventure", "--ref", ref, "--json"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(json.loads(out.stdout)[0]["n"])

    count = "SELECT count(*) AS n FROM fact_sale"
    assert rows(count, "new-sales") == 30000 and rows(count, "main") == 20000
    assert rows("SELECT count(*) AS n FROM sale", "main") == 30000


def _cluster_blocks(text: str) -> tuple[str, str]:
    """The README's cluster set-up: its shell block, and the worker's TOML config."""
    shell = next(b for b in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
                 if b.startswith("# On the cluster's hosts"))
    toml = next(b for b in re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
                if "[worker]" in b)
    return shell, toml


def test_the_cluster_setup_is_accurate_and_runs_on_loopback(
    tmp_path: Path, example_data: Path
) -> None:
    """The cluster set-up needs remote hosts, S3 and PostgreSQL (tests/integration/test_s3.py and the
    PostgreSQL catalog tests cover those): here every faasd command line of it parses as
    written, its config file is accepted as written, and the same steps run on loopback
    (the scheduler's own warehouse and catalog, the worker started from that config)."""
    import shlex
    import tomllib

    from faas.faasd.__main__ import _parser, _settings
    from tests.conftest import SOURCE_TABLES, start_daemon, stop_daemon

    shell, toml = _cluster_blocks((ROOT / "README.md").read_text())
    parser, roles = _parser()
    commands = [line.split("#")[0].split(">")[0] for line in shell.replace("\\\n", " ").splitlines()]
    faasd = [shlex.split(c)[1:] for c in commands if c.startswith("faasd ")]
    assert [args[0] for args in faasd] == ["scheduler", "user", "worker"]
    for args in faasd:
        parser.parse_args(args)  # exits (fails the test) on an option faasd does not have
    config = tmp_path / "faasd.toml"
    config.write_text(toml)
    settings = _settings(str(config), "worker", roles["worker"])
    assert settings["scheduler"] == "sched-host:8470" and tomllib.loads(toml)["worker"]

    home = tmp_path / "home"
    sched, address = start_daemon(
        ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home)],
        "faasd scheduler listening on", tmp_path / "scheduler.log",
    )
    worker = None
    try:
        config.write_text(
            toml.replace("sched-host:8470", address).replace("/etc/faas/token", str(home / "token"))
            .replace('"10.0.0.12:0"', '"127.0.0.1:0"').replace('"16GiB"', '"4GiB"')
            .replace('s3-endpoint = "http://minio:9000"\n', "")
            .replace('"/srv/data"', json.dumps(str(example_data)))
        )
        worker, _ = start_daemon(["worker", "--config", str(config), "--shm-dir", str(tmp_path / "shm")],
                                 "faasd worker", tmp_path / "worker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAAS_", "AWS_"))}
        env.update(FAAS_CLUSTER=address, FAAS_TOKEN_FILE=str(home / "admin.token"),
                   HOME=str(tmp_path))
        faas = [str(ROOT / ".venv" / "bin" / "faas")]

        def step(*args: str) -> str:
            proc = subprocess.run([*faas, *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=180)
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
            return proc.stdout

        step("namespace", "create", "adventure")
        for t in SOURCE_TABLES:
            step("table", "import", f"adventure.{t}", str(example_data / f"{t}.csv"))
        assert "succeeded" in step("submit", "examples/adventureworks", "--namespace", "adventure")
        info = step("info")
        assert f"scheduler {address}" in info and "4.0 GiB free" in info, info
    finally:
        if worker is not None:
            stop_daemon(worker)
        stop_daemon(sched)
