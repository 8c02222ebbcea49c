// A mock of the scheduler's console API, for working on the console without a cluster:
//   node dev/mock.mjs [port]      (npm run mock; default port 8471)
// It serves ../faas/console/static at /console/ and canned JSON at /api/v1/...
// Tokens: admin:secret (admin), writer:secret (writer), reader:secret (reader).
// A query whose SQL contains "error" fails; `SELECT 1` answers one row; any other
// query answers 250 generated rows, paged by offset/limit. Dev tooling only.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { join, dirname, extname, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const STATIC = join(here, "..", "..", "faas", "console", "static");
const PORT = Number(process.argv[2] || process.env.PORT || 8471);
const USERS = { "admin:secret": "admin", "writer:secret": "writer", "reader:secret": "reader" };
const now = Date.now() / 1000;
const iso = (s) => new Date(s * 1000).toISOString();

const branches = [
  { name: "main", kind: "branch", head: "a1b2c3d4e5f60718293a", message: "run 20260611-0932-7f3a: fact_sale, dim_product", created_at: iso(now - 3600) },
  { name: "dev", kind: "branch", head: "b2c3d4e5f60718293a4b", message: "import adventure.sale", created_at: iso(now - 7200) },
  { name: "alice.experiment", kind: "branch", head: "c3d4e5f60718293a4b5c", message: "branch from main", created_at: iso(now - 86400) },
];
const tags = [{ name: "v1", kind: "tag", head: "d4e5f60718293a4b5c6d", message: "first release", created_at: iso(now - 5 * 86400) }];
const namespaces = ["adventure", "staging"];
const tables = ["adventure.product", "adventure.sale", "adventure.fact_sale", "adventure.dim_product", "staging.raw_events"];
const log = Array.from({ length: 12 }, (_, i) => ({
  hash: (i + 10).toString(16).repeat(20).slice(0, 40),
  parents: [(i + 11).toString(16).repeat(20).slice(0, 40)],
  message: i % 3 === 0 ? `run 2026061${i}-0932: fact_sale, dim_product` : i % 3 === 1 ? "import adventure.sale" : "create namespace staging",
  author: i % 2 ? "alice" : "admin",
  created_at: iso(now - i * 3700),
  properties: i % 3 === 0 ? { run_id: `run-${1000 - i}` } : {},
  tables: i % 3 === 0 ? ["adventure.fact_sale", "adventure.dim_product"] : i % 3 === 1 ? ["adventure.sale"] : [],
}));

function tableRecord(key) {
  const cols = key.endsWith("sale")
    ? [["SalesOrderNumber", "string"], ["OrderDate", "date"], ["ProductKey", "long"], ["Country", "string"], ["OrderQuantity", "int"], ["Revenue", "double"], ["Profit", "double"]]
    : [["ProductKey", "long"], ["ProductName", "string"], ["Category", "string"], ["Color", "string"], ["ListPrice", "decimal(10,2)"]];
  return {
    key,
    metadata_location: `file:///var/lib/faas/warehouse/${key.replace(".", "/")}/metadata/00003-5e1f.metadata.json`,
    snapshot_id: 4417329310265543000,
    rows: 121253,
    files: 4,
    bytes: 3_482_113,
    schema: cols.map(([name, type]) => ({ name, type })),
    partitioned_by: key.endsWith("sale") ? "month(OrderDate)" : "",
    snapshots: [0, 1, 2].map((i) => ({
      snapshot_id: 4417329310265543000 - i * 1000,
      timestamp_ms: Math.round((now - i * 86400) * 1000),
      operation: i === 2 ? "append" : "overwrite",
      summary: { "added-records": String(40000 + i), "total-records": String(121253 - i * 100), "faas.run_id": `run-${1000 - i * 3}` },
    })),
  };
}

const runs = Array.from({ length: 9 }, (_, i) => {
  const started = now - 30 - i * 1800;
  const status = i === 0 ? "running" : i === 3 ? "failed" : i === 5 ? "cancelled" : "success";
  return {
    run_id: `run-${1000 - i}`,
    status,
    started,
    finished: status === "running" ? null : started + 12 + i * 3.3,
    ref: i % 2 ? "dev" : "main",
    namespace: "adventure",
    project: "adventureworks",
    commit: status === "success" ? (i + 10).toString(16).repeat(20).slice(0, 40) : null,
    error: status === "failed" ? "expectation no_null_keys did not pass: 3 rows with ProductKey NULL" : null,
  };
});

const NODES = {
  raw_sale: [],
  raw_product: [],
  clean_sale: ["raw_sale"],
  dim_product: ["raw_product"],
  fact_sale: ["clean_sale", "dim_product"],
  no_null_keys: ["fact_sale"],
  revenue_by_country: ["fact_sale"],
};

function jobRecord(id) {
  const r = runs.find((x) => x.run_id === id);
  if (!r) return null;
  let t = r.started + 0.2;
  const nodes = {};
  const names = Object.keys(NODES);
  names.forEach((name, i) => {
    const phases = { environment: 0.05 + (i % 3) * 0.4, scan: i < 2 ? 0.8 : 0, inputs: i >= 2 ? 0.3 : 0, code: 0.5 + i * 0.35, output_shm: 0.08, output_parquet: i === 4 ? 1.2 : 0.1 };
    const total = Object.values(phases).reduce((a, b) => a + b, 0);
    const level = i < 2 ? 0 : i < 4 ? 1 : i === 4 ? 2 : 3;
    const start = r.started + 0.2 + level * 2.1 + (i % 2) * 0.1;
    const running = r.status === "running";
    const state = running ? (level < 2 ? "done" : level === 2 ? "running" : "queued") : r.status === "failed" && name === "no_null_keys" ? "failed" : r.status === "cancelled" && level >= 2 ? "cancelled" : "done";
    nodes[name] = {
      state,
      kind: name === "no_null_keys" ? "expectation" : name === "revenue_by_country" ? "sql" : "python",
      worker: `w-${i % 2 ? "b7" : "a3"}`,
      rows: 1000 * (i + 1),
      cached: i === 1,
      phases: state === "queued" ? {} : state === "running" ? { environment: phases.environment, inputs: 0.3 } : phases,
      started: state === "queued" ? null : start,
      finished: state === "done" || state === "failed" ? start + total : null,
      error: state === "failed" ? "3 rows with ProductKey NULL" : null,
      depends_on: NODES[name],
    };
    t = Math.max(t, start + total);
  });
  return { ...r, error_kind: r.status === "failed" ? "ExpectationFailed" : null, tables: ["adventure.fact_sale", "adventure.dim_product"], branch: `faas/run-${id}`, seconds: r.finished ? r.finished - r.started : null, nodes };
}

const cluster = () => ({
  scheduler: "127.0.0.1:8470",
  version: "0.9.0",
  pid: 4242,
  started: now - 7200,
  runs: runs.length,
  idle_seconds: 3.2,
  iceberg: `http://127.0.0.1:${PORT}/iceberg`,
  workers: [
    { worker_id: "w-a3", host_id: "host-1", memory_total: 32 * 2 ** 30, memory_available: 20 * 2 ** 30, memory_reserved: 6 * 2 ** 30, cpus: 8, cpus_reserved: 2, shm_bytes: 512 * 2 ** 20, cache_bytes: 2.4 * 2 ** 30, draining: false, spilled_bytes: 0, python_versions: ["3.12", "3.11"], running: 1, env_builds: 0, functions: [{ task_id: "t-1", run_id: "run-1000", node: "fact_sale" }], isolation: "sandbox" },
    { worker_id: "w-b7", host_id: "host-2", memory_total: 16 * 2 ** 30, memory_available: 12 * 2 ** 30, memory_reserved: 0, cpus: 4, cpus_reserved: 0, shm_bytes: 0, cache_bytes: 780 * 2 ** 20, draining: true, spilled_bytes: 64 * 2 ** 20, python_versions: ["3.12"], running: 0, env_builds: 1, functions: [], isolation: "none" },
  ],
});

const TOTAL = 250;
function queryPage({ sql, offset = 0, limit = 100 }) {
  if (/error/i.test(sql)) return [400, { error: { kind: "QueryError", message: `Binder Error: Referenced column "error" not found in FROM clause!` } }];
  if (/^\s*select\s+1\b/i.test(sql)) return [200, { columns: [{ name: "one", type: "int" }], rows: [[1]], offset: 0, limit, more: false, seconds: 0.004 }];
  const columns = [
    { name: "SalesOrderNumber", type: "string" },
    { name: "OrderDate", type: "date" },
    { name: "Country", type: "string" },
    { name: "OrderQuantity", type: "int" },
    { name: "Revenue", type: "double" },
    { name: "tags", type: "list<string>" },
  ];
  const countries = ["Germany", "France", "United States", "Australia", "Canada", null];
  const rows = [];
  for (let i = offset; i < Math.min(TOTAL, offset + limit); i++) {
    rows.push([`SO${43659 + i}`, `2024-0${1 + (i % 9)}-1${i % 10}`, countries[i % 6], 1 + (i % 7), Math.round(i * 137.31) / 100, i % 4 ? ["web"] : ["store", "promo"]]);
  }
  return [200, { columns, rows, offset, limit, more: offset + limit < TOTAL, seconds: 0.012 + Math.random() * 0.02 }];
}

function send(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
}
const notFound = (res, what) => send(res, 404, { error: { kind: "NotFound", message: `${what} not found` } });

async function events(req, res, id) {
  const job = jobRecord(id);
  if (!job) return notFound(res, `run ${id}`);
  res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  const emit = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
  let t = job.started;
  for (const [name, n] of Object.entries(job.nodes)) {
    if (n.state === "queued") continue;
    emit({ node: name, t: (t += 0.3), state: "running", worker: n.worker });
    emit({ node: name, t: (t += 0.1), stream: "stdout", line: `reading inputs of ${name}` });
    if (name === "clean_sale") emit({ node: name, t: (t += 0.1), stream: "stderr", line: "UserWarning: 12 rows dropped with a NULL OrderDate" });
    emit({ node: name, t: (t += 0.1), stream: "stdout", line: `${n.rows} rows written` });
    if (n.state !== "running") emit({ node: name, t: (t += 0.1), state: n.state, worker: n.worker, error: n.error || undefined, passed: n.kind === "expectation" ? n.state !== "failed" : undefined });
  }
  let closed = false;
  req.on("close", () => (closed = true));
  if (job.status === "running") {
    for (let i = 0; i < 8 && !closed; i++) {
      await new Promise((r) => setTimeout(r, 700));
      emit({ node: "fact_sale", t: Date.now() / 1000, stream: "stdout", line: `batch ${i + 1}/8 joined` });
    }
  }
  if (!closed) {
    res.write(`event: end\ndata: ${JSON.stringify({ status: job.status })}\n\n`);
    res.end();
  }
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".woff2": "font/woff2", ".svg": "image/svg+xml", ".png": "image/png" };

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const p = url.pathname;
  if (p === "/" || p === "/console") {
    res.writeHead(302, { Location: "/console/" });
    return res.end();
  }
  if (p.startsWith("/console/")) {
    const rel = normalize(p.slice("/console/".length) || "index.html").replace(/^(\.\.[/\\])+/, "");
    try {
      const body = await readFile(join(STATIC, rel));
      res.writeHead(200, { "Content-Type": TYPES[extname(rel)] || "application/octet-stream" });
      return res.end(body);
    } catch {
      res.writeHead(404);
      return res.end("not found");
    }
  }
  if (!p.startsWith("/api/v1/")) {
    res.writeHead(404);
    return res.end();
  }
  const auth = (req.headers.authorization || "").replace(/^Bearer /, "");
  const role = USERS[auth];
  if (!role) return send(res, 401, { error: { kind: "Unauthorized", message: "unknown user or wrong secret" } });
  const route = p.slice("/api/v1/".length);
  const q = url.searchParams;
  await new Promise((r) => setTimeout(r, 40)); // a little latency
  let body = "";
  for await (const chunk of req) body += chunk;
  let m;
  if (route === "whoami") return send(res, 200, { user: auth.split(":")[0], role });
  if (route === "branches") return send(res, 200, branches);
  if (route === "tags") return send(res, 200, tags);
  if (route === "log") return send(res, 200, log.slice(0, Number(q.get("n") || 50)));
  if (route === "diff") {
    if (q.get("from") === q.get("to")) return send(res, 200, []);
    return send(res, 200, [
      { key: "adventure.fact_sale", kind: "table", status: "changed", old_snapshot_id: 1, new_snapshot_id: 2, old_rows: 120000, new_rows: 121253 },
      { key: "adventure.dim_product", kind: "table", status: "added", old_snapshot_id: null, new_snapshot_id: 3, old_rows: null, new_rows: 606 },
      { key: "staging", kind: "namespace", status: "dropped", old_snapshot_id: null, new_snapshot_id: null, old_rows: null, new_rows: null },
    ]);
  }
  if (route === "namespaces") return send(res, 200, namespaces);
  if (route === "tables") return send(res, 200, q.get("namespace") ? tables.filter((t) => t.startsWith(`${q.get("namespace")}.`)) : tables);
  if ((m = /^tables\/(.+)$/.exec(route))) {
    const key = decodeURIComponent(m[1]);
    return tables.includes(key) ? send(res, 200, tableRecord(key)) : notFound(res, `table ${key}`);
  }
  if (route === "query" && req.method === "POST") {
    const [status, page] = queryPage(JSON.parse(body || "{}"));
    return send(res, status, page);
  }
  if (route === "export") {
    const [status, page] = queryPage({ sql: q.get("sql") || "", offset: 0, limit: TOTAL });
    if (status !== 200) return send(res, status, page);
    const fmt = q.get("format") || "csv";
    const csv = [page.columns.map((c) => c.name).join(","), ...page.rows.map((r) => r.map((v) => JSON.stringify(v ?? "")).join(","))].join("\n");
    res.writeHead(200, { "Content-Type": fmt === "csv" ? "text/csv" : "application/vnd.apache.parquet", "Content-Disposition": `attachment; filename="result.${fmt}"` });
    return res.end(csv);
  }
  if (route === "jobs") return send(res, 200, runs.slice(0, Number(q.get("limit") || 50)));
  if ((m = /^jobs\/([^/]+)\/events$/.exec(route))) return events(req, res, decodeURIComponent(m[1]));
  if ((m = /^jobs\/([^/]+)\/cancel$/.exec(route)) && req.method === "POST") {
    if (role === "reader") return send(res, 403, { error: { kind: "Forbidden", message: "a reader may not cancel runs" } });
    const r = runs.find((x) => x.run_id === decodeURIComponent(m[1]));
    if (!r) return notFound(res, "run");
    r.status = "cancelled";
    r.finished = Date.now() / 1000;
    return send(res, 200, { run_id: r.run_id, status: "cancelled" });
  }
  if ((m = /^jobs\/([^/]+)$/.exec(route))) {
    const j = jobRecord(decodeURIComponent(m[1]));
    return j ? send(res, 200, j) : notFound(res, `run ${m[1]}`);
  }
  if (route === "cluster") return send(res, 200, cluster());
  return notFound(res, route);
}

createServer((req, res) => {
  handle(req, res).catch((e) => {
    // a client that went away mid-request (a new query, a page left) is not an error
    if (e.code !== "ECONNRESET") console.error(e);
    if (!res.headersSent && !res.destroyed) send(res, 500, { error: { kind: "Fault", message: String(e.message || e) } });
  });
}).listen(PORT, "127.0.0.1", () => console.log(`faas console mock: http://127.0.0.1:${PORT}/console/`));
