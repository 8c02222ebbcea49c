"""Control-plane overhead: submit → first function start, and per-function cost on a chain.

Starts a real scheduler and worker (separate processes, loopback), imports a
tiny source table, then measures:
- ``submit_to_first_start``: from sending SubmitRun to the first 'running' event;
- ``chain_per_function``: wall time of a chain of N trivial models, divided by N;
- ``process_start``: the worker's own figure for each function, from asking for the
  process to the function's code being about to read its task (median);
each once with functions in their sandboxes (the default) and once with a worker started
``--isolation none``, so the sandbox's cost is the difference of two figures of one run;
and, in the same run, the baseline a fresh process per function cannot beat:
- ``baseline_process_start``: a fresh ``python -c 'import pyarrow'`` that reads a
  tiny Arrow IPC file, which is what a cold function process must do at least.

Prints one JSON object and writes it to bench/results/overhead.json.

    python -m bench.overhead [--chain 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import as_installed, machine, save
from faas.faasd.launch import start_daemon, stop_daemon

ROOT = Path(__file__).resolve().parents[1]


def chain_project(root: Path, n: int) -> Path:
    lines = ["import faas", ""]
    lines += [
        "@faas.model()",
        "def m0(src=faas.Model('bench.src')):",
        "    return src",
        "",
    ]
    for i in range(1, n):
        lines += [
            "@faas.model()",
            f"def m{i}(prev=faas.Model('m{i - 1}')):",
            "    return prev",
            "",
        ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text("\n".join(lines))
    return root


def baseline_process_start(tmp: Path, repeat: int) -> float:
    import pyarrow as pa

    path = tmp / "tiny.arrow"
    table = pa.table({"x": list(range(10))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    code = f"import pyarrow as pa; pa.ipc.open_file(pa.memory_map({str(path)!r})).read_all()"
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(
    address: str, token: bytes, project: Path, chain: int, repeat: int, no_cache: bool = False
) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from faas.client import Client
    from faas.protocol.messages import TaskEvent

    c = Client(address, token=token)
    first_start: list[float] = []
    per_function: list[float] = []
    process_start: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = await c.submit(project, namespace="bench", no_cache=no_cache)
        first = None
        async for ev in run:
            if first is None and isinstance(ev, TaskEvent) and ev.state == "running":
                first = time.perf_counter() - t0
            if isinstance(ev, TaskEvent) and ev.state == "done" and "process_start" in ev.phases:
                process_start.append(ev.phases["process_start"])
        result = await run.result()
        total = time.perf_counter() - t0
        if result.status != "success":
            raise SystemExit(f"bench run failed: {result.error}")
        assert first is not None
        first_start.append(first)
        per_function.append(total / chain)
    return {
        "submit_to_first_start_s": statistics.median(first_start),
        "chain_per_function_s": statistics.median(per_function),
        "chain_total_s": statistics.median(per_function) * chain,
        "process_start_s": statistics.median(process_start),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    as_installed()
    with tempfile.TemporaryDirectory(prefix="faas-bench-") as d:
        tmp = Path(d)
        home = tmp / "home"
        home.mkdir()
        token_file = home / "token"
        token_file.write_text(os.urandom(16).hex())
        sched, address = start_daemon(
            ["scheduler", "--listen", "127.0.0.1:0", "--home", str(home), "--token-file", str(token_file)],
            "faasd scheduler listening on", tmp / "scheduler.log",
        )
        try:
            csv = tmp / "src.csv"
            csv.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
            env = dict(os.environ, FAAS_CLUSTER=address, FAAS_TOKEN_FILE=str(home / "admin.token"))
            project = chain_project(tmp / "chain", args.chain)
            admin = (home / "admin.token").read_text().strip().encode()
            figures: dict[str, dict[str, float]] = {}
            for isolation in ("sandbox", "none"):
                worker, _ = start_daemon(
                    ["worker", "--scheduler", address, "--token-file", str(token_file),
                     "--shm-dir", str(tmp / f"shm-{isolation}"), "--import-root", "/",
                     "--isolation", isolation],
                    "faasd worker", tmp / f"worker-{isolation}.log",
                )
                try:
                    if not figures and isolation == "sandbox":  # the source, once
                        for cmd in (["namespace", "create", "bench"],
                                    ["table", "import", "bench.src", str(csv)]):
                            subprocess.run([sys.executable, "-m", "faas.client.cli", *cmd], env=env,
                                           check=True, capture_output=True, cwd=ROOT)
                    # A first run starts the worker's zygote: not counted.
                    asyncio.run(measure(address, admin, project, args.chain, 1, no_cache=True))
                    figures[isolation] = asyncio.run(measure(
                        address, admin, project, args.chain, args.repeat, no_cache=True,
                    ))
                finally:
                    stop_daemon(worker)
            baseline = baseline_process_start(tmp, max(args.repeat, 5))
        finally:
            stop_daemon(sched)
    sandbox, none = figures["sandbox"], figures["none"]
    figures_out = {
        # The default (functions in their sandboxes), under the names earlier runs used.
        **sandbox,
        "without_sandbox": {k: round(v, 4) for k, v in none.items()},
        "sandbox_process_start_overhead_ms": (sandbox["process_start_s"] - none["process_start_s"]) * 1000,
        "sandbox_per_function_overhead_ms": (sandbox["chain_per_function_s"] - none["chain_per_function_s"]) * 1000,
        "baseline_process_start_s": baseline,
    }
    out = {
        "benchmark": "overhead",
        "chain": args.chain,
        "repeat": args.repeat,
        "machine": machine(),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures_out.items()},
    }
    save("overhead", out)


if __name__ == "__main__":
    main()
