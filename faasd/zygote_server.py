"""The zygote itself: ``<python> -m faas.faasd.zygote_server FD MODULES``.

It imports what every function needs once, then forks a fresh child per function on
request from its worker (see :mod:`faasd.zygote` for the worker side and the design).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from faas.faasd.zygote_wire import (
    REQUIRED,
    TO_ZYGOTE,
    Exited,
    Ready,
    Spawn,
    Spawned,
    SpawnFailed,
    ZygoteMessage,
    describe_exit,
    kill_group,
)
from faas.protocol.framing import decode_payload, encode, next_frame

log = logging.getLogger("faasd.zygote")



def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _preload(optional: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    import importlib

    done: list[str] = []
    skipped: dict[str, str] = {}
    for name in REQUIRED:
        importlib.import_module(name)
        done.append(name)
    for name in optional:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as exc:  # noqa: BLE001 - optional: a child that needs it imports it
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return done, skipped


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
# Sandboxed function processes kept forked ahead of their requests: a run starts several
# functions at once (the example, three), and each then finds one with its sandbox built
# (with two, the third waited 12-37 ms for a fork and its sandbox). Each is a copy of the
# zygote (about 60 MiB of its memory, shared until written), so a few, not one per core.
SPARES = 3


class _Server:
    """The zygote's loop: single-threaded, select() on the channel and a signal wakeup pipe."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.buf = bytearray()
        self.fds: collections.deque[int] = collections.deque()
        # Sandboxed children forked ahead of their requests (pid, socket), once one was
        # asked for.
        self.spares: collections.deque[tuple[int, socket.socket]] = collections.deque()
        self.libc = _libc()
        self.stdout_encoding = (sys.stdout.encoding, sys.stdout.errors)
        self.stderr_encoding = (sys.stderr.encoding, sys.stderr.errors)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select() via the pipe
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)

    @staticmethod
    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def send(self, msg: ZygoteMessage) -> None:
        self.ctl.sendall(encode(msg))

    def serve(self) -> None:
        import select

        try:
            while True:
                ready, _, _ = select.select([self.ctl.fileno(), self.wake_r], [], [])
                if self.wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                self.reap()
                if self.ctl.fileno() in ready and not self.receive():
                    log.info("the worker closed the channel; stopping")
                    return
        finally:
            self.shutdown()

    def receive(self) -> bool:
        try:
            data, fds, flags, _ = socket.recv_fds(self.ctl, 65536, 16)
        except ConnectionError:
            return False
        self.fds.extend(fds)
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            raise RuntimeError("descriptors were cut off in transit")
        if not data:
            return False
        self.buf += data
        while (payload := next_frame(self.buf)) is not None:
            self.spawn(decode_payload(payload, TO_ZYGOTE))
        return True

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            spare = next((s for s in self.spares if s[0] == pid), None)
            if spare is not None:  # died unused
                log.warning("the spare function process %d %s", pid,
                            describe_exit(os.waitstatus_to_exitcode(status)))
                spare[1].close()
                self.spares.remove(spare)
                continue
            self.send(Exited(pid=pid, code=os.waitstatus_to_exitcode(status)))

    def spawn(self, req: Spawn) -> None:
        if len(self.fds) < 3:
            raise RuntimeError(f"spawn request {req.req} came with {len(self.fds)} fds, not 3")
        fds = (self.fds.popleft(), self.fds.popleft(), self.fds.popleft())
        sandboxed = req.sandbox is not None and not req.sandbox.network
        pid = self._hand_over(req, fds) if sandboxed else None
        if pid is None:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                self.send(SpawnFailed(req=req.req, message=f"fork failed: {exc}"))
                return
            if pid == 0:
                self.child(req, *fds)
            self.children.add(pid)
            for fd in fds:
                os.close(fd)
        self.send(Spawned(req=req.req, pid=pid))
        if sandboxed:
            while len(self.spares) < SPARES and self._fork_spare():
                pass

    def _hand_over(self, req: Spawn, fds: tuple[int, int, int]) -> int | None:
        """Give the request to the oldest spare sandboxed process (the likeliest to be
        ready); its pid, or None if there is none left."""
        while self.spares:
            pid, sock = self.spares.popleft()
            try:
                socket.send_fds(sock, [encode(req)], list(fds))
            except OSError as exc:
                log.warning("the spare function process %d is gone (%s)", pid, exc)
                sock.close()
                continue
            sock.close()
            for fd in fds:
                os.close(fd)
            return pid
        return None

    def _fork_spare(self) -> bool:
        """Fork a sandboxed function process ahead of its request: it builds the part of
        its sandbox every function shares (faasd.sandbox.prepare) while nothing waits for
        it, then waits for a request on a private socket. False if it cannot fork."""
        from faas.faasd import sandbox

        sandbox.python_paths()  # found once, here; every spare inherits them
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("cannot fork a spare function process: %s", exc)
            ours.close()
            theirs.close()
            return False
        if pid == 0:
            ours.close()
            self._spare_child(theirs)
        theirs.close()
        self.children.add(pid)
        self.spares.append((pid, ours))
        return True

    def _spare_child(self, sock: socket.socket) -> NoReturn:
        def wait_for_request() -> None:
            from faas.faasd import sandbox

            sandbox.prepare(keep_fds=(sock.fileno(),))
            # Process 1 of the new sandbox: wait for the request.
            buf = bytearray()
            fds: list[int] = []
            payload = None
            while payload is None:
                data, got, _, _ = socket.recv_fds(sock, 65536, 3)
                fds += got
                if not data:
                    os._exit(0)  # the zygote closed: never used
                buf += data
                payload = next_frame(buf)
            sock.close()
            self._serve(decode_payload(payload, TO_ZYGOTE), fds[0], fds[1], fds[2], prepared=True)

        _in_child(self._detach, wait_for_request)

    def child(self, req: Spawn, task_fd: int, out_fd: int, err_fd: int) -> NoReturn:
        """The forked function process. Never returns into the zygote's loop."""
        _in_child(self._detach, lambda: self._serve(req, task_fd, out_fd, err_fd, prepared=False))

    def _detach(self) -> None:
        """In a forked child: its own session, the zygote's signal handling and
        descriptors gone, killed with the zygote."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # its own process group: the worker kills the group
        if self.libc is not None:
            self.libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != self.pid:  # the zygote died before prctl
                os._exit(70)
        # Nothing of the zygote's stays open: its channel, its wakeup pipe, descriptors
        # already received for later requests, the spares' sockets.
        self.ctl.close()
        for fd in (self.wake_r, self.wake_w, *self.fds):
            os.close(fd)
        self.fds.clear()
        while self.spares:
            self.spares.pop()[1].close()

    def _serve(self, req: Spawn, task_fd: int, out_fd: int, err_fd: int, *, prepared: bool) -> NoReturn:
        """Become the function process of ``req`` and run it; exits, never returns."""
        code = 70
        try:
            # Output first: what goes wrong from here on is the function's to read.
            self._redirect(out_fd, err_fd)
            if req.sandbox is not None:
                from faas.faasd import sandbox

                if not prepared:
                    sandbox.prepare(network=req.sandbox.network, keep_fds=(task_fd,))
                sandbox.finish(req.sandbox)
            if self.libc is not None and req.label:
                self.libc.prctl(_PR_SET_NAME, req.label.encode()[:15], 0, 0, 0)
            if req.cwd:
                os.chdir(req.cwd)
            if req.env is not None:
                os.environ.clear()
                os.environ.update(req.env)
            _become_runner(task_fd)
            from faas.faasd import runner

            code = runner.serve_task(task_fd)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - report and leave; never back into the loop
            import traceback

            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            # What interpreter exit would do (as multiprocessing's fork start
            # method does): wait for non-daemon threads, run atexit, flush.
            with contextlib.suppress(BaseException):
                import atexit
                import threading

                threading._shutdown()  # type: ignore[attr-defined]
                atexit._run_exitfuncs()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _redirect(self, out_fd: int, err_fd: int) -> None:
        import io

        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        # As a fresh `python -u` would have them on a pipe: unbuffered binary,
        # write-through text, the encodings this interpreter chose at start.
        out = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding=self.stdout_encoding[0],
            errors=self.stdout_encoding[1], write_through=True,
        )
        err = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding=self.stderr_encoding[0],
            errors=self.stderr_encoding[1], write_through=True,
        )
        sys.stdout = sys.__stdout__ = out  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = err  # type: ignore[misc]

    def shutdown(self) -> None:
        for pid in self.children:
            kill_group(pid)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
        self.ctl.close()


def _in_child(*steps: Callable[[], object]) -> NoReturn:
    """Run ``steps`` in a forked child and exit: never back into the zygote's loop."""
    code = 70
    try:
        for step in steps:
            step()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and leave
        import traceback

        with contextlib.suppress(BaseException):
            traceback.print_exc()
    os._exit(code)


def _become_runner(task_fd: int) -> None:
    """Make the forked child look like ``python -m faas.faasd.runner FD`` started in its cwd."""
    import importlib

    from faas.faasd import runner

    sys.argv = [runner.__file__ or "faasd/runner.py", str(task_fd)]
    sys.path[0] = os.getcwd()  # `-m` puts the start directory first
    importlib.invalidate_caches()
    # The stdlib's `random` reseeds itself after fork; numpy's global generator does not.
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()


def _warm_up(preloaded: Sequence[str]) -> None:
    """Pay once, here, what every function's first use of DuckDB would pay in its own
    child: the static set-up of its first connection and of its exchange with Arrow
    (measured: a function's first in-memory connection and query over an Arrow table,
    51 ms in a child of a zygote without this, 26 ms with it). A closed connection joins
    its threads, so the zygote is single-threaded again before it forks."""
    if "duckdb" not in preloaded:
        return
    try:
        import duckdb
        import pyarrow as pa

        with duckdb.connect() as con:
            con.register("warm_up", pa.table({"a": [1]}))
            con.sql("SELECT a FROM warm_up").arrow()
    except Exception as exc:  # noqa: BLE001 - a function that uses DuckDB pays it itself
        log.info("DuckDB warm-up skipped: %s: %s", type(exc).__name__, exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import gc

    t0 = time.perf_counter()
    os.dup2(2, 1)  # a stray print goes to the worker's log, like everything else here
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    ctl = socket.socket(fileno=int(argv[0]))
    optional = [m for m in (argv[1] if len(argv) > 1 else "").split(",") if m]
    preloaded, skipped = _preload(optional)
    _warm_up(preloaded)
    threads = _thread_count()
    if threads > 1:
        log.warning("%d threads after imports: forking is not safe; children may hang", threads)
    server = _Server(ctl)
    # Keep the preloaded objects out of the collector's reach: a collection in
    # a child would otherwise touch (and copy) every page it inherited.
    gc.freeze()
    server.send(Ready(
        pid=os.getpid(), seconds=time.perf_counter() - t0, preloaded=preloaded, skipped=skipped,
        threads=threads,
    ))
    with contextlib.suppress(ConnectionError):  # the worker went away
        server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

