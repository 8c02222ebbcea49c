"""An event loop on a thread of its own, for synchronous callers (:mod:`faas.client.sync`).

``LoopThread.run(coro)`` runs a coroutine on the loop and waits for its result from any
other thread, even one whose own event loop is running (a notebook cell), which
``asyncio.run`` refuses. The loop starts on first use and stops on ``close()``, when its
owner is collected, or at interpreter exit. Ctrl-C while waiting cancels the coroutine
(a run waited for is cancelled) and waits a little for that before raising on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from faas.protocol.errors import FaasError

T = TypeVar("T")

# After Ctrl-C, how long to wait for the call to be stopped (a run cancelled) before
# handing the KeyboardInterrupt on.
CANCEL_GRACE = 10.0
STOP_TIMEOUT = 10.0


class LoopThread:
    """One event loop on a daemon thread named ``name``; ``owner`` names its user in
    errors."""

    def __init__(self, name: str, owner: str) -> None:
        self.name, self.owner = name, owner
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # set by the loop's thread once it stops
        self._stop: weakref.finalize[..., LoopThread] | None = None

    def close(self) -> None:
        """Stop the loop (what still runs on it is cancelled) and its thread; a later
        call starts them again."""
        with self._lock:
            stop, self._stop = self._stop, None
            self._loop = self._thread = None
        if stop is not None:
            stop()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started, self._closing = threading.Event(), threading.Event()
                thread = threading.Thread(
                    target=_serve, args=(loop, started, self._closing), name=self.name,
                    daemon=True,
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
                self._stop = weakref.finalize(self, _stop_loop, loop, thread)
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop; its result (or its exception) once it ends."""
        loop = self.loop()
        closing = self._closing
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"{self.owner}'s methods cannot be called from its own event loop")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            if closing.is_set():  # closed by another thread meanwhile
                coro.close()
                done.cancel()
                return
            task = loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(lambda t: _settle(t, done))

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise FaasError(f"the {self.owner} was closed meanwhile: call again") from None
        try:
            return done.result()
        except KeyboardInterrupt:
            # Stop the call (a run waited for is cancelled), and wait a little for that.
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
            with contextlib.suppress(BaseException):
                done.result(timeout=CANCEL_GRACE)
            raise
        except concurrent.futures.CancelledError:
            raise FaasError(f"the call was stopped: the {self.owner} was closed meanwhile") from None


def _serve(
    loop: asyncio.AbstractEventLoop, started: threading.Event, closing: threading.Event,
) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        closing.set()  # calls that come now are turned away
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            with contextlib.suppress(RuntimeError):  # no new thread at interpreter exit
                loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the loop (what still runs on it is cancelled) and wait for its thread."""
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # closed meanwhile
        loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(STOP_TIMEOUT)


def _settle(task: asyncio.Task[T], done: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        done.cancel()
    elif (exc := task.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(task.result())


