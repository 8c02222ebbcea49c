"""Start and stop `faasd` daemons as child processes (tests, benchmarks, scripts).

A daemon prints one line when it is ready; its last word is the address it
bound (the scheduler's control port, the worker's data port).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_daemon(
    args: list[str], marker: str, log: Path, *, cwd: Path | None = None, timeout: float = 60.0,
    env: dict[str, str] | None = None, prefix: list[str] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m faas.faasd ARGS`` with stderr to ``log``; return it and its bound address.

    ``env``: variables added to this process's environment for the daemon. ``prefix``: a
    command that execs the daemon, such as ``ip netns exec NAME``."""
    proc = spawn_daemon(args, log, cwd=cwd, env=env, prefix=prefix)
    return proc, wait_ready(proc, marker, log, timeout=timeout)


def spawn_daemon(
    args: list[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m faas.faasd ARGS`` (stderr to ``log``) and return at once: daemons
    that need not wait for each other start side by side (see :func:`wait_ready`)."""
    with open(log, "a") as err:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "faas.faasd", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )


def wait_ready(proc: subprocess.Popen[str], marker: str, log: Path, *,
               timeout: float = 60.0) -> str:
    """The address a spawned daemon bound, once it prints its ready line (``marker``);
    stops it and raises RuntimeError, with its log, if it does not in time."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith(marker):
            return line.strip().rsplit(" ", 1)[-1]
        if not line and proc.poll() is not None:
            break
    stop_daemon(proc)
    raise RuntimeError(f"faasd did not start (no {marker!r} line); its log:\n"
                       f"{log.read_text()[-3000:]}")


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
    stop_daemons([proc], timeout)


def stop_daemons(procs: list[subprocess.Popen[str]], timeout: float = 15.0) -> None:
    """Stop daemons side by side: SIGTERM to each, then SIGKILL to any still running
    ``timeout`` seconds later."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
