"""Cluster: how fast placement decides, and what more workers do for the example pipeline.

1. ``placement`` — the placement state machine alone (``scheduler.placement.Placement``),
   no sockets and no asyncio, driven by a simulated run of a 10,000-node plan on 100
   workers (1-3 workers per host id, so workers share hosts), in two scenarios:
   ``spacious``: 100 levels x 100 nodes on workers of 8-64 GiB (every level fits at
   once), and ``contended``: 10 levels x 1,000 nodes on workers of 8-16 GiB (requests
   wait for memory). Each node reads the outputs of 1-3 nodes of the level before;
   reservations 0.5-4 GiB, outputs 10 MiB-1 GiB (log-uniform). A node is submitted once
   all its inputs are done; started nodes finish in random order (seeded, the same for
   every placer) with ``finished(request_id, output=(object_id, info), new=True)``;
   every worker sends a heartbeat once every 100 completions cluster-wide, reporting the
   shared memory still pinned by outputs some reader still needs and dropping the
   others. Functions take no time: only the state machine's calls (``submit``,
   ``finished``, ``heartbeat``) are timed, and decisions/s is ``Start`` decisions over
   the time of all of them. Baseline, same events, same memory accounting, same run:
   ``FirstFit`` below, a round-robin first fit without input affinity; under contention
   also the same with no bound on the waiting requests a pass looks at. Quality: the
   share of input bytes already on the chosen worker's host when it was chosen.
2. ``pipeline`` — the AdventureWorks example at 10 million sale rows on a real scheduler
   with one worker, then (a new scheduler and home) three workers, each ``--memory
   6GiB`` with its own host id, so objects between them are pulled over TCP: ``faas
   submit examples/adventureworks --no-cache --json``, one unmeasured run (builds the
   function environment), then the median of ``--repeat``; where each function ran and
   when it started and ended are read from ``faas job get`` and ``faas job logs``.

Prints one JSON object and writes it to bench/results/cluster.json.

    python -m bench.cluster [--repeat 3] [--rows 10000000] [--only placement|pipeline]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from bench import as_installed, machine, save
from faas.scheduler.placement import BACKFILL, Fail, Instruction, Lost, Placement, Request, Start

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "adventureworks"
TABLES = ("product", "product_category", "product_subcategory", "sale", "territories")
MiB, GiB = 2**20, 2**30
# Completions cluster-wide between two heartbeats of every worker.
HEARTBEAT_EVERY = 100


def stats(values: list[float], digits: int = 4) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


# -- 1. placement, the state machine alone -------------------------------------------------


@dataclass(frozen=True)
class Info:
    """What a worker reports of an object; placement reads only its size."""

    nbytes: int


@dataclass(frozen=True)
class Node:
    reservation: int
    output: int
    inputs: tuple[int, ...]


class FirstFit(Placement):
    """The baseline: the same events, memory accounting, queue (the oldest ``BACKFILL``
    waiting requests per pass) and cheap pre-check (a request whose own reservation
    exceeds the most free memory anywhere waits) as ``Placement``, but each request
    goes to the next worker in turn where it fits now: no input affinity, no preference
    for the producer or the emptiest worker, no check that it could fit anywhere. Where
    a request's inputs are is worked out once per request, by host, with its own code,
    so it does not depend on ``Placement``'s internals."""

    bound: int | None = BACKFILL

    def __init__(self) -> None:
        super().__init__()
        self._turn = 0

    def _local_by_host(self, request: Request) -> dict[str, int]:
        by_host: dict[str, int] = {}
        for oid, n in request.inputs.items():
            for host in {self.workers[w].host_id for w in self.holders(oid)}:
                by_host[host] = by_host.get(host, 0) + n
        return by_host

    def _place(self) -> list[Instruction]:
        out: list[Instruction] = []
        workers = [w for w in self.workers.values() if not w.draining]
        if not workers:
            return out
        shm = self.host_shm()
        free = {w.worker_id: self.free(w, shm) for w in workers}
        most_free = max(free.values())
        for request in list(islice(self.waiting.values(), self.bound)):
            if request.reservation > most_free:
                continue
            total = sum(request.inputs.values())
            local = self._local_by_host(request)
            for k in range(len(workers)):
                w = workers[(self._turn + k) % len(workers)]
                need = request.reservation + total - local.get(w.host_id, 0)
                if need > free[w.worker_id]:
                    continue
                self._turn = (self._turn + k + 1) % len(workers)
                del self.waiting[request.request_id]
                w.reserved += need
                w.running.add(request.request_id)
                free[w.worker_id] -= need
                most_free = max(free.values())
                self.placed[request.request_id] = (request, w.worker_id, need, 0)
                self.decisions += 1
                out.append(Start(request.request_id, w.worker_id, need))
                break
        return out


class FirstFitUnbounded(FirstFit):
    """The same, looking at every waiting request on every pass."""

    bound = None


def make_workers(
    rng: random.Random, n: int, memory_gib: tuple[int, int]
) -> list[tuple[str, str, int]]:
    """(worker id, host id, memory): 1-3 workers per host, memory in ``memory_gib`` GiB."""
    workers: list[tuple[str, str, int]] = []
    host = 0
    while len(workers) < n:
        for _ in range(min(rng.randint(1, 3), n - len(workers))):
            workers.append((f"w{len(workers):03d}", f"h{host:03d}", rng.randint(*memory_gib) * GiB))
        host += 1
    return workers


def make_plan(rng: random.Random, levels: int, width: int) -> list[Node]:
    """A layered DAG: each node reads the outputs of 1-3 nodes of the level before."""
    nodes = []
    lo, hi = math.log(10 * MiB), math.log(1 * GiB)
    for level in range(levels):
        first = (level - 1) * width
        for _ in range(width):
            inputs = () if level == 0 else tuple(sorted(rng.sample(range(first, first + width),
                                                                   rng.randint(1, 3))))
            nodes.append(Node(reservation=rng.randint(512, 4096) * MiB,
                              output=int(math.exp(rng.uniform(lo, hi))), inputs=inputs))
    return nodes


def simulate(
    kind: type[Placement], workers: list[tuple[str, str, int]], plan: list[Node], seed: int,
    limit_s: float | None = None,
) -> dict[str, Any]:
    """Run the whole plan through ``kind``; time only its calls. With ``limit_s``, stop
    once its calls have taken that long (``complete`` says whether the plan finished)."""
    rng = random.Random(seed)
    p = kind()
    consumers: list[list[int]] = [[] for _ in plan]
    for i, node in enumerate(plan):
        for j in node.inputs:
            consumers[j].append(i)
    missing = [len(n.inputs) for n in plan]
    readers_left = [len(c) for c in consumers]
    ran_on: dict[int, str] = {}
    running: list[int] = []
    pinned = {w: 0 for w, _, _ in workers}  # per worker: outputs some reader still needs
    drop: dict[str, list[str]] = {w: [] for w, _, _ in workers}
    memory = {w: m for w, _, m in workers}
    elapsed = {"submit": 0.0, "finished": 0.0, "heartbeat": 0.0, "worker_joined": 0.0}
    calls: Counter[str] = Counter()
    local = total = pulled = 0
    max_waiting = max_running = 0
    per_worker: Counter[str] = Counter()

    def call(name: str, *args: Any, **kwargs: Any) -> None:
        nonlocal local, total, pulled, max_waiting, max_running
        t0 = time.perf_counter()
        out = getattr(p, name)(*args, **kwargs)
        elapsed[name] += time.perf_counter() - t0
        calls[name] += 1
        for ins in out:  # bookkeeping of the simulation, not timed
            if isinstance(ins, (Fail, Lost)):  # no worker is lost, every request fits somewhere
                raise SystemExit(f"{kind.__name__}: unexpected {ins}")
            i = int(ins.request_id[1:])
            request, worker_id, *_ = p.placed[ins.request_id]
            inputs = sum(request.inputs.values())
            moved = p.pulled(request, p.workers[worker_id])
            total += inputs
            local += inputs - moved
            pulled += moved
            ran_on[i] = worker_id
            per_worker[worker_id] += 1
            running.append(i)
        max_waiting = max(max_waiting, len(p.waiting))
        max_running = max(max_running, len(running))

    def submit(i: int) -> None:
        node = plan[i]
        call("submit", Request(
            request_id=f"n{i}", run_id="sim", node=f"n{i}", label=f"model 'n{i}'",
            reservation=node.reservation,
            inputs={f"o{j}": plan[j].output for j in node.inputs},
            producers=frozenset(ran_on[j] for j in node.inputs),
        ))

    for worker_id, host_id, mem in workers:
        call("worker_joined", worker_id, host_id, mem, mem)
    for i, node in enumerate(plan):
        if not node.inputs:
            submit(i)
    done = 0
    while done < len(plan):
        if limit_s is not None and sum(elapsed.values()) > limit_s:
            break
        if not running:
            raise RuntimeError(f"{kind.__name__}: stuck with {len(p.waiting)} waiting, {done} done")
        k = rng.randrange(len(running))
        running[k], running[-1] = running[-1], running[k]
        i = running.pop()
        worker_id = ran_on[i]
        node = plan[i]
        if consumers[i]:
            pinned[worker_id] += node.output
        call("finished", f"n{i}", output=(f"o{i}", Info(node.output)), new=True)
        done += 1
        for j in node.inputs:  # inputs nobody reads any more are unpinned and dropped
            readers_left[j] -= 1
            if readers_left[j] == 0:
                pinned[ran_on[j]] -= plan[j].output
                drop[ran_on[j]].append(f"o{j}")
        if not consumers[i]:
            drop[worker_id].append(f"o{i}")  # a last-level output: published, then freed
        for c in consumers[i]:
            missing[c] -= 1
            if missing[c] == 0:
                submit(c)
        if done % HEARTBEAT_EVERY == 0:
            for w, mem in memory.items():
                call("heartbeat", w, mem, mem, pinned[w], 0, tuple(drop[w]))
                drop[w] = []
    seconds = sum(v for k, v in elapsed.items() if k != "worker_joined")
    decisions = p.decisions
    return {
        "complete": done == len(plan),
        "completed": done,
        "decisions": decisions,
        "seconds": seconds,
        "decisions_per_s": decisions / seconds,
        "calls": dict(calls),
        "us_per_call": {k: round(elapsed[k] / calls[k] * 1e6, 1) for k in calls},
        "input_bytes": total,
        "local_fraction": local / total if total else 0.0,
        "pulled_bytes": pulled,
        "max_waiting": max_waiting,
        "max_running": max_running,
        "workers_used": len(per_worker),
        "most_functions_on_one_worker": max(per_worker.values()),
    }


SCENARIOS = {
    # As a plan of 10,000 functions on 100 workers usually looks: every level fits at once.
    "spacious": {"levels": 100, "width": 100, "memory_gib": (8, 64)},
    # Levels ten times wider on smaller workers: requests wait for memory and backfill.
    "contended": {"levels": 10, "width": 1000, "memory_gib": (8, 16)},
}
# The unbounded baseline is stopped after this much time in its calls (``complete`` says).
UNBOUNDED_LIMIT_S = 15.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median(r["decisions_per_s"] for r in runs)
    last = runs[-1]
    return {
        "complete": all(r["complete"] for r in runs),
        "decisions": last["decisions"],
        "decisions_per_s": stats([r["decisions_per_s"] for r in runs], 0),
        "seconds": stats([r["seconds"] for r in runs]),
        "us_per_decision": round(1e6 / med, 1),
        "local_fraction": stats([r["local_fraction"] for r in runs], 4),
        "pulled_gib": stats([r["pulled_bytes"] / GiB for r in runs], 1),
        "max_waiting": max(r["max_waiting"] for r in runs),
        "max_running": max(r["max_running"] for r in runs),
        "workers_used": last["workers_used"],
        "most_functions_on_one_worker": last["most_functions_on_one_worker"],
        "calls": last["calls"],
        "us_per_call": last["us_per_call"],
    }


def bench_placement(name: str, repeat: int, n_workers: int, levels: int, width: int,
                    memory_gib: tuple[int, int]) -> dict[str, Any]:
    rng = random.Random(1)
    workers = make_workers(rng, n_workers, memory_gib)
    plan = make_plan(rng, levels, width)
    out: dict[str, Any] = {
        "scenario": name, "workers": n_workers, "hosts": len({h for _, h, _ in workers}),
        "worker_memory_gib": list(memory_gib),
        "cluster_memory_gib": sum(m for _, _, m in workers) / GiB,
        "nodes": len(plan), "levels": levels, "width": width,
        "edges": sum(len(n.inputs) for n in plan),
        "input_gib": round(sum(plan[j].output for n in plan for j in n.inputs) / GiB, 1),
        "heartbeat_every_completions": HEARTBEAT_EVERY, "backfill": BACKFILL,
    }
    for label, kind in (("faas", Placement), ("baseline", FirstFit)):
        # The same completion order for both, run by run.
        runs = [simulate(kind, workers, plan, seed=100 + r) for r in range(repeat)]
        for r in runs:
            if r["decisions"] != len(plan):
                raise SystemExit(f"{name}/{label}: {r['decisions']} decisions for {len(plan)} nodes")
        out[label] = summarize(runs)
    out["faas_over_baseline_speed"] = round(
        out["faas"]["decisions_per_s"]["median"] / out["baseline"]["decisions_per_s"]["median"], 3)
    if out["faas"]["max_waiting"] > BACKFILL:  # the bound matters: what it saves
        out["baseline_unbounded"] = summarize([
            simulate(FirstFitUnbounded, workers, plan, seed=100 + r, limit_s=UNBOUNDED_LIMIT_S)
            for r in range(repeat)
        ])
    return out


# -- 2. the example pipeline on one worker and on three ------------------------------------


def run_pipeline(tmp: Path, shm: Path, data: Path, workers: int, repeat: int) -> dict[str, Any]:
    from faas.faasd.launch import start_daemon, stop_daemon

    home = tmp / "home"
    home.mkdir()
    token_file = home / "token"
    token_file.write_text(os.urandom(16).hex())
    env = dict(os.environ, FAAS_CLUSTER="", FAAS_TOKEN_FILE=str(home / "admin.token"), FAAS_HOME=str(home))

    def faas(*args: str) -> tuple[Any, float]:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "faas.client.cli", *args], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"faas {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return (json.loads(p.stdout) if "--json" in args else None), wall

    procs: list[Any] = []
    try:
        sched, address = start_daemon(
            ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home),
             "--token-file", str(token_file)],
            "faasd scheduler listening on", tmp / "scheduler.log", cwd=ROOT,
        )
        procs.append(sched)
        env["FAAS_CLUSTER"] = address
        for i in range(workers):
            proc, _ = start_daemon(
                ["worker", "--scheduler", address, "--token-file", str(token_file),
                 "--host-id", f"bench-host-{i}", "--memory", "6GiB",
                 "--shm-dir", str(shm / f"w{i}"), "--spill-dir", str(tmp / f"spill-{i}"),
                 "--env-dir", str(tmp.parent / "envs"), "--import-root", "/"],
                "faasd worker", tmp / f"worker-{i}.log", cwd=ROOT,
            )
            procs.append(proc)
        deadline = time.monotonic() + 30
        while len(faas("info", "--json")[0]["workers"]) < workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"fewer than {workers} workers registered")
            time.sleep(0.2)
        faas("namespace", "create", "adventure")
        t0 = time.perf_counter()
        for t in TABLES:
            faas("table", "import", f"adventure.{t}", str(data / f"{t}.csv"))
        import_s = time.perf_counter() - t0

        def submit() -> dict[str, Any]:
            out, wall = faas("submit", str(EXAMPLE), "-n", "adventure", "--no-cache", "--json")
            if out["status"] != "success":
                raise SystemExit(f"run failed on {workers} worker(s): {out.get('error')}")
            if out.get("cached"):
                raise SystemExit(f"a --no-cache run took {out['cached']} from the cache")
            job, _ = faas("job", "get", out["run_id"], "--json")
            events, _ = faas("job", "logs", out["run_id"], "--json")
            return {"run_id": out["run_id"], "seconds": out["seconds"], "wall": wall, "job": job,
                    "events": events}

        submit()  # builds the function environment (shared by both clusters); not counted
        runs = [submit() for _ in range(repeat)]
    finally:
        for proc in reversed(procs):
            stop_daemon(proc)
    placements = [_where(r["job"], r["events"]) for r in runs]
    return {
        "workers": workers, "memory_per_worker": "6GiB", "import_s": round(import_s, 2),
        "run_s": stats([r["seconds"] for r in runs], 3),
        "cli_wall_s": stats([r["wall"] for r in runs], 3),
        "runs": [{"run_id": r["run_id"], "seconds": r["seconds"], "cli_wall_s": round(r["wall"], 3),
                  "nodes": p} for r, p in zip(runs, placements, strict=True)],
    }


def _where(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per node: the worker it ran on, and its state changes in seconds from the run's
    first event (a retry after running out of memory shows here)."""
    t0 = min((e["t"] for e in events if e.get("t")), default=0.0)
    out: dict[str, Any] = {name: {"worker": n.get("worker"), "states": []}
                           for name, n in job["nodes"].items()}
    for e in events:
        if "line" in e or e.get("node") not in out or not e.get("t"):
            continue
        state = f"{e['state']} (+{e['t'] - t0:.2f}s)"
        out[e["node"]]["states"].append(state + (f": {e['error']}" if e.get("error") else ""))
    return out


def bench_pipeline(disk: Path, shm: Path, rows: int, repeat: int) -> dict[str, Any]:
    data = disk / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--rows", str(rows),
                    "--out", str(data)], check=True, capture_output=True, cwd=ROOT)
    out: dict[str, Any] = {"rows": rows}
    for n in (1, 3):
        (disk / f"{n}w").mkdir()
        (shm / f"{n}w").mkdir()
        out[f"workers_{n}"] = run_pipeline(disk / f"{n}w", shm / f"{n}w", data, n, repeat)
    one, three = out["workers_1"], out["workers_3"]
    out["speedup_run"] = round(one["run_s"]["median"] / three["run_s"]["median"], 3)
    out["speedup_cli_wall"] = round(one["cli_wall_s"]["median"] / three["cli_wall_s"]["median"], 3)
    return out


# -- main ------------------------------------------------------------------------------------


def _code_version() -> dict[str, Any]:
    """The commit measured, whether the code under test differed from it, and a digest of
    the placement module as it was imported (others may be editing it)."""
    import hashlib

    import faas.scheduler.placement

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout

    changed = git("status", "--porcelain", "--", "scheduler", "faasd", "protocol", "store", "client")
    source = Path(faas.scheduler.placement.__file__).read_bytes()
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_changes": [line[3:] for line in changed.splitlines()],
            "placement_py_sha256": hashlib.sha256(source).hexdigest()[:16]}


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=10_000_000, help="sale rows for the pipeline")
    ap.add_argument("--workers", type=int, default=100, help="simulated workers")
    ap.add_argument("--only", choices=("placement", "pipeline"), default=None)
    args = ap.parse_args()
    as_installed()
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.perf_counter()
    code = _code_version()
    figures: dict[str, Any] = {}
    # Other work on the machine shares its two cores with the daemons: record how much.
    load = {"start": os.getloadavg()[0]}
    if args.only != "pipeline":
        figures["placement"] = [
            bench_placement(name, args.repeat, args.workers, **shape)  # type: ignore[arg-type]
            for name, shape in SCENARIOS.items()
        ]
        load["after_placement"] = os.getloadavg()[0]
    if args.only != "placement":
        with tempfile.TemporaryDirectory(prefix="faas-bench-cluster-", dir="/dev/shm") as s, \
                tempfile.TemporaryDirectory(prefix="faas-bench-cluster-") as d:
            figures["pipeline"] = bench_pipeline(Path(d), Path(s), args.rows, args.repeat)
        load["after_pipeline"] = os.getloadavg()[0]
    out = {
        "benchmark": "cluster",
        "repeat": args.repeat,
        "machine": machine(load_average_1min={k: round(v, 2) for k, v in load.items()}),
        "code": code,
        "bench_seconds": round(time.perf_counter() - t0, 1),
        **figures,
    }
    save("cluster", out)


if __name__ == "__main__":
    main()
