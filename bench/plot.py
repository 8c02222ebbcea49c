"""Draw the benchmark results as SVG bar charts for the README (no plotting library needed).

    python -m bench.plot        # reads bench/results/*.json, writes bench/results/*.svg
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"faas": "#2f6fdf", "baseline": "#9aa3ad"}
BAR, GAP, LABEL_W, CHART_W = 16, 10, 250, 420


def bars_svg(title: str, unit: str, groups: list[tuple[str, list[tuple[str, float]]]]) -> str:
    """Horizontal bars: each group has a label and (series, value) pairs; series is faas/baseline."""
    top = max((v for _, series in groups for _, v in series), default=1.0) or 1.0
    rows = sum(len(series) for _, series in groups)
    height = 40 + rows * (BAR + 4) + len(groups) * GAP + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + CHART_W + 90}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="8" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    y = 36
    for label, series in groups:
        out.append(f'<text x="8" y="{y + BAR - 3}">{escape(label)}</text>')
        for name, value in series:
            w = max(1.0, CHART_W * value / top)
            color = COLORS["baseline" if "baseline" in name else "faas"]
            out.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{color}"/>')
            out.append(
                f'<text x="{LABEL_W + w + 6:.1f}" y="{y + BAR - 3}">{value:,.1f} {unit}</text>'
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
        svg = bars_svg("Per-function cost on a 20-model chain", "ms", [
            ("one function", [("faas (fork of a pre-imported parent)", r["chain_per_function_s"] * 1000),
                              ("baseline: cold python + import pyarrow", r["baseline_process_start_s"] * 1000)]),
        ])
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
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
