"""The feedback loop as a user feels it: wall time of `faas` commands, each process whole.

Measured in one run, alternating the sides:
- catalog commands (`faas branch ls`, `faas namespace ls`) against the resident local
  daemon vs the same commands against a hand-started cluster on loopback, and the
  floor: `python -c "import faas.client"`;
- `faas submit` of the example at --rows sale rows against the resident daemon: cold
  (`--no-cache`, the environment already built) and warm (unchanged project), vs one
  DuckDB process doing the same work (bench/baseline.py).

Goals: catalog commands ≤ 1.2× the cluster's; cold submit ≤ 1.5× DuckDB; warm ≤ 0.3 s.

    python -m bench.loop [--rows 200000] [--repeat 15] [--submits 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import as_installed, machine, save
from bench.baseline import source_files
from faas.faasd.launch import start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "adventureworks"
TABLES = ("product", "product_category", "product_subcategory", "sale", "territories")
COMMANDS = (("branch", "ls"), ("namespace", "ls"))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return wall, p


def faas(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    return timed([sys.executable, "-m", "faas.client.cli", *args], env)


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=15, help="runs of each catalog command")
    ap.add_argument("--submits", type=int, default=3, help="runs of each submit and baseline")
    args = ap.parse_args()
    as_installed()

    with tempfile.TemporaryDirectory(prefix="faas-bench-loop-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--rows", str(args.rows),
                        "--out", str(data)], check=True, capture_output=True)
        base = {k: v for k, v in os.environ.items() if k not in ("FAAS_CLUSTER", "FAAS_TOKEN_FILE")}
        local = dict(base, FAAS_HOME=str(tmp / "local"))
        first_command, _ = faas(local, "namespace", "create", "adventure")
        started = json.loads((tmp / "local" / "daemon.json").read_text())

        home = tmp / "cluster"
        home.mkdir()
        token = home / "token"
        token.write_text(os.urandom(16).hex())
        procs = []
        try:
            sched, address = start_daemon(
                ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home),
                 "--token-file", str(token)], "faasd scheduler listening on", tmp / "sched.log",
                cwd=ROOT)
            procs.append(sched)
            worker, _ = start_daemon(
                ["worker", "--scheduler", address, "--token-file", str(token), "--import-root", "/"],
                "faasd worker", tmp / "worker.log", cwd=ROOT)
            procs.append(worker)
            cluster = dict(base, FAAS_HOME=str(home), FAAS_CLUSTER=address,
                           FAAS_TOKEN_FILE=str(home / "admin.token"))
            faas(cluster, "namespace", "create", "adventure")
            for t in TABLES:
                faas(local, "table", "import", f"adventure.{t}", str(data / f"{t}.csv"))
                faas(cluster, "table", "import", f"adventure.{t}", str(data / f"{t}.csv"))

            # -- 1. catalog commands ----------------------------------------------------
            commands: dict[str, Any] = {}
            floor: list[float] = []
            for cmd in COMMANDS:
                on_local: list[float] = []
                on_cluster: list[float] = []
                for _ in range(args.repeat):
                    on_local.append(faas(local, *cmd)[0])
                    on_cluster.append(faas(cluster, *cmd)[0])
                    floor.append(timed([sys.executable, "-c", "import faas.client"], base)[0])
                commands[" ".join(cmd)] = {
                    "local_daemon_s": median(on_local), "cluster_s": median(on_cluster),
                    "ratio": round(median(on_local) / median(on_cluster), 3),
                }
            assert started["pid"] == json.loads((tmp / "local" / "daemon.json").read_text())["pid"]

            # -- 2. submit vs one DuckDB process ---------------------------------------
            spec_path = tmp / "baseline.json"
            files = {}
            for t in TABLES:
                info = json.loads(faas(local, "table", "get", f"adventure.{t}", "--json")[1].stdout)
                files[t] = source_files(info["metadata_location"])
            spec_path.write_text(json.dumps({"files": files, "out": str(tmp / "duckdb-out")}))
            submit = ("submit", str(EXAMPLE), "-n", "adventure", "--json")
            env_build, _ = faas(local, *submit)  # builds the environment once
            cold: list[float] = []
            duck: list[float] = []
            for _ in range(args.submits):
                wall, p = faas(local, *submit, "--no-cache")
                assert json.loads(p.stdout)["cached"] == [], "a --no-cache run used the cache"
                cold.append(wall)
                duck.append(timed([sys.executable, "-m", "bench.baseline", str(spec_path)], base)[0])
            warm: list[float] = []
            for _ in range(max(5, args.submits)):
                wall, p = faas(local, *submit)
                assert len(json.loads(p.stdout)["cached"]) == 3, "an unchanged submit ran a model"
                warm.append(wall)
        finally:
            faas(local, "local", "stop")
            for p in reversed(procs):
                stop_daemon(p)

    out = {
        "machine": machine(),
        "rows": args.rows,
        "first_command_starts_daemon_s": round(first_command, 3),
        "floor_import_client_s": median(floor),
        "commands": commands,
        "submit": {
            "first_with_environment_build_s": round(env_build, 3),
            "cold_no_cache_s": median(cold), "duckdb_script_s": median(duck),
            "cold_ratio": round(median(cold) / median(duck), 3),
            "warm_unchanged_s": median(warm),
            "runs": {"cold": cold, "duckdb": duck, "warm": warm},
        },
        "goals": {
            "catalog_commands_at_most_1.2x_cluster": all(
                c["ratio"] <= 1.2 for c in commands.values()),
            "cold_submit_at_most_1.5x_duckdb": median(cold) / median(duck) <= 1.5,
            "warm_submit_at_most_0.3s": median(warm) <= 0.3,
        },
    }
    save("loop", out)


if __name__ == "__main__":
    main()
