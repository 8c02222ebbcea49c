"""``faasd local``: the resident daemon of one ``FAAS_HOME`` (embedded mode).

One process runs the scheduler and keeps one worker as its child, both on
loopback. The ``faas`` CLI starts it in the background on the first command
of a home (see :mod:`client.local`) and every later command talks to it, the
way Bazel's and Gradle's clients find their server. It stops by itself after
an idle time with no client and no run, on SIGTERM (``faas local stop``), or
when a newer faas replaces it.

``HOME/daemon.json`` says where it is: written once both daemons are ready
(under a private name, then renamed into place), removed when it stops.
``HOME/logs/`` holds ``daemon.log`` (this process and its scheduler) and
``worker.log``.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from faas.protocol.auth import ensure_token
from faas.protocol.errors import FaasError
from faas.protocol.version import build_id, settings_fingerprint

log = logging.getLogger(__name__)

INFO_FILE = "daemon.json"
WORKER_START_TIMEOUT = 60.0
# How often the daemon looks at its idle timer and its worker.
TICK = 0.5
_PR_SET_PDEATHSIG = 1


try:
    # Looked up here, not in the child: between fork and exec only a plain call is safe.
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None  # not Linux: the worker notices the lost scheduler instead


def _die_with_parent(parent: int) -> None:
    """In the worker child, before exec: the kernel sends it SIGTERM when the daemon dies,
    even by SIGKILL, so no worker outlives its daemon (nor one that died just before)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


class LocalDaemon:
    def __init__(self, home: Path, *, idle: float, memory: str | None, listen: str) -> None:
        self.home = home
        self.idle = idle  # seconds
        self.memory = memory
        self.listen = listen
        self.scheduler: Any = None
        self.worker: asyncio.subprocess.Process | None = None
        self.stop = asyncio.Event()
        self.info_path = home / INFO_FILE

    async def _start_worker(self) -> None:
        logs = self.home / "logs"
        # A short grace: by the time it is stopped its runs are already cancelled.
        # Embedded, the daemon is its user's own: it imports any file its user can read.
        args = ["worker", "--scheduler", self.scheduler.address,
                "--token-file", str(self.home / "token"), "--grace", "5", "--import-root", "/",
                "--private", str(self.home)]
        if self.memory:
            args += ["--memory", self.memory]
        with await asyncio.to_thread(open, logs / "worker.log", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "faas.faasd", *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"faasd worker"):
            proc.kill()
            await proc.wait()
            raise FaasError(f"the worker did not start; see {logs / 'worker.log'}")
        self.worker = proc
        log.info("worker started (pid %d)", proc.pid)

    def _write_info(self) -> None:
        assert self.worker is not None
        info = {
            "version": build_id(), "pid": os.getpid(), "address": self.scheduler.address,
            "worker_pid": self.worker.pid, "started": time.time(), "idle_seconds": self.idle,
            "home": str(self.home), "logs": str(self.home / "logs"),
            "iceberg": self.scheduler.iceberg.url if self.scheduler.iceberg else "",
            "console": self.scheduler.iceberg.console_url if self.scheduler.iceberg else "",
            "settings": settings_fingerprint(),
        }
        tmp = self.info_path.with_name(f".{INFO_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, self.info_path)

    def _remove_info(self) -> None:
        """Remove daemon.json if it is still ours (a replacement may have written its own)."""
        try:
            if json.loads(self.info_path.read_text()).get("pid") == os.getpid():
                self.info_path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    async def run(self) -> None:
        from faas.scheduler.server import Scheduler

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no terminal to lose
        # The Iceberg REST catalog on a loopback port of its own, for other engines.
        self.scheduler = Scheduler(
            home=self.home, token=ensure_token(self.home / "token"), listen=self.listen,
            http="127.0.0.1:0",
        )
        try:
            try:
                await self.scheduler.start()
            except OSError as exc:
                raise FaasError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from None
            await self._start_worker()
            self._write_info()
            log.info("local daemon ready on %s; stops after %.0f s idle",
                     self.scheduler.address, self.idle)
            while not self.stop.is_set():
                try:
                    await asyncio.wait_for(self.stop.wait(), TICK)
                except TimeoutError:
                    pass
                if self.scheduler.idle_for() >= self.idle:
                    log.info("stopping: idle for %.0f s", self.scheduler.idle_for())
                    break
                if self.worker is not None and self.worker.returncode is not None:
                    log.warning("worker exited (%s); starting another", self.worker.returncode)
                    await self._start_worker()
                    self._write_info()
        finally:
            # Record first (a new command starts a new daemon), then the scheduler (its
            # runs are cancelled and the worker stops their functions), then the worker.
            self._remove_info()
            await self.scheduler.close()
            await self._stop_worker()

    async def _stop_worker(self) -> None:
        proc = self.worker
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def serve(home: Path, *, idle: float, memory: str | None, listen: str) -> int:
    """Run the daemon until it stops; 0, or 1 after one line on stderr saying why."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        (home / "logs").mkdir(exist_ok=True)
        # Not the directory of whichever command started it: that one may go away.
        os.chdir(home)
        asyncio.run(LocalDaemon(home, idle=idle, memory=memory, listen=listen).run())
    except FaasError as exc:
        print(f"faasd: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"faasd: error: {home}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    return 0
