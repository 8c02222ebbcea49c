"""Source scans the worker reads for a function: no function ever reads storage.

Every source scan of a task is read here, in a worker thread, and handed to the function
through its task directory's ``in/`` (read-only to it):

- a planned scan, with the cache: the scan's columns become column-cache entries
  (:func:`faasd.columns.prefetch`), linked into ``in/``; the function maps them;
- a planned scan of a local warehouse without the cache (``--no-cache``), or streamed
  (``faas.Model(stream=True)``): its data files, checked against the plan, are handed over
  in a directory of ``in/`` (bound read-only by the sandbox, nothing copied), and the
  function decodes them with the plan's projection and filter on every core of its budget
  (faasd.handed; a streamed one as it reads it, or DuckDB reads the files itself): the
  worker decodes nothing, and the decoded rows are never copied into shared memory;
- any other scan (object storage without the cache, or one Arrow's planner cannot read):
  its batches are written, as they are read, into an Arrow IPC file in ``in/``, which the
  function maps as it maps an object;
- any other streamed scan: a FIFO in ``in/``. A thread of the
  worker writes the scan's batches into it as the function reads them (the pipe keeps it
  a batch or so ahead); a scan that fails midway breaks the stream, so the function can
  never take a shortened table for a whole one, and the task fails with the scan's error.

So functions need no storage credentials, no network and no view of the warehouse beyond
the data files of their scans. A
scan the table cannot answer (an unknown column, a bad filter or snapshot) is not the
worker's failure: the function reports it in its own one line
(``FunctionTask.input_problems``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faas.protocol.errors import FaasError, InvalidInput, NotFound, StorageError
from faas.protocol.messages import ScanInput
from faas.store.warehouse import is_local, storage_errors

log = logging.getLogger(__name__)

# The most data files a scan hands a function (one read-only bind each in its sandbox);
# a table of more is read by the worker.
MAX_HANDED_FILES = 1024
# Written in place of the next IPC message when a streamed scan fails: a message header
# announcing more bytes than will ever come, which every Arrow reader refuses.
_BROKEN = b"\xff\xff\xff\xff\xff\xff\xff\x7f"


@dataclass
class TaskScans:
    """What the worker read for one task's scans."""

    # The task's inputs, scans with their plans.
    inputs: list[Any]
    # Columns read from storage now ("table.column"), by scan key.
    read: dict[str, list[str]] = field(default_factory=dict)
    # Column-cache entries written now (file name -> bytes).
    written: dict[str, int] = field(default_factory=dict)
    # param -> the IPC file or FIFO in ``in/`` that holds the scan.
    files: dict[str, str] = field(default_factory=dict)
    # param -> why the table cannot give the scan (said by the function).
    problems: dict[str, str] = field(default_factory=dict)
    streams: list[StreamWriter] = field(default_factory=list)
    # Data files the sandbox binds read-only into ``in/``: the path inside -> the file.
    binds: dict[str, str] = field(default_factory=dict)

    def failure(self) -> FaasError | None:
        """The error of the first stream whose scan failed, if any."""
        return next((s.error for s in self.streams if s.error is not None), None)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def read_scans(
    inputs: list[Any], inbox: Path, *, plan: Any, metadata: Any, cache_dir: Path | None,
    link: Any, sandboxed: bool = False,
) -> TaskScans:
    """Read every ScanInput of ``inputs`` for the function (blocking: run it in a thread).

    ``plan(scan)`` returns the scan with its plan (or unchanged); ``metadata(location)``
    the parsed table (the worker keeps them); ``cache_dir`` is the column cache (None:
    ``--no-cache``); ``link(entry)`` puts a cache entry into ``in/``; ``sandboxed``: the
    function runs in a sandbox, which binds the data files it is handed.
    Streams are prepared (their scans checked) but start only with :meth:`StreamWriter.start`.
    """
    from faas.faasd.columns import prefetch

    out = TaskScans(inputs=[])
    for n, i in enumerate(inputs):
        if not isinstance(i, ScanInput):
            out.inputs.append(i)
            continue
        if i.columns != []:
            i = plan(i)
        out.inputs.append(i)
        if cache_dir is not None and i.plan is not None and not i.stream:
            done = prefetch(i, cache_dir)
            if done is not None and len(done[0]) == len(i.plan.columns):
                entries, stats = done
                out.written.update(dict(stats.new_entries))
                try:
                    for entry in entries:
                        link(entry)
                except FileNotFoundError as exc:  # evicted meanwhile: read it another way
                    log.info("cache entry %s went before it was linked: %s read for the "
                             "function", exc.filename, i.key)
                else:
                    out.read[i.key] = [f"{i.key}.{c}" for c in stats.columns_read]
                    continue
        if (i.plan is not None and len(i.plan.files) <= MAX_HANDED_FILES
                and all(is_local(f) for f in i.plan.files)):
            properties = metadata(i.metadata_location).io.properties
            if _readable(i.plan, properties):
                _place(i.plan.files, inbox / f"scan-{n}", out, sandboxed)
                out.files[i.param] = str(inbox / f"scan-{n}")
                out.read[i.key] = [f"{i.key}.{c}" for c in i.plan.columns]
                continue
        try:
            reader = _reader(i, metadata)
        except (InvalidInput, NotFound) as exc:
            out.problems[i.param] = str(exc).replace(i.metadata_location, i.key)
            continue
        out.read[i.key] = [f"{i.key}.{c}" for c in reader.schema.names]
        if i.stream:
            fifo = inbox / f"stream-{n}"
            os.mkfifo(fifo, 0o600)
            out.streams.append(StreamWriter(reader, fifo, i.key))
            out.files[i.param] = str(fifo)
        else:
            path = inbox / f"scan-{n}.arrow"
            _write_file(reader, path, i.key)
            out.files[i.param] = str(path)
    return out


def _readable(plan: Any, properties: Any) -> bool:
    from faas.store.scan import plan_readable

    with storage_errors(f"cannot read {plan.files[0] if plan.files else 'a table'}", properties):
        return plan_readable(plan, properties)


def _place(files: list[str], directory: Path, out: TaskScans, sandboxed: bool) -> None:
    """The planned data files of a local warehouse in ``directory``, named in the plan's
    order (``000000.parquet`` ...), nothing copied: in a sandbox, each name is an empty
    mount point that the sandbox binds the data file on, read-only (``out.binds``), so the
    function sees those files and not where the warehouse is; without one, a link."""
    from faas.store.warehouse import filesystem

    directory.mkdir()
    for k, uri in enumerate(files):
        source, target = filesystem(uri)[1], directory / f"{k:06d}.parquet"
        if sandboxed:
            target.touch(0o400)
            out.binds[str(target)] = source
        else:
            target.symlink_to(source)


def _reader(i: ScanInput, metadata: Any) -> Any:
    """The scan's batches, in the columns' order, decoded as they are read: from the
    worker's plan when it has one, else planned here."""
    from faas.store.scan import plan_reader, scan_table

    if i.plan is not None:
        reader = plan_reader(i.plan, metadata(i.metadata_location).io.properties)
        if reader is not None:
            return reader
    return scan_table(
        metadata(i.metadata_location), columns=i.columns, row_filter=i.filter,
        snapshot_id=i.snapshot_id, name=i.metadata_location, stream=True,
    )


def _write_file(reader: Any, path: Path, key: str) -> None:
    """The scan as an Arrow IPC file, a batch at a time (never held whole)."""
    import pyarrow as pa

    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as out:
            for batch in reader:
                out.write_batch(batch)
    except FaasError:
        raise
    except OSError as exc:
        raise _scan_error(key, exc) from exc


def _scan_error(key: str, exc: BaseException) -> FaasError:
    if isinstance(exc, FaasError):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StorageError(f"cannot read table {key}: {first}")


class _Pipe:
    """The write end of a FIFO as the file Arrow's writer needs: every write whole (a pipe
    may take part of one), nothing buffered to fail at close."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def write(self, data: Any) -> int:
        with memoryview(data) as whole, whole.cast("B") as view:
            size = view.nbytes
            done = 0
            while done < size:
                done += os.write(self.fd, view[done:])
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamWriter:
    """Fills a FIFO with a scan's batches, as an Arrow IPC stream, from a thread of its own."""

    def __init__(self, reader: Any, fifo: Path, key: str) -> None:
        self.reader = reader
        self.fifo = fifo
        self.key = key
        self.error: FaasError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"faas-stream-{key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop writing (the function has ended): a writer still waiting for its reader,
        or writing to one that is gone, ends."""
        self._stop.set()
        while self._thread.is_alive():
            # Opening and closing the read end wakes a writer blocked in open; with no
            # reader left, its next write fails and it ends.
            try:
                os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                pass
            self._thread.join(0.05)
        self.reader.close()

    def _run(self) -> None:
        import pyarrow as pa

        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_CLOEXEC)  # until the function opens it
        except OSError as exc:
            log.warning("stream of %s: cannot open %s: %s", self.key, self.fifo, exc)
            return
        with _Pipe(fd) as sink:
            try:
                # Closed (which writes the end-of-stream marker) only when every batch is
                # written: a scan that fails must never look like a shorter one.
                out = pa.ipc.new_stream(sink, self.reader.schema)
                for batch in self.reader:
                    if self._stop.is_set():
                        return
                    out.write_batch(batch)
                out.close()
            except BrokenPipeError:
                return  # the function stopped reading: it has what it wanted
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    return
                self._broken(sink, exc)
            except Exception as exc:  # noqa: BLE001 - the scan failed: the task fails with it
                self._broken(sink, exc)

    def _broken(self, sink: Any, exc: BaseException) -> None:
        self.error = _scan_error(self.key, exc)
        log.info("stream of %s failed: %s", self.key, self.error)
        try:
            sink.write(_BROKEN)
            sink.flush()
        except OSError:
            pass
