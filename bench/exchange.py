"""Data exchange: handing tables between functions, across workers, to many readers, and re-runs.

Every measurement has a baseline measured in the same run, on the same machine:

1. ``handoff`` — a ~1 GiB table from a producer process to a consumer process on one
   host. faas: the producer writes its output once as an Arrow IPC file into shared
   memory (``faasd.runner.write_output``), the consumer maps it
   (``memory_map`` + ``open_file().read_all()``, as the runner does). Baseline: how
   serverless functions chain through object storage — the producer writes Parquet into
   a warehouse directory on local disk (``store.files.write_parquet``, the project's
   settings), the consumer reads it back with ``pq.read_table``. Both consumers then read
   every byte of every buffer, so mapped pages are really faulted in. The Parquet file is
   read back while still in the page cache: the baseline never waits for a disk or a
   network, so it is a lower bound on what object storage costs.
2. ``peer`` — a ~1 GiB object between two processes over loopback TCP:
   ``faasd.peer.PeerServer`` in one, ``faasd.peer.fetch_object`` into another shm
   directory in the other. Baseline: a raw socket between two processes, ``sendall`` of a
   preallocated buffer in 4 MiB slices and ``recv_into`` a preallocated buffer, same bytes.
   faas also checks every object it pulls against the sender's per-chunk digest
   (XXH3-128): the receiver hashes each pull, the sender hashes an object once (its
   first pull, in the uncounted warm-up round). ``digest_s`` is one side's hashing of the
   object alone, on the receiver's pool of threads.
3. ``readers`` — four processes each map a ~2 GiB object, read every page and hold it.
   Added memory = the object's shared-memory pages (counted once) + what each reader's
   PSS (/proc/PID/smaps_rollup) grew by outside shared memory, from idle (pyarrow
   imported) to holding the table. Also reported: the system-wide growth (anonymous,
   shared-memory, page-table and kernel-slab pages from /proc/meminfo, before the object
   was written vs while all four hold it), which also counts whatever else the machine
   did meanwhile. Baseline: four readers of the same table from Parquet (each decodes a
   private copy).
4. ``rerun`` — the AdventureWorks example at 10 million sale rows on a real scheduler
   and worker: ``faas submit --no-cache`` (cold, every function runs) against
   ``faas submit`` right after an identical run (warm, every node from the cache).

Processes are started with multiprocessing's spawn method, so nothing is shared by
accident. Prints one JSON object and writes it to bench/results/exchange.json.

    python -m bench.exchange [--repeat 3] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import as_installed, machine, save
from bench.exchange_helpers import (
    CTX,
    child_consume,
    child_generate,
    child_produce,
    in_child,
    read_table,
    stats,
    touch_all,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "adventureworks"
GiB = 2**30
SLICE = 4 * 2**20
CHUNK = 8 * 2**20  # the most one recv_into is asked for, as in faasd.peer
TOKEN = b"bench-exchange-token-" + b"x" * 16
OBJECT_ID = "bench-object"


# -- 1. handoff on one host -------------------------------------------------------------


def bench_handoff(shm: Path, disk: Path, repeat: int, nbytes: int) -> dict[str, Any]:
    source = str(shm / "handoff-source.arrow")
    shape = in_child(child_generate, source, nbytes, 1)
    objects = shm / "objects"
    warehouse = disk / "warehouse" / "data"
    objects.mkdir()
    warehouse.mkdir(parents=True)
    times: dict[str, dict[str, list[float]]] = {
        k: {"write": [], "read": [], "open": [], "total": []} for k in ("faas", "baseline")
    }
    sizes = {}
    for i in range(repeat):
        # Interleaved, so drift in the machine's load hits both sides alike.
        for kind, dest in (("faas", objects / f"out-{i}.arrow"),
                           ("baseline", warehouse / f"out-{i}.parquet")):
            made = in_child(child_produce, kind, source, str(dest))
            got = in_child(child_consume, kind, str(dest))
            if got["rows"] != shape["rows"]:
                raise SystemExit(f"handoff {kind}: read {got['rows']} rows of {shape['rows']}")
            t = times[kind]
            t["write"].append(made["write_s"])
            t["read"].append(got["read_s"])
            t["open"].append(got["open_s"])
            t["total"].append(made["write_s"] + got["read_s"])
            sizes[kind] = made["file_bytes"]
            if i < repeat - 1 or kind == "baseline":
                dest.unlink()
    # The last faas output stays: it is the object the peer benchmark serves.
    os.replace(objects / f"out-{repeat - 1}.arrow", shm / f"{OBJECT_ID}.arrow")
    Path(source).unlink()
    f, b = times["faas"], times["baseline"]
    return {
        **shape, "ipc_file_bytes": sizes["faas"], "parquet_file_bytes": sizes["baseline"],
        "faas": {"producer_write_s": stats(f["write"]), "consumer_read_s": stats(f["read"]),
                 "consumer_open_s": stats(f["open"]), "total_s": stats(f["total"])},
        "baseline": {"producer_write_s": stats(b["write"]), "consumer_read_s": stats(b["read"]),
                     "consumer_open_s": stats(b["open"]), "total_s": stats(b["total"])},
        # baseline / faas, from the medians: how many times faster faas is.
        "consumer_speedup": round(statistics.median(b["read"]) / statistics.median(f["read"]), 2),
        "end_to_end_speedup": round(statistics.median(b["total"]) / statistics.median(f["total"]), 2),
    }


# -- 2. across two workers over loopback --------------------------------------------------


def serve_peer(root: str, conn: Any) -> None:
    import asyncio

    from faas.faasd.peer import PeerServer

    try:
        import uvloop  # the worker's loop

        uvloop.install()
    except ImportError:
        pass

    def locate(object_id: str) -> Path | None:
        path = Path(root) / f"{object_id}.arrow"
        return path if path.exists() else None

    async def main() -> None:
        async with PeerServer(token=TOKEN, host_id="bench-a", listen="127.0.0.1:0",
                              locate=locate) as server:
            conn.send(server.address)
            await asyncio.to_thread(conn.recv)  # until the parent says stop

    asyncio.run(main())


def serve_raw(path: str, conn: Any) -> None:
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb") as f:  # real bytes in real pages, not the zero page
        f.readinto(buf)
    view = memoryview(buf)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        conn.send(srv.getsockname()[1])
        srv.settimeout(120)
        while True:
            try:
                sock, _ = srv.accept()
            except TimeoutError:
                return
            with sock:
                if sock.recv(1) != b"g":  # the parent's stop: connect and close
                    return
                for off in range(0, size, SLICE):
                    sock.sendall(view[off:off + SLICE])


def receive_raw(port: int, into: memoryview) -> None:
    nbytes = len(into)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"g")
        got = 0
        while got < nbytes:
            n = sock.recv_into(into[got:got + CHUNK])
            if n == 0:
                raise RuntimeError(f"raw sender closed after {got} of {nbytes} bytes")
            got += n


def receive_raw_into_file(port: int, fd: int, nbytes: int) -> None:
    piece = bytearray(2**20)
    with socket.create_connection(("127.0.0.1", port)) as sock, memoryview(piece) as view:
        sock.sendall(b"g")
        got = 0
        while got < nbytes:
            n = sock.recv_into(view[:min(len(piece), nbytes - got)])
            if n == 0:
                raise RuntimeError(f"raw sender closed after {got} of {nbytes} bytes")
            with view[:n] as part:
                written = 0
                while written < n:
                    written += os.pwrite(fd, part[written:], got + written)
            got += n


def child_transfer(address: str, port: int, dest_dir: str, repeat: int) -> dict[str, Any]:
    import asyncio

    import pyarrow as pa

    from faas.faasd.objects import ObjectStore, Pages
    from faas.faasd.peer import _Hasher, fetch_object

    # The receiving worker's store, as a worker has it: an object deleted when its run
    # ends leaves its pages for the next pull (faasd.objects), unless fetched with no
    # pages to reuse, as on a worker that has deleted nothing yet.
    store = ObjectStore(Path(dest_dir), Path(dest_dir) / "spill", budget=8 * GiB)
    dest = store.path(OBJECT_ID)
    fresh = Path(dest_dir) / "raw.bin"
    buf = bytearray()  # preallocated below, once the size is known
    times: dict[str, list[float]] = {
        "faas": [], "faas_fresh": [], "raw": [], "raw_fresh_shm": [], "digest": [],
    }
    rows = 0

    def pull(reuse: bool) -> tuple[float, int]:
        nonlocal rows
        mapped: list[Pages] = []  # as a worker pulls: faasd.tasks
        t0 = time.perf_counter()
        nbytes = fetch_object(
            address, OBJECT_ID, dest, token=TOKEN, host_id="bench-b",
            reuse=store.claim if reuse else None, keep=mapped.append,
        )
        seconds = time.perf_counter() - t0
        rows = pa.ipc.open_file(pa.memory_map(str(dest), "r")).read_all().num_rows  # whole
        fd = os.open(dest, os.O_RDONLY)
        try:
            t1 = time.perf_counter()
            hasher = _Hasher(fd, nbytes)
            hasher.sums()
            hasher.close()
            times["digest"].append(time.perf_counter() - t1)
        finally:
            os.close(fd)
        store.add(OBJECT_ID, "bench", cacheable=False, pages=mapped[0] if mapped else None)
        asyncio.run(store.release("bench"))  # deleted: its pages are kept for the next pull
        return seconds, nbytes

    for i in range(repeat + 1):  # the first round warms every path and is not counted
        fresh_s, nbytes = pull(reuse=False)
        faas_s, _ = pull(reuse=True)
        t1 = time.perf_counter()
        if len(buf) != nbytes:
            buf = bytearray(b"\x01") * nbytes  # preallocated and faulted in
        with memoryview(buf) as view:
            receive_raw(port, view)
        t2 = time.perf_counter()
        # The same socket, into new shared memory as fetch_object writes it: a new file,
        # each piece received into one buffer and written at its offset. No handshake, no
        # protocol, no digest.
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, nbytes)
            receive_raw_into_file(port, fd, nbytes)
        finally:
            os.close(fd)
            fresh.unlink()
        t3 = time.perf_counter()
        if i:
            times["faas"].append(faas_s)
            times["faas_fresh"].append(fresh_s)
            times["raw"].append(t2 - t1)
            times["raw_fresh_shm"].append(t3 - t2)
    store._trim_free(store.free_bytes)
    return {"nbytes": nbytes, "rows": rows, **times}


def bench_peer(shm: Path, repeat: int) -> dict[str, Any]:
    path = shm / f"{OBJECT_ID}.arrow"
    dest_dir = shm / "fetched"
    dest_dir.mkdir()
    peer_parent, peer_child = CTX.Pipe()
    raw_parent, raw_child = CTX.Pipe()
    peer = CTX.Process(target=serve_peer, args=(str(shm), peer_child))
    raw = CTX.Process(target=serve_raw, args=(str(path), raw_child))
    peer.start()
    raw.start()
    port = 0
    try:
        for p, name in ((peer_parent, "peer server"), (raw_parent, "raw sender")):
            if not p.poll(60):
                raise RuntimeError(f"the {name} did not start")
        address, port = peer_parent.recv(), raw_parent.recv()
        got = in_child(child_transfer, address, port, str(dest_dir), repeat)
    finally:
        peer_parent.send("stop")
        if port:  # a connection that sends nothing stops the raw sender
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                pass
        for proc in (peer, raw):
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()
    gib = got["nbytes"] / GiB
    tput = {k: [gib / t for t in got[k]] for k in ("faas", "faas_fresh", "raw", "raw_fresh_shm")}
    med = {k: statistics.median(v) for k, v in tput.items()}
    return {
        "object_bytes": got["nbytes"],
        "faas_fetch_s": stats(got["faas"]),
        "faas_fetch_into_fresh_pages_s": stats(got["faas_fresh"]),
        "raw_socket_s": stats(got["raw"]),
        "raw_into_fresh_shm_s": stats(got["raw_fresh_shm"]),
        "digest_s": stats(got["digest"]),
        "faas_gib_s": stats(tput["faas"], 3),
        "faas_into_fresh_pages_gib_s": stats(tput["faas_fresh"], 3),
        "raw_gib_s": stats(tput["raw"], 3),
        "raw_into_fresh_shm_gib_s": stats(tput["raw_fresh_shm"], 3),
        "faas_over_raw": round(med["faas"] / med["raw"], 3),
        "faas_fresh_over_raw": round(med["faas_fresh"] / med["raw"], 3),
        "faas_fresh_over_raw_into_fresh_shm": round(
            med["faas_fresh"] / med["raw_fresh_shm"], 3
        ),
        "target_faas_over_raw": 0.8,
    }


# -- 3. four readers of one table ---------------------------------------------------------


def system_memory() -> int:
    """Memory in use that a reader or an object could add, system-wide, from /proc/meminfo:
    anonymous pages + shared memory (tmpfs) + page tables + unreclaimable kernel slab.

    Counted by kind rather than as total minus free, so the page cache (the Parquet file's
    pages) and memory freed but not yet returned to the free lists do not move it."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        info[name] = int(value.split()[0]) * 1024
    return info["AnonPages"] + info["Shmem"] + info["PageTables"] + info["SUnreclaim"]


def pss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        m = re.match(r"(Pss|Pss_Anon|Pss_Shmem|Rss):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def child_reader(kind: str, path: str, barrier: Any, conn: Any) -> None:
    import pyarrow.parquet  # noqa: F401  (imported before timing, in both kinds of reader)

    barrier.wait()  # 1: imported, idle
    barrier.wait()  # 2: go
    t0 = time.perf_counter()
    table = read_table(kind, path)
    checksum = touch_all(table)
    read_s = time.perf_counter() - t0
    barrier.wait()  # 3: all four hold the table
    barrier.wait()  # 4: measured
    conn.send({"read_s": read_s, "checksum": checksum, "rows": table.num_rows})


def four_readers(kind: str, path: Path, produce: Callable[[], Any] | None) -> dict[str, Any]:
    barrier = CTX.Barrier(5, timeout=300)
    pipes = [CTX.Pipe(duplex=False) for _ in range(4)]
    readers = [CTX.Process(target=child_reader, args=(kind, str(path), barrier, w))
               for _, w in pipes]
    for r in readers:
        r.start()
    try:
        barrier.wait()
        before = system_memory()
        pss_idle = [pss(r.pid) for r in readers]  # type: ignore[arg-type]
        if produce is not None:
            produce()  # the object is made now: its pages are part of what is added
        barrier.wait()
        barrier.wait()
        during = system_memory()
        pss_held = [pss(r.pid) for r in readers]  # type: ignore[arg-type]
        barrier.wait()
        results = [p.recv() for p, _ in pipes]
    except BaseException:
        barrier.abort()
        raise
    finally:
        for r in readers:
            r.join(30)
            if r.is_alive():
                r.kill()
                r.join()
    if len({(x["checksum"], x["rows"]) for x in results}) != 1:
        raise SystemExit(f"readers of {path} disagree: {results}")

    def added(field: str) -> int:
        return sum(h.get(field, 0) - i.get(field, 0) for h, i in zip(pss_held, pss_idle, strict=True))

    # What the table costs: its shared-memory pages (faas), counted once, plus what each
    # reader added outside them. Unlike the system-wide figure, nothing else running on the
    # machine meanwhile is in it.
    shm_pages = path.stat().st_blocks * 512 if kind == "faas" else 0
    return {"added": shm_pages + added("Pss") - added("Pss_Shmem"), "system_added": during - before,
            "pss_added": added("Pss"), "pss_shmem_added": added("Pss_Shmem"),
            "read_s": statistics.median(x["read_s"] for x in results), "rows": results[0]["rows"]}


def bench_readers(shm: Path, disk: Path, repeat: int, nbytes: int) -> dict[str, Any]:
    source = str(shm / "readers-source.arrow")
    shape = in_child(child_generate, source, nbytes, 7)
    parquet = disk / "warehouse" / "data" / "readers.parquet"
    made = in_child(child_produce, "baseline", source, str(parquet))
    obj = shm / "objects" / "readers.arrow"
    runs: dict[str, list[dict[str, Any]]] = {"faas": [], "baseline": []}
    for _ in range(repeat):
        obj.unlink(missing_ok=True)
        runs["faas"].append(four_readers(
            "faas", obj, lambda: in_child(child_produce, "faas", source, str(obj))))
        runs["baseline"].append(four_readers("baseline", parquet, None))
    table = shape["table_bytes"]
    out: dict[str, Any] = {**shape, "object_bytes": obj.stat().st_size,
                           "parquet_file_bytes": made["file_bytes"], "readers": 4}
    obj.unlink()
    parquet.unlink()
    Path(source).unlink()
    for kind, rs in runs.items():
        out[kind] = {
            "added_bytes": stats([r["added"] for r in rs], 0),
            "system_added_bytes": stats([r["system_added"] for r in rs], 0),
            "readers_pss_added_bytes": stats([r["pss_added"] for r in rs], 0),
            "readers_pss_shmem_added_bytes": stats([r["pss_shmem_added"] for r in rs], 0),
            "read_s": stats([r["read_s"] for r in rs]),
            "added_over_table": round(statistics.median(r["added"] for r in rs) / table, 3),
            "system_added_over_table": round(statistics.median(r["system_added"] for r in rs) / table, 3),
        }
    out["target_added_over_table"] = 1.1
    return out


# -- 4. re-running the example pipeline ---------------------------------------------------


def bench_rerun(tmp: Path, shm: Path, repeat: int, rows: int) -> dict[str, Any]:
    from faas.faasd.launch import start_daemon, stop_daemon

    data = tmp / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--rows", str(rows), "--out", str(data)],
                   check=True, capture_output=True, cwd=ROOT)
    project = EXAMPLE  # as it is: memory is estimated from what it reads
    home = tmp / "home"
    home.mkdir()
    token_file = home / "token"
    token_file.write_text(os.urandom(16).hex())
    sched, address = start_daemon(
        ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home), "--token-file", str(token_file)],
        "faasd scheduler listening on", tmp / "scheduler.log", cwd=ROOT,
    )
    try:
        worker, _ = start_daemon(
            ["worker", "--scheduler", address, "--token-file", str(token_file),
             "--shm-dir", str(shm / "worker"), "--env-dir", str(tmp / "envs"), "--import-root", "/"],
            "faasd worker", tmp / "worker.log", cwd=ROOT,
        )
    except BaseException:
        stop_daemon(sched)
        raise
    env = dict(os.environ, FAAS_CLUSTER=address, FAAS_TOKEN_FILE=str(home / "admin.token"), FAAS_HOME=str(home))

    def faas(*args: str) -> tuple[Any, float]:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "faas.client.cli", *args], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"faas {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return (json.loads(p.stdout) if "--json" in args else None), wall

    def submit(*flags: str) -> tuple[dict[str, Any], float]:
        out, wall = faas("submit", str(project), "-n", "adventure", "--json", *flags)
        if out["status"] != "success":
            raise SystemExit(f"run failed: {out['error']}")
        return out, wall

    try:
        faas("namespace", "create", "adventure")
        t0 = time.perf_counter()
        for t in ("product", "product_category", "product_subcategory", "sale", "territories"):
            faas("table", "import", f"adventure.{t}", str(data / f"{t}.csv"))
        import_s = time.perf_counter() - t0
        nodes = sorted(n["name"] for n in faas("submit", str(project), "-n", "adventure",
                                                "--dry-run", "--json")[0])
        submit("--no-cache")  # builds and warms the function environment; not counted
        cold = [submit("--no-cache") for _ in range(repeat)]
        # The first run with the cache after --no-cache runs: what it could take from it.
        after_cold, after_cold_wall = submit()
        warm = [submit() for _ in range(repeat)]
    finally:
        stop_daemon(worker)
        stop_daemon(sched)
    for out, _ in warm:
        if sorted(out["cached"]) != nodes:
            raise SystemExit(f"a warm re-run did not take every node from the cache: "
                             f"cached {out['cached']}, nodes {nodes}")
    for out, _ in cold:
        if out["cached"]:
            raise SystemExit(f"a --no-cache run took {out['cached']} from the cache")
    cold_s, cold_wall = [o["seconds"] for o, _ in cold], [w for _, w in cold]
    warm_s, warm_wall = [o["seconds"] for o, _ in warm], [w for _, w in warm]
    return {
        "rows": rows, "nodes": nodes, "import_s": round(import_s, 2),
        "cold_run_s": stats(cold_s), "cold_cli_wall_s": stats(cold_wall),
        "warm_run_s": stats(warm_s), "warm_cli_wall_s": stats(warm_wall),
        "first_cached_run_after_no_cache": {"run_s": after_cold["seconds"], "cli_wall_s":
                                            round(after_cold_wall, 4), "cached": after_cold["cached"]},
        "warm_over_cold_run": round(statistics.median(warm_s) / statistics.median(cold_s), 4),
        "warm_over_cold_cli_wall": round(statistics.median(warm_wall) / statistics.median(cold_wall), 4),
        "target_warm_over_cold": 0.05,
    }


# -- main -----------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=10_000_000, help="sale rows for the re-run")
    ap.add_argument("--handoff-gib", type=float, default=1.0)
    ap.add_argument("--readers-gib", type=float, default=2.0)
    args = ap.parse_args()
    as_installed()
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faas-bench-exchange-", dir="/dev/shm") as s, \
            tempfile.TemporaryDirectory(prefix="faas-bench-exchange-") as d:
        shm, disk = Path(s), Path(d)
        figures: dict[str, Any] = {}
        figures["handoff"] = bench_handoff(shm, disk, args.repeat, int(args.handoff_gib * GiB))
        figures["peer"] = bench_peer(shm, max(args.repeat, 5))
        (shm / f"{OBJECT_ID}.arrow").unlink()
        figures["readers"] = bench_readers(shm, disk, args.repeat, int(args.readers_gib * GiB))
        figures["rerun"] = bench_rerun(disk, shm, args.repeat, args.rows)
    out = {
        "benchmark": "exchange",
        "repeat": args.repeat,
        "machine": machine(),
        "bench_seconds": round(time.perf_counter() - t0, 1),
        **figures,
    }
    save("exchange", out)


if __name__ == "__main__":
    main()
