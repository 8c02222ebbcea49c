"""Embedded mode: a scheduler and one worker on loopback, started for one command.

They are the same daemons a cluster runs (``python -m faasd ...``), as child
processes, so a laptop run and a cluster run differ only in addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import AsyncIterator

from protocol.auth import ensure_token
from protocol.errors import FaasError

START_TIMEOUT = 60.0


def default_home() -> Path:
    return Path(os.environ.get("FAAS_HOME", "~/.faas")).expanduser()


async def _start(args: list[str], marker: str, log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    log = open(log_path, "ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faasd", *args,
        stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
    )
    log.close()
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
    except TimeoutError:
        line = b""
    except BaseException:  # cancelled while it starts: do not leave it behind
        proc.kill()
        await proc.wait()
        raise
    text = line.decode().strip()
    if not text.startswith(marker):
        proc.kill()
        await proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        raise FaasError(
            f"embedded {args[0]} did not start ({'; '.join(tail) or 'no output'}); log: {log_path}"
        )
    return proc, text.rsplit(" ", 1)[-1]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def embedded_cluster(home: Path | None = None) -> AsyncIterator[tuple[str, bytes]]:
    """Yield (scheduler address, token) for a scheduler + worker living as long as the block."""
    home = home or default_home()
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "token"
    token = ensure_token(token_file)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    scheduler, address = await _start(
        ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home), "--token-file", str(token_file)],
        "faasd scheduler listening on", logs / "scheduler.log",
    )
    worker = None
    try:
        worker, _ = await _start(
            ["worker", "--scheduler", address, "--token-file", str(token_file)],
            "faasd worker", logs / "worker.log",
        )
        yield address, token
    finally:
        if worker is not None:
            await _stop(worker)
        await _stop(scheduler)
