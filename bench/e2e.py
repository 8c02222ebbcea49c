"""End to end: the example pipeline on faas against the DuckDB script it replaces.

For each size, the example's source tables are generated and imported, then, alternating
runs, median of --repeat:
- faas: `faas submit --no-cache` against the resident local daemon (running, with the
  function environment already built);
- baseline: one Python process running DuckDB (bench/baseline.py) that reads the same
  source Parquet files, runs the same three models' SQL and writes three zstd Parquet
  files.
Each run gives its wall time, its CPU time (every process of the run: the CLI, the
daemon, its worker and function processes; or the script) and its peak memory: the
private memory (RssAnon) of every one of those processes, summed, sampled every 20 ms,
plus the shared memory the run added. Afterwards faas's three tables are checked equal,
row for row, to the script's.

    python -m bench.e2e [--rows 200000,10000000,30000000] [--repeat 3] [--name e2e]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import as_installed, machine, save
from bench.baseline import MODELS, source_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "adventureworks"
TABLES = ("product", "product_category", "product_subcategory", "sale", "territories")
SAMPLE_EVERY = 0.02
# Sizes up to this many sale rows are also checked against examples/adventureworks/reference.py.
REFERENCE_ROWS = 10_000_000


def rss_anon(pid: int) -> int:
    """Private resident memory of a process (its anonymous pages), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def command(pid: int) -> str:
    """A process's command line, shortened to what tells faas's processes apart."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    words = [a for a in argv[1:] if a and not a.startswith("/")]
    return " ".join(words[:3])[:60]


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Peak:
    """Samples the summed private memory of a process tree (and shared memory) until stopped."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.shm0 = shm_used()
        self.peak = 0
        # At the peak: MiB by process (its command, shortened) and of shared memory.
        self.at_peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def _pids(self) -> set[int]:
        pids = set()
        for root in list(self.roots):
            try:
                p = psutil.Process(root)
                pids.add(root)
                pids.update(c.pid for c in p.children(recursive=True))
            except psutil.Error:
                continue
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            by_pid = {pid: rss_anon(pid) for pid in self._pids()}
            shm = max(0, shm_used() - self.shm0)
            total = sum(by_pid.values()) + shm
            if total > self.peak:
                self.peak = total
                self.at_peak = {"shm": round(shm / 2**20, 1)}
                for pid, n in by_pid.items():
                    name = f"{pid} {command(pid)}"
                    self.at_peak[name] = round(n / 2**20, 1)
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of processes, with their reaped children's."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_measured(argv: list[str], env: dict[str, str], daemon: list[int]) -> dict[str, Any]:
    """Run one command to its end: wall, CPU (its own and the daemons'), peak memory."""
    long_lived = []
    for root in daemon:
        try:
            long_lived += [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
        except psutil.Error:
            continue
    cpu0, child0 = cpu_seconds(long_lived), children_cpu()
    t0 = time.perf_counter()
    with Peak(list(daemon)) as peak:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        peak.add(proc.pid)
        out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out[-2000:]}\n{err[-2000:]}")
    cpu = cpu_seconds(long_lived) - cpu0 + children_cpu() - child0
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "peak_memory_gib": round(peak.peak / 2**30, 3), "peak_mib_by_process": peak.at_peak,
            "stdout": out}


def faas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "faas.client.cli", *args]


def project_copy(tmp: Path) -> Path:
    """The example, asking for this interpreter's Python (the worker offers its own)."""
    out = tmp / "project"
    shutil.copytree(EXAMPLE, out, ignore=shutil.ignore_patterns("data", "__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    models = out / "models.py"
    models.write_text(models.read_text().replace('@faas.python("3.11")', f'@faas.python("{version}")'))
    return out


def same_rows(a: list[str], b: str | Any) -> bool:
    """Do the Parquet files ``a`` and ``b`` (a Parquet file, or an Arrow table) hold the
    same rows (as multisets)?"""
    import duckdb

    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW a AS SELECT * FROM read_parquet({a!r})")
        if isinstance(b, str):
            con.execute(f"CREATE VIEW b AS SELECT * FROM read_parquet('{b}')")
        else:
            con.register("b", b)
        (n,) = con.execute(
            "SELECT (SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b))"
            " + (SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a))"
        ).fetchall()[0]
        return bool(n == 0)


def one_size(tmp: Path, env: dict[str, str], daemon: list[int], project: Path, rows: int,
             repeat: int) -> dict[str, Any]:
    data = tmp / f"data-{rows}"
    ns = f"aw{rows}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--rows", str(rows),
                    "--out", str(data)], check=True, capture_output=True)
    subprocess.run(faas_cmd("namespace", "create", ns), env=env, cwd=ROOT, check=True,
                   capture_output=True)
    for t in TABLES:
        subprocess.run(faas_cmd("table", "import", f"{ns}.{t}", str(data / f"{t}.csv")),
                       env=env, cwd=ROOT, check=True, capture_output=True)
    # The example's reference outputs (DuckDB on the CSV files, reference.py), up to
    # REFERENCE_ROWS: faas's tables are checked against them after the timed runs.
    reference = None
    if rows <= REFERENCE_ROWS:
        sys.path.insert(0, str(EXAMPLE))
        import reference as example_reference

        reference = example_reference.expected(str(data))
    shutil.rmtree(data)
    prepare_s = time.perf_counter() - t0
    files = {}
    for t in TABLES:
        info = json.loads(subprocess.run(faas_cmd("table", "get", f"{ns}.{t}", "--json"),
                                         env=env, cwd=ROOT, check=True, capture_output=True,
                                         text=True).stdout)
        files[t] = source_files(info["metadata_location"])
    spec = tmp / f"baseline-{rows}.json"
    spec.write_text(json.dumps({"files": files, "out": str(tmp / f"duckdb-{rows}")}))
    submit = faas_cmd("submit", str(project), "-n", ns, "--no-cache", "--json")
    # Once before timing: the environment is built and the function parents are warm.
    run_measured(submit, env, daemon)
    faas_runs, duck_runs = [], []
    for _ in range(repeat):
        r = run_measured(submit, env, daemon)
        out = json.loads(r.pop("stdout"))
        assert out["status"] == "success" and not out["cached"], out
        r["run_id"] = out["run_id"]
        faas_runs.append(r)
        d = run_measured([sys.executable, "-m", "bench.baseline", str(spec)], env, [])
        d.pop("stdout")
        duck_runs.append(d)
    identical, to_reference = {}, {}
    for m in MODELS:
        info = json.loads(subprocess.run(faas_cmd("table", "get", f"{ns}.{m}", "--json"),
                                         env=env, cwd=ROOT, check=True, capture_output=True,
                                         text=True).stdout)
        faas_files = source_files(info["metadata_location"])
        identical[m] = same_rows(faas_files, str(tmp / f"duckdb-{rows}" / f"{m}.parquet"))
        if reference is not None:
            to_reference[m] = same_rows(faas_files, reference[m])
    last = json.loads(subprocess.run(faas_cmd("job", "get", faas_runs[-1]["run_id"], "--json"),
                                     env=env, cwd=ROOT, check=True, capture_output=True,
                                     text=True).stdout)
    phases = {n: node.get("phases", {}) for n, node in last["nodes"].items()}
    med = {k: statistics.median(r[k] for r in faas_runs) for k in ("wall_s", "cpu_s", "peak_memory_gib")}
    base = {k: statistics.median(r[k] for r in duck_runs) for k in ("wall_s", "cpu_s", "peak_memory_gib")}
    if json.loads((tmp / "home" / "daemon.json").read_text())["pid"] != daemon[0]:
        # A replaced daemon's CPU and memory were not counted (faas's files changed?).
        raise SystemExit(f"the local daemon was replaced during the runs at {rows} rows; "
                         "nothing of that size was saved")
    # Each size starts from a fresh daemon: no cached object of a smaller size in its memory.
    subprocess.run(faas_cmd("local", "stop"), env=env, cwd=ROOT, capture_output=True)
    return {
        "rows": rows, "prepare_s": round(prepare_s, 1),
        "faas": {k: round(v, 3) for k, v in med.items()},
        "duckdb": {k: round(v, 3) for k, v in base.items()},
        "wall_ratio": round(med["wall_s"] / base["wall_s"], 2),
        "cpu_ratio": round(med["cpu_s"] / base["cpu_s"], 2),
        "memory_ratio": round(med["peak_memory_gib"] / base["peak_memory_gib"], 2),
        "identical_to_duckdb": identical,
        "identical_to_reference": to_reference or None,
        "phases_of_last_run": phases,
        "runs": {"faas": faas_runs, "duckdb": duck_runs},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="200000,10000000,30000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", default="e2e", help="results file: bench/results/NAME.json")
    ap.add_argument("--tmp", default=None, help="where data and the faas home go")
    args = ap.parse_args()
    as_installed()
    sizes = [int(r) for r in args.rows.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="faas-bench-e2e-", dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        env = {k: v for k, v in os.environ.items() if k not in ("FAAS_CLUSTER", "FAAS_TOKEN_FILE")}
        env.update(FAAS_HOME=str(tmp / "home"), FAAS_LOCAL_IDLE="120")
        project = project_copy(tmp)
        try:
            for rows in sizes:
                subprocess.run(faas_cmd("local", "start"), env=env, cwd=ROOT, check=True,
                               capture_output=True)
                daemon = [json.loads((tmp / "home" / "daemon.json").read_text())["pid"]]
                results.append(one_size(tmp, env, daemon, project, rows, args.repeat))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "runs"}),
                      flush=True)
                save(args.name, {"machine": machine(), "sizes": results, "complete": False})
        finally:
            subprocess.run(faas_cmd("local", "stop"), env=env, cwd=ROOT, capture_output=True)
    growth = []
    for a, b in itertools.pairwise(results):
        scale = b["rows"] / a["rows"]
        growth.append({
            "from_rows": a["rows"], "to_rows": b["rows"], "rows_x": round(scale, 1),
            "faas_wall_x": round(b["faas"]["wall_s"] / a["faas"]["wall_s"], 2),
            "duckdb_wall_x": round(b["duckdb"]["wall_s"] / a["duckdb"]["wall_s"], 2),
        })
    save(args.name, {"machine": machine(), "sizes": results, "growth": growth, "complete": True})


if __name__ == "__main__":
    main()
