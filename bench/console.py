"""The web console's first page, as a browser shows it on loopback.

A resident local daemon (its scheduler serves the console) and Debian's headless Chromium
(Playwright). Measured in one run, alternating, each in a new browser context (no cache):
- sign-in: from navigation to the sign-in form shown;
- SQL page: from submitting the token to the SQL page ready (its ref picker filled from
  the API);
- a query page: from Ctrl-Enter to the first 100 rows of a 100,000-row table shown;
- the floor: the same browser loading a blank page from the same HTTP server (the
  console's redirect, ``/console`` -> ``/console/``, answered without the bundle).

Goal (the issue's): the first page under 1 s on loopback.

    python -m bench.console [--repeat 10]
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

from bench import as_installed, machine, save

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def faas(env: dict[str, str], *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "faas.client.cli", *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"faas {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    as_installed()
    import pyarrow as pa
    import pyarrow.parquet as pq
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "FAAS_HOME": str(tmp / "home")}
        env.pop("FAAS_CLUSTER", None)
        faas(env, "namespace", "create", "bench")
        big = tmp / "big.parquet"
        pq.write_table(pa.table({"n": pa.array(range(100_000), pa.int64()),
                                 "label": [f"row {i}" for i in range(100_000)]}), big)
        faas(env, "table", "import", "bench.big", str(big))
        url = json.loads(faas(env, "console", "--no-open", "--json"))["console"]
        token = (tmp / "home" / "admin.token").read_text().strip()
        signin, sql_page, query, floor = [], [], [], []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                            args=CHROMIUM_ARGS)
                for _ in range(args.repeat):
                    context = browser.new_context()
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(url.rstrip("/") + "/api/v1/whoami")  # 401: the server, no page
                    floor.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    page.goto(url)
                    page.get_by_test_id("signin-token").wait_for()
                    signin.append(time.perf_counter() - t0)
                    page.get_by_test_id("signin-token").fill(token)
                    t0 = time.perf_counter()
                    page.get_by_test_id("signin-submit").click()
                    page.wait_for_function("document.querySelector('[data-testid=ref-picker]')"
                                           "?.options.length > 0")
                    sql_page.append(time.perf_counter() - t0)
                    page.get_by_test_id("namespace-picker").select_option("bench")
                    page.get_by_test_id("sql-editor").locator(".cm-content").click()
                    page.keyboard.press("Control+a")
                    page.keyboard.press("Delete")
                    page.keyboard.insert_text("SELECT n, label FROM big ORDER BY n")
                    t0 = time.perf_counter()
                    page.keyboard.press("Control+Enter")
                    page.wait_for_function("document.querySelector('[data-testid=results-count]')"
                                           ".innerText.includes('1–100')")
                    query.append(time.perf_counter() - t0)
                    context.close()
                browser.close()
        finally:
            faas(env, "local", "stop")
    out = {
        "machine": machine(),
        "floor_http_roundtrip_s": median(floor),
        "signin_page_s": median(signin),
        "sql_page_after_signin_s": median(sql_page),
        "first_query_page_of_100000_rows_s": median(query),
        "runs": {"floor": floor, "signin": signin, "sql_page": sql_page, "query": query},
        "goals": {"first_page_under_1s": median(signin) < 1.0},
    }
    save("console", out)


if __name__ == "__main__":
    main()
