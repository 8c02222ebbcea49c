"""Planning latency: reading a project statically and planning it, as the project grows.

Generates projects of N models (a DAG over 20 source tables: each model reads
1-3 sources or earlier models, most with ``columns=[...]``, some with
``filter=``), written as several ``.py`` files of 25 models each, and measures
(median of ``--repeat``):
- ``plan_in_process_ms``: ``read_project(files)`` + ``build_plan(...)`` in this
  process, with a lookup backed by a real Lakehouse holding the 20 source
  tables: ``table_info`` at the commit the ref resolves to, as the scheduler does;
- ``read_project_ms``: ``read_project(files)`` alone (the static reading part);
- ``dry_run_round_trip_ms``: ``faas submit --dry-run --json`` minus process
  start: ``Client.plan`` (pack the files, connect, authenticate, send, the
  scheduler plans, reply) against a real scheduler and worker;
- ``cli_dry_run_with_process_start_ms``: the same through the real CLI, for
  context (median of 3);
and, as the baseline in the same run, ``ast_parse_ms``: ``ast.parse`` of the
same files alone, the floor of any static reading.

Prints JSON and writes bench/results/planning.json.

    python -m bench.planning [--sizes 50,200,1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from bench import as_installed, machine, save
from faas.faasd.launch import start_daemon, stop_daemon
from faas.protocol.messages import ScanInput, SubmitRun
from faas.scheduler.dag import Plan
from faas.scheduler.planner import plan_submission
from faas.scheduler.reader import read_project
from faas.store import Lakehouse

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
SOURCES = 20
MODELS_PER_FILE = 25
SOURCE_COLUMNS = ["id", "k0", "k1", "k2", "k3", "v0", "v1", "v2", "v3", "label", "day"]
# What every model declares it returns; inputs from models pick among these.
MODEL_COLUMNS = ["id", "k0", "k1", "v0", "v1", "label"]
FILTERS = ["k0 > 10", "v1 < 0.5", "label = 'a'", "k1 >= 3 and v0 > 0.25"]


def source_table(seed: int, rows: int = 100) -> pa.Table:
    rng = random.Random(seed)
    data: dict[str, list[object]] = {}
    for name in SOURCE_COLUMNS:
        if name.startswith("k") or name == "id":
            data[name] = [rng.randrange(100) for _ in range(rows)]
        elif name.startswith("v"):
            data[name] = [rng.random() for _ in range(rows)]
        else:
            data[name] = [rng.choice("abc") for _ in range(rows)]
    return pa.table(data)


def _model_source(i: int, inputs: list[str], rng: random.Random) -> str:
    params = ",\n    ".join(inputs)
    first = inputs[0].split("=", 1)[0]
    lines = []
    materialize = "\"replace\"" if rng.random() < 0.2 else "None"
    lines.append(f"@faas.model(materialize={materialize}, columns={MODEL_COLUMNS!r})")
    if rng.random() < 0.1:
        lines.append('@faas.python("3.11", pip={"duckdb": ">=1.1"})')
    lines += [
        f"def m{i}(\n    {params},\n):",
        f'    """Model {i}: joins its inputs on id and keeps the declared columns."""',
        "    import duckdb",
        "",
        "    with duckdb.connect() as con:",
        f"        con.register(\"base\", {first})",
        "        return con.sql(",
        f"            \"SELECT id, k0, k1, v0, v1, label FROM base WHERE id % {i % 7 + 2} = 0\"",
        "        ).to_arrow_table()",
        "",
        "",
    ]
    return "\n".join(lines)


def generate_project(root: Path, models: int, seed: int = 0) -> dict[str, str]:
    """Write a project of ``models`` models under ``root``; return its files (path -> text)."""
    rng = random.Random(seed)
    files: dict[str, list[str]] = {}
    for i in range(models):
        chosen: set[str] = set()
        inputs: list[str] = []
        for n in range(rng.randint(1, 3)):
            # Early models read sources; later ones mostly read recent models, making depth.
            if i < 5 or rng.random() < 0.35:
                name, available = f"src{rng.randrange(SOURCES)}", SOURCE_COLUMNS
            else:
                name, available = f"m{rng.randrange(max(0, i - 40), i)}", MODEL_COLUMNS
            if name in chosen:
                continue
            chosen.add(name)
            args = [repr(name)]
            if rng.random() < 0.8:
                args.append(f"columns={sorted(rng.sample(available, rng.randint(2, 4)))!r}")
            if rng.random() < 0.3:
                usable = [f for f in FILTERS if f.split()[0] in available]
                args.append(f"filter={rng.choice(usable)!r}")
            inputs.append(f"in{n}=faas.Model({', '.join(args)})")
        path = f"stage_{i // MODELS_PER_FILE:03d}.py"
        files.setdefault(path, ["import faas", "", ""]).append(_model_source(i, inputs, rng))
    out = {path: "\n".join(parts) for path, parts in files.items()}
    out["faas_project.toml"] = f'[project]\nname = "bench-{models}"\n'
    root.mkdir(parents=True, exist_ok=True)
    for path, text in out.items():
        (root / path).write_text(text)
    return out


def plan_in_process(lh: Lakehouse, files: dict[str, str], ref: str = "main") -> Plan:
    """What the scheduler does for a SubmitRun, minus the network: read, resolve, plan.

    No worker registry here, so the Python-version check is skipped.
    """
    return plan_submission(lh, SubmitRun(files=files, namespace=NAMESPACE, ref=ref), None)


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: imports, first metadata reads, connection set-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def measure(
    lh: Lakehouse, address: str, token_file: Path, root: Path, models: int, repeat: int
) -> dict[str, float | int]:
    from faas.client import Client
    from faas.protocol.replies import PlannedNode

    files = generate_project(root, models)
    plan = plan_in_process(lh, files)
    inputs = [i for n in plan.nodes.values() for i in n.inputs]
    scans = [i for i in inputs if isinstance(i, ScanInput)]

    async def round_trip() -> list[PlannedNode]:
        client = Client(address, token_file=str(token_file))
        return await client.plan(root, namespace=NAMESPACE, ref="main")

    loop = asyncio.new_event_loop()
    try:
        described = loop.run_until_complete(round_trip())
        assert len(described) == models
        round_trip_ms = _median_ms(lambda: loop.run_until_complete(round_trip()), repeat)
    finally:
        loop.close()
    return {
        "models": models,
        "files": sum(1 for p in files if p.endswith(".py")),
        "source_bytes": sum(len(s) for s in files.values()),
        "inputs": len(inputs),
        "table_inputs": len(scans),
        "distinct_tables": len({i.key for i in scans}),
        "filters": sum(1 for i in inputs if i.filter),
        "ast_parse_ms": _median_ms(
            lambda: [ast.parse(s, filename=p) for p, s in files.items() if p.endswith(".py")],
            repeat,
        ),
        "read_project_ms": _median_ms(lambda: read_project(files), repeat),
        "plan_in_process_ms": _median_ms(lambda: plan_in_process(lh, files), repeat),
        "dry_run_round_trip_ms": round_trip_ms,
        "cli_dry_run_with_process_start_ms": _cli_ms(address, token_file, root, repeat=3),
    }


def _cli_ms(address: str, token_file: Path, root: Path, repeat: int) -> float:
    """``faas submit --dry-run --json`` as a user runs it, interpreter start included."""
    env = dict(os.environ, FAAS_CLUSTER=address, FAAS_TOKEN_FILE=str(token_file))
    cmd = [sys.executable, "-m", "faas.client.cli", "submit", str(root), "--namespace", NAMESPACE,
           "--ref", "main", "--dry-run", "--json"]
    return _median_ms(
        lambda: subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True), repeat
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    as_installed()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="faas-bench-planning-") as d:
        tmp = Path(d)
        home = tmp / "home"
        home.mkdir()
        token_file = home / "token"
        token_file.write_text(os.urandom(16).hex())
        with Lakehouse(home) as lh:
            lh.create_namespace(NAMESPACE)
            transaction = lh.begin()
            for s in range(SOURCES):
                transaction.write(f"{NAMESPACE}.src{s}", source_table(s))
            transaction.publish(f"{SOURCES} source tables")
        sched, address = start_daemon(
            ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home),
             "--token-file", str(token_file)],
            "faasd scheduler listening on", tmp / "scheduler.log",
        )
        try:
            worker, _ = start_daemon(
                ["worker", "--scheduler", address, "--token-file", str(token_file),
                 "--shm-dir", str(tmp / "shm"), "--import-root", "/"],
                "faasd worker", tmp / "worker.log",
            )
            try:
                with Lakehouse(home) as lh:
                    rows = [
                        measure(lh, address, home / "admin.token", tmp / f"project-{n}", n, args.repeat)
                        for n in sizes
                    ]
            finally:
                stop_daemon(worker)
        finally:
            stop_daemon(sched)
    out = {
        "benchmark": "planning",
        "sources": SOURCES,
        "repeat": args.repeat,
        "machine": machine(),
        "results": rows,
    }
    save("planning", out)


if __name__ == "__main__":
    main()
