// The cluster: the scheduler and its workers, refreshed every few seconds.
import { api } from "../api.js";
import { h, clear, fmtBytes, fmtTime, fmtSeconds, escapeHtml } from "../ui.js";
import { listGrid, setRows } from "../grid.js";

const REFRESH_MS = 3000;

function memBar(w) {
  const total = w.memory_total || 1;
  const reserved = Math.min(1, (w.memory_reserved || 0) / total) * 100;
  const used = Math.min(1, Math.max(0, total - (w.memory_available ?? total)) / total) * 100;
  return `<div class="membar" title="reserved ${fmtBytes(w.memory_reserved)} · in use on the host ${fmtBytes(total - (w.memory_available ?? total))} · total ${fmtBytes(total)}"><span class="used" style="width:${used.toFixed(1)}%"></span><span class="res" style="width:${reserved.toFixed(1)}%"></span></div>`;
}

export function clusterPage(view, app) {
  const facts = h("dl.stats");
  const host = h("div.grid-host.auto", { testid: "workers", "aria-label": "Workers" });
  const bytes = (c) => escapeHtml(fmtBytes(c.getValue()));
  const grid = listGrid(
    host,
    [
      { title: "Worker", field: "worker_id", formatter: (c) => `<code>${escapeHtml(c.getValue())}</code>${c.getRow().getData().draining ? ' <span class="badge s-warning">draining</span>' : ""}` },
      { title: "Host", field: "host_id" },
      { title: "Memory", field: "memory_total", headerSort: false, formatter: (c) => memBar(c.getRow().getData()), width: 120 },
      { title: "Total", field: "memory_total", hozAlign: "right", formatter: bytes },
      { title: "Reserved", field: "memory_reserved", hozAlign: "right", formatter: bytes },
      { title: "Free", field: "memory_free", hozAlign: "right", formatter: bytes },
      { title: "CPUs", field: "cpus", hozAlign: "right", formatter: (c) => `${c.getRow().getData().cpus_reserved ?? 0}/${c.getValue()}` },
      { title: "Objects in use", field: "shm_bytes", hozAlign: "right", formatter: bytes, headerTooltip: "shared-memory objects held for running runs" },
      { title: "Cache", field: "cache_bytes", hozAlign: "right", formatter: bytes },
      { title: "Spilled", field: "spilled_bytes", hozAlign: "right", formatter: bytes },
      { title: "Running", field: "running", hozAlign: "right" },
      {
        title: "Functions",
        field: "functions",
        headerSort: false,
        widthGrow: 2,
        formatter: (c) =>
          (c.getValue() || [])
            .map((f) => (f.run_id ? `<a href="#/runs/${encodeURIComponent(f.run_id)}">${escapeHtml(f.node)}</a>` : `<span class="muted">${escapeHtml(f.node || f.task_id)}</span>`))
            .join(", "),
      },
      { title: "Draining", field: "draining", formatter: (c) => (c.getValue() ? "yes" : "no") },
      { title: "Isolation", field: "isolation", formatter: (c) => `<span class="${c.getValue() === "none" ? "err" : ""}">${escapeHtml(c.getValue() || "sandbox")}</span>` },
      { title: "Python", field: "python_versions", headerSort: false, formatter: (c) => escapeHtml((c.getValue() || []).join(", ")) },
    ],
    [],
    { placeholder: "No workers registered", tabulator: { index: "worker_id" } },
  );
  let timer = null;
  let stopped = false;
  async function refresh() {
    const c = await app.guard(() => api.cluster());
    if (stopped) return;
    if (c) {
      clear(
        facts,
        [
          ["Scheduler", c.scheduler],
          ["Version", c.version],
          ["PID", c.pid],
          ["Up since", fmtTime(c.started)],
          ["Runs", c.runs],
          ["Idle", fmtSeconds(c.idle_seconds)],
          ["Iceberg REST", c.iceberg || "not served"],
          ["Workers", (c.workers || []).length],
        ].map(([k, v]) => h("div", h("dt", k), h("dd", String(v ?? "")))),
      );
      await setRows(grid, (c.workers || []).map((w) => ({ ...w, memory_free: Math.max(0, (w.memory_total || 0) - (w.memory_reserved || 0)) })));
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  view.append(h("h1", "Cluster"), facts, h("section.panel", h("h2", "Workers"), host));
  refresh();
  app.onLeave(() => {
    stopped = true;
    clearTimeout(timer);
    grid.destroy();
  });
}
