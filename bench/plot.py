"""Draw the benchmark results as SVG bar charts for the README (no plotting library needed).

    python -m bench.plot        # reads bench/results/*.json, writes bench/results/*.svg
"""

from __future__ import annotations

import json
from html import escape

from bench import RESULTS

COLORS = {"faas": "#2f6fdf", "baseline": "#9aa3ad"}
BAR, GAP, LABEL_W, CHART_W = 16, 10, 250, 420


def bars_svg(
    title: str, unit: str, groups: list[tuple[str, list[tuple[str, float]]]],
    units: list[str] | None = None, digits: list[int] | None = None,
    maxima: list[float | None] | None = None,
) -> str:
    """Horizontal bars: each group has a label and (series, value) pairs; series is faas/baseline.

    With ``units`` (one per group) every group is a measurement of its own: it has its
    own unit, its bars are scaled to its own largest value, and values get two decimals
    (or ``digits``, one per group); ``maxima`` fixes a group's full scale (100 for %).
    """
    tops = [max((v for _, v in series), default=1.0) or 1.0 for _, series in groups]
    if maxima:
        tops = [m if m is not None else t for m, t in zip(maxima, tops, strict=True)]
    top = max(tops, default=1.0)
    # A group of its own scale gets its label on a line of its own, above its bars.
    rows = sum(len(series) for _, series in groups) + (len(groups) if units else 0)
    height = 40 + rows * (BAR + 4) + len(groups) * GAP + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + CHART_W + (130 if units else 90)}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="8" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    y = 36
    for g, (label, series) in enumerate(groups):
        if units:
            out.append(f'<text x="8" y="{y + BAR - 3}" font-weight="bold">{escape(label)}</text>')
            y += BAR + 4
        else:
            out.append(f'<text x="8" y="{y + BAR - 3}">{escape(label)}</text>')
        places = digits[g] if digits else 2
        scale, text = (tops[g], f"{{:,.{places}f}} {units[g]}") if units else (top, f"{{:,.1f}} {unit}")
        for name, value in series:
            w = max(1.0, CHART_W * value / scale)
            color = COLORS["baseline" if "baseline" in name else "faas"]
            out.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{color}"/>')
            out.append(
                f'<text x="{LABEL_W + w + 6:.1f}" y="{y + BAR - 3}">{escape(text.format(value))}</text>'
            )
            out.append(f'<text x="{LABEL_W - 8}" y="{y + BAR - 3}" text-anchor="end" '
                       f'fill="#555">{escape(name)}</text>')
            y += BAR + 4
        y += GAP
    out.append(f'<text x="8" y="{height - 10}" fill="#555">blue: faas; grey: baseline '
               f'measured in the same run</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    written = []
    overhead = RESULTS / "overhead.json"
    if overhead.exists():
        r = json.loads(overhead.read_text())
        bars = [("faas, sandboxed (fork of a pre-imported parent)", r["chain_per_function_s"] * 1000)]
        if "without_sandbox" in r:
            bars.append(("faas, --isolation none", r["without_sandbox"]["chain_per_function_s"] * 1000))
        bars.append(("baseline: cold python + import pyarrow", r["baseline_process_start_s"] * 1000))
        svg = bars_svg("Per-function cost on a 20-model chain", "ms", [("one function", bars)])
        (RESULTS / "overhead.svg").write_text(svg)
        written.append("overhead.svg")
    planning = RESULTS / "planning.json"
    if planning.exists():
        r = json.loads(planning.read_text())
        svg = bars_svg("Planning a project", "ms", [
            (f"{x['models']:,} models", [("faas plan (in process)", x["plan_in_process_ms"]),
                                          ("baseline: ast.parse alone", x["ast_parse_ms"])])
            for x in r["results"]
        ])
        (RESULTS / "planning.svg").write_text(svg)
        written.append("planning.svg")
    catalog = RESULTS / "catalog.json"
    if catalog.exists():
        r = json.loads(catalog.read_text())
        svg = bars_svg("Catalog latency as it grows", "ms", [
            (f"{x['tables']:,} tables", [("commit", x["commit_ms"]), ("three-way merge", x["merge_ms"]),
                                          ("create branch", x["branch_create_ms"]),
                                          ("baseline: bare SQL transaction", x["baseline_sql_txn_ms"])])
            for x in r["results"]
        ])
        (RESULTS / "catalog.svg").write_text(svg)
        written.append("catalog.svg")
        if r.get("history"):
            svg = bars_svg("What a run asks of the catalog, as history grows", "ms", [
                (f"{x['commits']:,} commits", [
                    ("publish check", x["publish_check_ms"]), ("run merge", x["run_merge_ms"]),
                    ("oldest table lookup", x["oldest_table_lookup_ms"]),
                    ("baseline: bare SQL transaction", x["baseline_sql_txn_ms"])])
                for x in r["history"]
            ])
            (RESULTS / "catalog-history.svg").write_text(svg)
            written.append("catalog-history.svg")
    exchange = RESULTS / "exchange.json"
    if exchange.exists():
        r = json.loads(exchange.read_text())
        h, p, m, rr = r["handoff"], r["peer"], r["readers"], r["rerun"]
        gib = h["table_bytes"] / 2**30
        svg = bars_svg("Data exchange (each group on its own scale)", "", [
            (f"{gib:.0f} GiB handoff: the consumer has its table", [
                ("faas: map the shm object", 1000 * h["faas"]["consumer_open_s"]["median"]),
                ("baseline: read Parquet", 1000 * h["baseline"]["consumer_open_s"]["median"])]),
            (f"{gib:.0f} GiB handoff: the consumer has read every byte", [
                ("faas: map, then read", h["faas"]["consumer_read_s"]["median"]),
                ("baseline: read Parquet, then read", h["baseline"]["consumer_read_s"]["median"])]),
            (f"{gib:.0f} GiB handoff: write + read", [
                ("faas: IPC file in shm + map", h["faas"]["total_s"]["median"]),
                ("baseline: Parquet write + read", h["baseline"]["total_s"]["median"])]),
            (f"{p['object_bytes'] / 2**30:.0f} GiB between workers (higher is better)", [
                ("faas: fetch_object, loopback", p["faas_gib_s"]["median"]),
                ("baseline: raw socket, reused buffer", p["raw_gib_s"]["median"]),
                ("baseline: raw socket into new shm", p["raw_into_fresh_shm_gib_s"]["median"])]),
            (f"{m['readers']} readers of {m['table_bytes'] / 2**30:.0f} GiB: memory", [
                ("faas: one shared object", m["faas"]["added_bytes"]["median"] / 2**30),
                ("baseline: Parquet, one copy each", m["baseline"]["added_bytes"]["median"] / 2**30)]),
            (f"pipeline, {rr['rows'] / 1e6:.0f}M rows: faas submit", [
                ("faas: warm re-run (all cached)", rr["warm_cli_wall_s"]["median"]),
                ("baseline: --no-cache (cold)", rr["cold_cli_wall_s"]["median"])]),
        ], units=["ms", "s", "s", "GiB/s", "GiB added", "s"])
        (RESULTS / "exchange.svg").write_text(svg)
        written.append("exchange.svg")
    cluster = RESULTS / "cluster.json"
    if cluster.exists():
        r = json.loads(cluster.read_text())
        groups: list[tuple[str, list[tuple[str, float]]]] = []
        units: list[str] = []
        places: list[int] = []
        maxima: list[float | None] = []
        ff = "baseline: round-robin first fit"
        for sc in r.get("placement", []):
            rate = {k: sc[k]["decisions_per_s"]["median"]
                    for k in ("faas", "baseline", "baseline_unbounded") if k in sc}
            series = [("faas Placement", rate["faas"]), (ff, rate["baseline"])]
            if "baseline_unbounded" in rate:
                series.append(("baseline: same, unbounded queue", rate["baseline_unbounded"]))
            where = f"{sc['nodes']:,} nodes on {sc['workers']} workers"
            groups.append((f"placement, {sc['scenario']}: {where}", series))
            units.append("decisions/s")
            places.append(0)
            maxima.append(None)
            groups.append((f"{sc['scenario']}: input bytes on the chosen host", [
                ("faas Placement", 100 * sc["faas"]["local_fraction"]["median"]),
                (ff, 100 * sc["baseline"]["local_fraction"]["median"])]))
            units.append("%")
            places.append(1)
            maxima.append(100.0)
        pipe = r.get("pipeline")
        if pipe:
            groups.append((f"example pipeline, {pipe['rows'] / 1e6:.0f}M rows: run time", [
                ("1 worker", pipe["workers_1"]["run_s"]["median"]),
                ("3 workers, one machine", pipe["workers_3"]["run_s"]["median"])]))
            units.append("s")
            places.append(2)
            maxima.append(None)
        svg = bars_svg("Cluster (each group on its own scale)", "", groups,
                       units=units, digits=places, maxima=maxima)
        (RESULTS / "cluster.svg").write_text(svg)
        written.append("cluster.svg")
    loop = RESULTS / "loop.json"
    if loop.exists():
        r = json.loads(loop.read_text())
        groups = [
            (f"faas {cmd}", [("faas, resident local daemon", 1000 * c["local_daemon_s"]),
                             ("baseline: same command, hand-started cluster", 1000 * c["cluster_s"]),
                             ("floor: python -c 'import faas.client'", 1000 * r["floor_import_client_s"])])
            for cmd, c in r["commands"].items()
        ]
        sub = r["submit"]
        groups.append((f"faas submit, {r['rows'] / 1e3:,.0f}k sale rows", [
            ("faas --no-cache (cold, environment built)", 1000 * sub["cold_no_cache_s"]),
            ("faas, unchanged project (warm)", 1000 * sub["warm_unchanged_s"]),
            ("baseline: one DuckDB process, same work", 1000 * sub["duckdb_script_s"])]))
        svg = bars_svg("The feedback loop: wall time of a whole command", "ms", groups,
                       units=["ms"] * len(groups), digits=[0] * len(groups))
        (RESULTS / "loop.svg").write_text(svg)
        written.append("loop.svg")
    for e2e in sorted(RESULTS.glob("e2e*.json")):
        r = json.loads(e2e.read_text())
        cores = r["machine"]["cpus"]
        groups, units = [], []
        for size in r["sizes"]:
            rows = f"{size['rows'] / 1e6:g}M rows" if size["rows"] >= 1e6 else f"{size['rows'] / 1e3:g}k rows"
            groups.append((f"{rows}: wall time", [("faas submit --no-cache", size["faas"]["wall_s"]),
                                                  ("baseline: DuckDB script", size["duckdb"]["wall_s"])]))
            units.append("s")
            groups.append((f"{rows}: peak memory", [
                ("faas (all processes + shm)", size["faas"]["peak_memory_gib"]),
                ("baseline: DuckDB script", size["duckdb"]["peak_memory_gib"])]))
            units.append("GiB")
        svg = bars_svg(f"The example end to end, {cores} cores (each group on its own scale)", "",
                       groups, units=units)
        (RESULTS / f"{e2e.stem}.svg").write_text(svg)
        written.append(f"{e2e.stem}.svg")
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
