"""The resident local daemon: one per FAAS_HOME, shared, replaced when dead or stale,
gone when idle; and what bad homes and records give."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    GATE_CODE,
    ROOT,
    Gate,
    LocalHome,
    as_from_a_terminal,
    one_line_error,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_the_second_command_reuses_the_first_commands_daemon(local: LocalHome) -> None:
    local.faas("namespace", "create", "sales", check=True)
    first = local.info()
    assert _alive(first["pid"]) and _alive(first["worker_pid"])
    assert local.faas("namespace", "ls", check=True).stdout.split() == ["sales"]
    assert local.info()["pid"] == first["pid"]
    # One daemon and its worker, nothing else, for this home.
    assert sorted(local.daemons()) == sorted([first["pid"], first["worker_pid"]])
    # The daemon writes its logs under the home.
    assert "local daemon ready" in (local.home / "logs" / "daemon.log").read_text()


def test_commands_started_at_once_share_one_daemon(local: LocalHome) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "faas.client.cli", "namespace", "ls"], env=local.env(), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
    for stderr, code in outcomes:
        assert code == 0, stderr
    info = local.info()
    assert sorted(local.daemons()) == sorted([info["pid"], info["worker_pid"]])


def test_a_killed_daemon_is_replaced_by_the_next_command(local: LocalHome) -> None:
    local.faas("namespace", "create", "sales", check=True)
    old = local.info()
    os.kill(old["pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(old["pid"]), "the daemon to die")
    proc = local.faas("namespace", "ls", check=True)
    assert proc.stdout.split() == ["sales"]  # the catalog is the home's, not the daemon's
    assert f"the local faas daemon (pid {old['pid']}) is gone" in proc.stderr
    new = local.info()
    assert new["pid"] != old["pid"] and _alive(new["pid"])
    # The dead daemon's worker does not linger (its parent-death signal stops it).
    wait_until(lambda: not _alive(old["worker_pid"]), "the old worker to end with its daemon")
    assert sorted(local.daemons()) == sorted([new["pid"], new["worker_pid"]])


def test_the_daemon_stops_after_its_idle_time(local: LocalHome) -> None:
    env = local.env(FAAS_LOCAL_IDLE="0.05")  # three seconds
    local.faas("namespace", "ls", check=True, env=env)
    info = local.info()
    assert info["idle_seconds"] == pytest.approx(3.0)
    wait_until(lambda: not _alive(info["pid"]), "the idle daemon to stop", timeout=60)
    wait_until(lambda: not _alive(info["worker_pid"]), "its worker to stop")
    assert not (local.home / "daemon.json").exists()
    assert local.daemons() == []


def test_an_idle_timer_waits_for_runs_in_flight(local: LocalHome, example_data: Path) -> None:
    env = local.env(FAAS_LOCAL_IDLE="0.02")  # a bit over a second
    local.faas("namespace", "create", "adventure", check=True, env=env)
    local.faas("table", "import", "adventure.territories", str(example_data / "territories.csv"),
               check=True, env=env)
    project = local.home.parent / "slow"
    project.mkdir()
    (project / "models.py").write_text(
        "import time\nimport faas\n\n\n@faas.model(materialize='replace')\n"
        "def slow(t=faas.Model('territories')):\n    time.sleep(4)\n    return t\n"
    )
    run_id = local.faas("submit", str(project), "-n", "adventure", "--detach", check=True,
                        env=env).stdout.strip()
    # The client is gone and the run takes longer than the idle time: it still finishes.
    followed = local.faas("job", "logs", run_id, "--follow", env=env)
    assert followed.returncode == 0, followed.stderr
    assert "succeeded" in followed.stdout


def test_a_daemon_of_another_version_is_replaced(local: LocalHome) -> None:
    local.faas("namespace", "create", "sales", check=True)
    old = local.info()
    record = local.home / "daemon.json"
    record.write_text(json.dumps({**old, "version": "0.0.1"}))  # as an older faas left it
    proc = local.faas("namespace", "ls", check=True)
    assert proc.stdout.split() == ["sales"]
    assert f"replacing the local faas daemon (pid {old['pid']}, faas 0.0.1)" in proc.stderr
    new = local.info()
    assert new["pid"] != old["pid"] and new["version"] != "0.0.1"
    assert not _alive(old["pid"])
    wait_until(lambda: not _alive(old["worker_pid"]), "the old worker to end with its daemon")


def test_local_status_start_and_stop(local: LocalHome) -> None:
    stopped = local.faas("local", "status")
    assert stopped.returncode == 1 and "no local faas daemon is running" in stopped.stdout
    started = local.faas("local", "start", "--idle", "5", "--memory", "2GiB", check=True)
    assert "started the local faas daemon" in started.stdout
    status = local.json("local", "status")
    info = local.info()
    assert status["running"] and status["pid"] == info["pid"]
    assert status["address"] == info["address"] and status["version"] == info["version"]
    assert status["idle_limit_seconds"] == 300 and 0 <= status["idle_seconds"] < 300
    assert status["workers"] == 1 and status["uptime_seconds"] >= 0
    text = local.faas("local", "status", check=True).stdout
    assert info["address"] in text and "stops after 5m00s idle" in text
    # The worker offers the memory it was given.
    assert local.json("info")["workers"][0]["memory_total"] == 2 * 2**30
    again = local.faas("local", "start", check=True)
    assert "already running" in again.stdout
    assert "stopped the local faas daemon" in local.faas("local", "stop", check=True).stdout
    wait_until(lambda: local.daemons() == [], "every faasd process to stop")
    assert not (local.home / "daemon.json").exists()
    assert "no local faas daemon was running" in local.faas("local", "stop", check=True).stdout


def _marked_project(local: LocalHome, data: Path, body: str) -> tuple[Path, Gate]:
    """A namespace with territories and a one-model project that passes an open gate as it
    starts, then runs ``body``; the project and the gate (started: the function runs)."""
    local.faas("namespace", "create", "adventure", check=True)
    local.faas("table", "import", "adventure.territories", str(data / "territories.csv"),
               check=True)
    project = local.home.parent / "project"
    project.mkdir()
    marker = Gate()
    marker.touch()
    (project / "models.py").write_text(
        GATE_CODE + "import time\nimport faas\n\n\n@faas.model(materialize='replace', internet_access=True)\n"
        f"def marked(t=faas.Model('territories')):\n    wait_gate({marker.address!r})\n"
        f"    {body}\n    return t\n"
    )
    return project, marker


def test_ctrl_c_cancels_the_run_but_never_the_daemon(local: LocalHome, example_data: Path) -> None:
    project, marker = _marked_project(local, example_data, "while True: time.sleep(0.1)")
    daemon = local.info()
    # A terminal sends SIGINT to its foreground process group: the CLI's, not the daemon's.
    with subprocess.Popen(
        [sys.executable, "-m", "faas.client.cli", "submit", str(project), "-n", "adventure"],
        env=local.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_from_a_terminal,
        process_group=0,
    ) as submit:
        wait_until(marker.started, "the function to start", timeout=120)
        os.killpg(submit.pid, signal.SIGINT)
        _, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 130, stderr
    assert _alive(daemon["pid"]) and _alive(daemon["worker_pid"])
    wait_until(lambda: local.json("job", "ls")[0]["status"] == "cancelled", "the run to be cancelled")
    assert local.faas("namespace", "ls", check=True).stdout.split() == ["adventure"]
    assert local.info()["pid"] == daemon["pid"]


# -- bad homes and records: one line, non-zero, nothing touched ----------------------------


@pytest.mark.parametrize(
    "record",
    [b"\x00\xff garbage", b'{"pid": "twelve"}', b"[1, 2, 3]"],
    ids=["binary", "foreign-json", "not-an-object"],
)
def test_a_damaged_daemon_record_is_one_line(local: LocalHome, record: bytes) -> None:
    local.home.mkdir(parents=True)
    (local.home / "daemon.json").write_bytes(record)
    proc = local.faas("namespace", "create", "sales")
    line = one_line_error(proc, str(local.home / "daemon.json"), "faas local stop")
    assert "not a faas daemon record" in line
    assert local.daemons() == []  # nothing started
    # 'faas local stop' clears it; then the catalog shows nothing was created.
    cleared = local.faas("local", "stop", check=True)
    assert "removed" in cleared.stderr
    assert local.faas("namespace", "ls", check=True).stdout.split() == []


def test_a_damaged_token_is_one_line(local: LocalHome) -> None:
    local.faas("namespace", "create", "sales", check=True)
    (local.home / "admin.token").write_bytes(b"\xff\xfe\x00binary")
    one_line_error(local.faas("namespace", "create", "other"), str(local.home / "admin.token"))


def test_a_port_taken_by_something_else_is_one_line(local: LocalHome) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = local.faas("local", "start", "--port", str(port))
        one_line_error(proc, f"127.0.0.1:{port}", "in use", str(local.home / "logs"))
    assert local.daemons() == []
    assert not (local.home / "daemon.json").exists()


def test_a_home_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    home = LocalHome(blocker / "home")
    one_line_error(home.faas("namespace", "ls"), str(blocker / "home"), "FAAS_HOME")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        one_line_error(LocalHome(ro / "home").faas("namespace", "ls"), str(ro / "home"))


def test_a_daemon_of_another_version_with_runs_in_flight_is_kept(
    local: LocalHome, example_data: Path
) -> None:
    release = Gate()  # the run goes on until the test says so
    project, marker = _marked_project(local, example_data, f"wait_gate({release.address!r})")
    run_id = local.faas("submit", str(project), "-n", "adventure", "-d", check=True).stdout.strip()
    wait_until(marker.started, "the function to start", timeout=120)
    old = local.info()
    (local.home / "daemon.json").write_text(json.dumps({**old, "version": "0.0.1"}))
    line = one_line_error(local.faas("namespace", "ls"), "1 run(s) in flight", "faas local stop")
    assert "0.0.1" in line and _alive(old["pid"])
    (local.home / "daemon.json").write_text(json.dumps(old))
    release.touch()
    followed = local.faas("job", "logs", run_id, "--follow")
    assert followed.returncode == 0 and "succeeded" in followed.stdout


def test_other_aws_settings_are_noticed_and_bad_idle_times_refused(local: LocalHome) -> None:
    local.faas("namespace", "ls", check=True)
    proc = local.faas("namespace", "ls", check=True,
                      env=local.env(AWS_ENDPOINT_URL="http://127.0.0.1:9"))
    assert "started with other AWS_* settings" in proc.stderr
    assert "AWS" not in local.faas("namespace", "ls", check=True).stderr
    local.faas("local", "stop", check=True)
    for bad in ("0", "-3", "soon", "nan"):
        one_line_error(local.faas("namespace", "ls", env=local.env(FAAS_LOCAL_IDLE=bad)),
                       "FAAS_LOCAL_IDLE")
    assert local.daemons() == []


def test_a_home_copied_with_its_record_gets_a_daemon_of_its_own(
    local: LocalHome, tmp_path: Path
) -> None:
    import shutil

    local.faas("namespace", "create", "sales", check=True)
    original = local.info()
    copy = LocalHome(tmp_path / "copy")
    shutil.copytree(local.home, copy.home, ignore=shutil.ignore_patterns("logs", "*.lock"))
    try:
        proc = copy.faas("namespace", "ls", check=True)
        assert f"describes the daemon of {local.home}" in proc.stderr
        assert copy.info()["pid"] != original["pid"] and copy.info()["home"] == str(copy.home)
        assert _alive(original["pid"])  # the other home's daemon is left alone
    finally:
        copy.stop()
