// Runs: the list (refreshed every few seconds) and a run's page with its DAG, the timeline
// of its nodes' phases, the live log and, for writers and admins, Cancel.
import { api, followEvents } from "../api.js";
import { h, clear, fmtSeconds, fmtTime, fmtAgo, short, escapeHtml, badge, badgeHtml, toDate } from "../ui.js";
import { listGrid, setRows } from "../grid.js";

const REFRESH_MS = 3000;

function duration(job) {
  const s = toDate(job.started);
  if (!s) return null;
  const f = toDate(job.finished);
  return ((f ? f.getTime() : Date.now()) - s.getTime()) / 1000;
}

export function runsPage(view, app) {
  const host = h("div.grid-host.auto", { testid: "runs", "aria-label": "Runs" });
  const updated = h("span.muted.small", { "aria-live": "off" });
  const grid = listGrid(
    host,
    [
      { title: "Status", field: "status", formatter: (c) => badgeHtml(c.getValue()), width: 96 },
      { title: "Run", field: "run_id", formatter: (c) => `<a href="#/runs/${encodeURIComponent(c.getValue())}">${escapeHtml(c.getValue())}</a>` },
      { title: "Project", field: "project", formatter: (c) => escapeHtml(c.getValue() ?? "") },
      { title: "By", field: "author", formatter: (c) => escapeHtml(c.getValue() ?? c.getRow().getData().user ?? "") },
      { title: "Ref", field: "ref", formatter: (c) => escapeHtml(c.getValue() ?? "") },
      { title: "Namespace", field: "namespace", formatter: (c) => escapeHtml(c.getValue() ?? "") },
      {
        title: "Started",
        field: "started",
        sorter: "number",
        formatter: (c) => `<span title="${escapeHtml(fmtTime(c.getValue()))}">${escapeHtml(fmtAgo(c.getValue()))}</span>`,
      },
      { title: "Duration", field: "duration", sorter: "number", hozAlign: "right", formatter: (c) => escapeHtml(fmtSeconds(c.getValue())) },
      { title: "Commit", field: "commit", formatter: (c) => `<code>${escapeHtml(short(c.getValue()))}</code>` },
      { title: "Error", field: "error", widthGrow: 2, maxWidth: 480, tooltip: true, formatter: (c) => `<span class="err">${escapeHtml(c.getValue() ?? "")}</span>` },
    ],
    [],
    { placeholder: "No runs yet: faas submit starts one", tabulator: { index: "run_id" } },
  );
  grid.on("rowClick", (e, row) => {
    if (e.target.closest("a")) return;
    location.hash = `#/runs/${encodeURIComponent(row.getData().run_id)}`;
  });
  let timer = null;
  let stopped = false;
  async function refresh() {
    const jobs = await app.guard(() => api.jobs(50));
    if (stopped) return;
    if (jobs) {
      await setRows(grid, jobs.map((j) => ({ ...j, duration: duration(j) })));
      clear(updated, `updated ${fmtTime(Date.now() / 1000).slice(11)}`);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  view.append(h("div.panel-head", h("h1", "Runs"), updated), host);
  refresh();
  app.onLeave(() => {
    stopped = true;
    clearTimeout(timer);
    grid.destroy();
  });
}

// -- a run ------------------------------------------------------------------------------

const PHASE_COLORS = {
  environment: "#8e7cc3",
  scan: "#4a90d9",
  inputs: "#45b0a4",
  code: "#f0a030",
  output_shm: "#8bc34a",
  output_parquet: "#5c9e31",
};
const EXTRA_COLORS = ["#c06c84", "#6c5b7b", "#355c7d", "#99b898", "#e84a5f", "#feceab"];

function phaseColor(name, extras) {
  if (PHASE_COLORS[name]) return PHASE_COLORS[name];
  if (!extras.has(name)) extras.set(name, EXTRA_COLORS[extras.size % EXTRA_COLORS.length]);
  return extras.get(name);
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/**
 * The timeline: a row per node, its phases as stacked bars from when it started (relative
 * to the run's start; nodes without a start time are stacked from zero).
 */
function drawTimeline(host, job) {
  const nodes = Object.entries(job.nodes || {});
  const runStart = toDate(job.started)?.getTime() / 1000 || null;
  const rows = nodes.map(([name, n]) => {
    const phases = Object.entries(n.phases || {}).filter(([, v]) => typeof v === "number" && v > 0);
    const total = phases.reduce((a, [, v]) => a + v, 0);
    const st = toDate(n.started)?.getTime() / 1000;
    const fin = toDate(n.finished)?.getTime() / 1000;
    const offset = runStart && st ? Math.max(0, st - runStart) : 0;
    const span = st && fin ? Math.max(total, fin - st) : total;
    return { name, n, phases, total, offset, span };
  });
  // by start; nodes that have not started (no phases yet) last
  rows.sort((a, b) => (a.phases.length ? 0 : 1) - (b.phases.length ? 0 : 1) || a.offset - b.offset || a.name.localeCompare(b.name));
  const maxEnd = Math.max(0.001, ...rows.map((r) => r.offset + r.span));
  const labelW = Math.min(220, 40 + Math.max(40, ...rows.map((r) => r.name.length * 7)));
  const width = Math.max(560, host.clientWidth || 900);
  const barW = width - labelW - 70;
  const rowH = 22;
  const top = 22;
  const height = top + rows.length * rowH + 8;
  const x = (t) => labelW + (t / maxEnd) * barW;
  const extras = new Map();
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Timeline of the nodes' phases" });
  // axis
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const t = (maxEnd * i) / ticks;
    svg.append(s("line", { x1: x(t), x2: x(t), y1: top - 4, y2: height, class: "tl-grid" }));
    svg.append(s("text", { x: x(t), y: 12, class: "tl-tick", "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, fmtSeconds(t)));
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    svg.append(s("text", { x: 4, y: y + 15, class: "tl-label" }, r.name.length > 30 ? `${r.name.slice(0, 29)}…` : r.name));
    if (!r.phases.length) {
      svg.append(s("text", { x: x(r.offset) + 2, y: y + 15, class: "tl-none" }, r.n.cached ? "cached" : r.n.state || "queued"));
      return;
    }
    let t = r.offset;
    for (const [phase, sec] of r.phases) {
      const w = Math.max(1, (sec / maxEnd) * barW);
      svg.append(
        s("rect", { x: x(t), y: y + 4, width: w, height: rowH - 8, rx: 2, fill: phaseColor(phase, extras) }, s("title", {}, `${r.name} · ${phase}: ${fmtSeconds(sec)}`)),
      );
      t += sec;
    }
    svg.append(s("text", { x: x(t) + 4, y: y + 15, class: "tl-total" }, fmtSeconds(r.total)));
  });
  const used = new Set(rows.flatMap((r) => r.phases.map(([p]) => p)));
  const legend = h(
    "div.legend",
    [...used].map((p) => h("span.legend-item", h("span.swatch", { style: { background: phaseColor(p, extras) } }), p)),
  );
  clear(host, rows.length ? [legend, svg] : h("p.muted", "No nodes"));
}

export function runPage(view, app, runId) {
  const head = h("div.run-head", h("h1", "Run ", h("code", runId)));
  const facts = h("dl.stats");
  const dagHost = h("div.dag", { testid: "run-dag", "aria-label": "DAG of the run's nodes" });
  const nodeInfo = h("div.node-info", { "aria-live": "polite" }, h("p.muted.small", "Select a node to see its details."));
  const timelineHost = h("div.timeline", { testid: "run-timeline" });
  const logEl = h("pre.log", { testid: "run-log", tabindex: "0", "aria-label": "Run log", "aria-live": "off" });
  const logFilter = h("select", { "aria-label": "Show the log of", testid: "run-log-node" }, h("option", { value: "" }, "all nodes"));
  const follow = h("input#log-follow", { type: "checkbox", checked: true });
  const logState = h("span.muted.small", "connecting…");
  const cancelBtn = app.canWrite() ? h("button.btn.danger", { type: "button", testid: "run-cancel", hidden: true }, "Cancel run") : null;

  view.classList.add("run-page");
  view.append(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/runs" }, "Runs"), " / ", h("span", runId)),
    h("div.panel-head", head, h("div.spacer"), cancelBtn),
    facts,
    h("div.two-col.run-grid", h("section.panel", h("h2", "DAG"), dagHost, nodeInfo), h("section.panel", h("h2", "Timeline"), timelineHost)),
    h(
      "section.panel",
      h("div.panel-head", h("h2", "Log"), logState, h("div.spacer"), logFilter, h("label.inline", follow, h("span", "Follow"))),
      logEl,
    ),
  );

  let job = null;
  let dag = null;
  let stopped = false;
  const ctl = new AbortController();
  let dagTimer = null;

  function renderFacts() {
    clear(head, h("h1", "Run ", h("code", runId)), " ", badge(job.status));
    const dur = job.seconds ?? duration(job);
    clear(
      facts,
      [
        ["Project", job.project],
        ["Ref", job.ref],
        ["Namespace", job.namespace],
        ["Branch", job.branch],
        ["Started", fmtTime(job.started)],
        ["Duration", fmtSeconds(dur)],
        ["Commit", job.commit ? h("a", { href: `#/catalog?ref=${encodeURIComponent(job.commit)}` }, h("code", short(job.commit))) : null],
        ["Tables", (job.tables || []).length ? (job.tables || []).map((t, i) => [i ? ", " : "", h("a", { href: `#/catalog/table/${encodeURIComponent(t)}?ref=${encodeURIComponent(job.commit || job.ref || "main")}` }, t)]) : null],
      ]
        .filter(([, v]) => v !== null && v !== undefined && v !== "")
        .map(([k, v]) => h("div", h("dt", k), h("dd", v))),
      job.error ? h("div.wide", h("dt", "Error"), h("dd.err", job.error_kind ? `${job.error_kind}: ` : "", job.error)) : null,
    );
    if (cancelBtn) cancelBtn.hidden = job.status !== "running";
    const names = Object.keys(job.nodes || {});
    if (logFilter.options.length !== names.length + 1) {
      const v = logFilter.value;
      clear(logFilter, h("option", { value: "" }, "all nodes"), names.map((n) => h("option", { value: n }, n)));
      logFilter.value = v;
    }
  }

  function showNode(name) {
    const n = name && job?.nodes?.[name];
    if (!n) {
      clear(nodeInfo, h("p.muted.small", "Select a node to see its details."));
      return;
    }
    clear(
      nodeInfo,
      h("h3", name, " ", badge(n.state)),
      h(
        "dl.stats.compact",
        [
          ["Kind", n.kind],
          ["Worker", n.worker],
          ["Rows", n.rows?.toLocaleString("en-US")],
          ["Cached", n.cached ? "yes" : null],
          ["Depends on", (n.depends_on || []).join(", ")],
          ["Phases", Object.entries(n.phases || {}).map(([p, v]) => `${p} ${fmtSeconds(v)}`).join(" · ")],
        ]
          .filter(([, v]) => v)
          .map(([k, v]) => h("div", h("dt", k), h("dd", v))),
      ),
      n.error ? h("p.err", n.error) : null,
    );
  }

  async function loadJob() {
    const j = await app.guard(() => api.job(runId));
    if (!j || stopped) return;
    job = j;
    renderFacts();
    drawTimeline(timelineHost, job);
    if (!dag) {
      try {
        const { drawDag } = await import("../dag.js");
        if (stopped) return;
        dagHost.replaceChildren();
        dag = drawDag(dagHost, job.nodes || {}, { onSelect: showNode });
      } catch (e) {
        app.showError(e);
      }
    } else {
      for (const [name, n] of Object.entries(job.nodes || {})) dag.update(name, n.state);
    }
  }

  // -- the live log -----------------------------------------------------------------------
  let pending = [];
  let flushQueued = false;
  function flush() {
    flushQueued = false;
    if (!pending.length) return;
    const frag = document.createDocumentFragment();
    for (const l of pending) frag.append(l);
    pending = [];
    logEl.append(frag);
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  }
  function addLine(ev) {
    const t = ev.t ? fmtTime(ev.t).slice(11) : "";
    let line;
    if (ev.line !== undefined && ev.line !== null) {
      line = h(`div.ll${ev.stream === "stderr" ? ".stderr" : ""}`, h("span.lt", t), h("span.ln", ev.node || ""), h("span.lx", ev.line));
    } else if (ev.state) {
      const extra = [ev.worker ? `on ${ev.worker}` : "", ev.passed === true ? "passed" : ev.passed === false ? "did not pass" : "", ev.error || ""].filter(Boolean).join(" · ");
      line = h("div.ll.state", h("span.lt", t), h("span.ln", ev.node || ""), h("span.lx", badge(ev.state), extra ? ` ${extra}` : ""));
    } else {
      return;
    }
    line.dataset.node = ev.node || "";
    if (logFilter.value && line.dataset.node !== logFilter.value) line.hidden = true;
    pending.push(line);
    if (!flushQueued) {
      flushQueued = true;
      requestAnimationFrame(flush);
    }
  }
  logFilter.addEventListener("change", () => {
    for (const l of logEl.children) l.hidden = !!logFilter.value && l.dataset.node !== logFilter.value;
  });

  function onEvent(ev) {
    addLine(ev);
    if (ev.state && job?.nodes?.[ev.node]) {
      job.nodes[ev.node].state = ev.state;
      dag?.update(ev.node, ev.state);
      // phases arrive with the job record: refetch it after a burst of state changes
      clearTimeout(dagTimer);
      dagTimer = setTimeout(loadJob, 800);
    }
  }

  async function streamEvents() {
    clear(logState, "live");
    logState.classList.add("live");
    try {
      await followEvents(runId, {
        signal: ctl.signal,
        onEvent,
        onEnd: (end) => {
          flush();
          clear(logState, `ended${end?.status ? `: ${end.status}` : ""}`);
          logState.classList.remove("live");
          loadJob();
        },
      });
    } catch (e) {
      if (e.name !== "AbortError" && e.status !== 401) {
        clear(logState, "disconnected");
        logState.classList.remove("live");
        app.showError(e);
      }
    }
  }

  if (cancelBtn) {
    cancelBtn.addEventListener("click", async () => {
      if (!confirm(`Cancel run ${runId}?`)) return;
      cancelBtn.disabled = true;
      const r = await app.guard(() => api.cancel(runId));
      cancelBtn.disabled = false;
      if (r) loadJob();
    });
  }

  loadJob().then(() => {
    if (!stopped) streamEvents();
  });
  app.onLeave(() => {
    stopped = true;
    ctl.abort();
    clearTimeout(dagTimer);
    dag?.destroy();
  });
}
