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
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "faas.faasd", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=err, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith(marker):
            return proc, line.strip().rsplit(" ", 1)[-1]
        if not line and proc.poll() is not None:
            break
    stop_daemon(proc)
    raise RuntimeError(f"faasd {args[0]} did not start; its log:\n{log.read_text()[-3000:]}")


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
