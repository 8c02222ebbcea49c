// The catalog: branches and tags, a ref's commit log, the diff of two refs, the
// namespace → tables browser, and a table's page.
import { api } from "../api.js";
import { h, clear, fmtInt, fmtBytes, fmtTime, fmtAgo, short, escapeHtml, copyButton, section } from "../ui.js";
import { listGrid, resultGrid, setRows } from "../grid.js";
import { refPicker, loadRefs } from "../refs.js";

const tableHref = (key, ref) => `#/catalog/table/${encodeURIComponent(key)}?ref=${encodeURIComponent(ref)}`;

function refList(testid, refs, onpick, current) {
  return h(
    "ul.ref-list",
    { testid, "aria-label": testid === "branches" ? "Branches" : "Tags" },
    refs.length
      ? refs.map((r) =>
          h(
            "li",
            { class: r.name === current ? "current" : "" },
            h(
              "button.ref-item",
              { type: "button", "aria-label": `Show the log of ${r.name}`, "data-ref": r.name, onclick: () => onpick(r.name) },
              h("span.ref-name", r.name),
              h("code.hash", short(r.head)),
            ),
            h("div.ref-msg", { title: `${r.message}\n${fmtTime(r.created_at)}` }, r.message || "", " ", h("span.muted", fmtAgo(r.created_at))),
          ),
        )
      : h("li.muted", "none"),
  );
}

export function catalogPage(view, app, params) {
  let logRef = params.get("ref") || sessionStorage.getItem("faas.console.ref") || "main";
  const branchesHost = h("div");
  const tagsHost = h("div");

  const pickLog = (name) => {
    logRef = name;
    logPicker.set(name);
    showLog();
    showNamespaces();
    for (const li of view.querySelectorAll(".ref-list li")) li.classList.toggle("current", li.querySelector("[data-ref]")?.dataset.ref === name);
  };

  // -- refs -----------------------------------------------------------------------------
  app.guard(async () => {
    const [branches, tags] = await loadRefs(true);
    clear(branchesHost, refList("branches", branches, pickLog, logRef));
    clear(tagsHost, refList("tags", tags, pickLog, logRef));
  });

  // -- log ------------------------------------------------------------------------------
  const logPicker = refPicker({ testid: "log-ref", label: "Ref of the log", value: logRef, app, onchange: (v) => pickLog(v) });
  const logHost = h("div.grid-host.auto", { testid: "log", "aria-label": "Commit log" });
  const logGrid = listGrid(
    logHost,
    [
      { title: "Commit", field: "hash", formatter: (c) => `<code title="${escapeHtml(c.getValue())}">${escapeHtml(short(c.getValue()))}</code>`, headerSort: false },
      { title: "Message", field: "message", widthGrow: 3, maxWidth: 520, tooltip: true, formatter: "plaintext" },
      { title: "Author", field: "author" },
      { title: "Time", field: "created_at", formatter: (c) => `<span title="${escapeHtml(fmtTime(c.getValue()))}">${escapeHtml(fmtAgo(c.getValue()))}</span>` },
      {
        title: "Run",
        field: "run_id",
        formatter: (c) => (c.getValue() ? `<a href="#/runs/${encodeURIComponent(c.getValue())}">${escapeHtml(short(c.getValue(), 12))}</a>` : ""),
      },
      {
        title: "Tables changed",
        field: "tables",
        headerSort: false,
        formatter: (c) =>
          (c.getValue() || []).map((t) => `<a href="${escapeHtml(tableHref(t, c.getRow().getData().hash))}">${escapeHtml(t)}</a>`).join(", "),
      },
    ],
    [],
    { placeholder: "No commits", tabulator: { maxHeight: 360 } },
  );
  async function showLog() {
    const ref = logRef;
    const log = await app.guard(() => api.log(ref, 50));
    if (!log || ref !== logRef) return;
    setRows(logGrid, log.map((c) => ({ ...c, run_id: c.properties?.run_id || "", tables: c.tables || [] })));
  }

  // -- diff -----------------------------------------------------------------------------
  const from = refPicker({ testid: "diff-from", label: "Diff from ref", value: params.get("from") || "main", app });
  const to = refPicker({ testid: "diff-to", label: "Diff to ref", value: params.get("to") || "", app });
  const diffHost = h("div.grid-host.auto", { testid: "diff", "aria-label": "Differences" });
  const diffNote = h("p.muted.small", { "aria-live": "polite" }, "Pick two refs: what changed from the first to the second.");
  const diffGrid = listGrid(
    diffHost,
    [
      { title: "Status", field: "status", formatter: (c) => `<span class="badge d-${escapeHtml(c.getValue())}">${escapeHtml(c.getValue())}</span>` },
      { title: "Kind", field: "kind" },
      {
        title: "Key",
        field: "key",
        formatter: (c) => (c.getRow().getData().kind === "table" ? `<a href="${escapeHtml(tableHref(c.getValue(), to.value))}">${escapeHtml(c.getValue())}</a>` : escapeHtml(c.getValue())),
      },
      { title: "Rows before", field: "old_rows", hozAlign: "right", formatter: (c) => fmtInt(c.getValue()) },
      { title: "Rows after", field: "new_rows", hozAlign: "right", formatter: (c) => fmtInt(c.getValue()) },
      { title: "Old snapshot", field: "old_snapshot_id", formatter: (c) => escapeHtml(c.getValue() ?? "") },
      { title: "New snapshot", field: "new_snapshot_id", formatter: (c) => escapeHtml(c.getValue() ?? "") },
    ],
    [],
    { placeholder: "No differences" },
  );
  const diffRun = h("button.btn.primary", { type: "button", testid: "diff-run" }, "Diff");
  diffRun.addEventListener("click", async () => {
    app.clearError();
    diffRun.disabled = true;
    const a = from.value;
    const b = to.value;
    const changes = await app.guard(() => api.diff(a, b));
    diffRun.disabled = false;
    if (!changes) return;
    clear(diffNote, changes.length ? `${changes.length} difference${changes.length === 1 ? "" : "s"} from ${a} to ${b}` : `${b} has the same tables as ${a}`);
    setRows(diffGrid, changes);
  });

  // -- namespaces and tables ------------------------------------------------------------
  const nsList = h("ul.ns-list", { testid: "namespaces", "aria-label": "Namespaces" });
  const tblList = h("ul.tbl-list", { testid: "tables", "aria-label": "Tables of the namespace" });
  const tblTitle = h("h3", "Tables");
  async function showNamespaces() {
    const ref = logRef;
    const names = await app.guard(() => api.namespaces(ref));
    if (!names || ref !== logRef) return;
    clear(
      nsList,
      names.length
        ? names.map((n) => h("li", h("button.ref-item", { type: "button", "data-ns": n, onclick: () => showTables(n) }, n)))
        : h("li.muted", "No namespaces"),
    );
    clear(tblList);
    clear(tblTitle, "Tables");
    if (names.length) showTables(names[0]);
  }
  async function showTables(n) {
    const ref = logRef;
    for (const b of nsList.querySelectorAll("[data-ns]")) b.classList.toggle("current", b.dataset.ns === n);
    clear(tblTitle, `Tables in ${n}`);
    const keys = await app.guard(() => api.tables(ref, n));
    if (!keys || ref !== logRef) return;
    clear(tblList, keys.length ? keys.map((k) => h("li", h("a", { href: tableHref(k, ref) }, k))) : h("li.muted", "No tables"));
  }

  view.classList.add("catalog-page");
  view.append(
    h("h1", "Catalog"),
    h(
      "div.catalog-layout",
      h("aside.catalog-side", section("Branches", branchesHost), section("Tags", tagsHost)),
      h(
        "div.catalog-main",
        h("section.panel", h("div.panel-head", h("h2", "Log"), h("label.inline", h("span", "Ref"), logPicker.el)), logHost),
        h(
          "section.panel",
          h("div.panel-head", h("h2", "Browse"), h("span.muted.small", "namespaces and tables at the log's ref")),
          h("div.browser", h("div", h("h3", "Namespaces"), nsList), h("div", tblTitle, tblList)),
        ),
        h(
          "section.panel",
          h(
            "div.panel-head",
            h("h2", "Diff"),
            h("label.inline", h("span", "From"), from.el),
            h("label.inline", h("span", "To"), to.el),
            diffRun,
          ),
          diffNote,
          diffHost,
        ),
      ),
    ),
  );
  to.ready.then(() => {
    if (!params.get("to")) {
      // a sensible default: the first branch other than main
      const sel = to.el.querySelector("select");
      const other = [...sel.querySelectorAll("optgroup:first-child option")].map((o) => o.value).find((v) => v !== from.value);
      if (other) to.set(other);
    }
  });
  showLog();
  showNamespaces();
  app.onLeave(() => {
    logGrid.destroy();
    diffGrid.destroy();
  });
}

// -- a table's page ---------------------------------------------------------------------

function snippets(key, ref, user) {
  const origin = location.origin;
  const uri = `${origin}/iceberg/${ref}`;
  const tokenFile = `${user}.token`;
  const [ns] = key.includes(".") ? [key.slice(0, key.lastIndexOf("."))] : [""];
  return [
    [
      "PyIceberg",
      `from pyiceberg.catalog.rest import RestCatalog

catalog = RestCatalog("faas", uri="${uri}",
                      token=open("${tokenFile}").read().strip())
table = catalog.load_table("${key}")
df = table.scan().to_pandas()   # or .to_arrow(), .to_duckdb("t")`,
    ],
    [
      "Spark",
      `spark-sql --conf spark.sql.catalog.faas=org.apache.iceberg.spark.SparkCatalog \\
  --conf spark.sql.catalog.faas.type=rest \\
  --conf spark.sql.catalog.faas.uri=${uri} \\
  --conf spark.sql.catalog.faas.token="$(cat ${tokenFile})" \\
  -e "SELECT * FROM faas.${key} LIMIT 10"`,
    ],
    [
      "DuckDB",
      `INSTALL iceberg; LOAD iceberg;
CREATE SECRET faas (TYPE iceberg, TOKEN '${user}:SECRET');  -- the text of ${tokenFile}
ATTACH '${ref}' AS faas (TYPE iceberg, ENDPOINT '${uri}', SECRET faas);
SELECT * FROM faas.${key} LIMIT 10;${ns ? "" : ""}`,
    ],
  ];
}

function quoteKey(key) {
  return key
    .split(".")
    .map((p) => (/^[a-z_][a-z0-9_]*$/.test(p) ? p : `"${p.replace(/"/g, '""')}"`))
    .join(".");
}

export function tablePage(view, app, key, params) {
  let ref = params.get("ref") || "main";
  const picker = refPicker({
    testid: "table-ref",
    label: "Ref of the table",
    value: ref,
    app,
    onchange: (v) => (location.hash = tableHref(key, v)),
  });
  const body = h("div.table-body", h("p.muted", "Loading…"));
  const grids = [];
  view.classList.add("table-page");
  view.append(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: `#/catalog?ref=${encodeURIComponent(ref)}` }, "Catalog"), " / ", h("span", key)),
    h("div.panel-head", h("h1", key), h("label.inline", h("span", "Ref"), picker.el), h("div.spacer"), h("a.btn", { href: `#/sql?ref=${encodeURIComponent(ref)}&sql=${encodeURIComponent(`SELECT * FROM ${quoteKey(key)} LIMIT 100`)}` }, "Query in SQL")),
    body,
  );
  app.onLeave(() => grids.forEach((g) => g.destroy()));

  app.guard(async () => {
    const t = await api.table(key, ref);
    const schemaHost = h("div.grid-host.auto", { testid: "table-schema", "aria-label": "Schema" });
    const snapsHost = h("div.grid-host.auto", { testid: "table-snapshots", "aria-label": "Snapshots" });
    const previewHost = h("div.grid-host.preview", { testid: "table-preview", "aria-label": "Preview rows" });
    const previewNote = h("span.muted.small");
    clear(
      body,
      h(
        "dl.stats",
        h("div", h("dt", "Rows"), h("dd", { testid: "table-rows" }, fmtInt(t.rows))),
        h("div", h("dt", "Files"), h("dd", fmtInt(t.files))),
        h("div", h("dt", "Size"), h("dd", fmtBytes(t.bytes))),
        h("div", h("dt", "Snapshot"), h("dd", h("code", t.snapshot_id ?? "none"))),
        h("div", h("dt", "Partitioned by"), h("dd", t.partitioned_by || h("span.muted", "not partitioned"))),
      ),
      h(
        "div.meta-loc",
        h("span.muted.small", "Metadata location"),
        h("code", { testid: "table-metadata" }, t.metadata_location || "—"),
        t.metadata_location ? copyButton(t.metadata_location, "Copy the metadata location") : null,
      ),
      h("div.two-col", section("Schema", schemaHost), section("Snapshots", snapsHost)),
      h("section.panel", h("div.panel-head", h("h2", "Preview"), previewNote), previewHost),
      h(
        "section.panel",
        h("h2", "Read it elsewhere"),
        h("p.muted.small", "Through faas's Iceberg REST catalog at this ref; the token is your token file."),
        h(
          "div.snippets",
          snippets(key, ref, app.user).map(([name, code]) =>
            h("figure.snippet", h("figcaption", h("span", name), copyButton(code, `Copy the ${name} snippet`)), h("pre", { tabindex: "0", "aria-label": `${name} snippet` }, h("code", code))),
          ),
        ),
      ),
    );
    grids.push(
      listGrid(schemaHost, [
        { title: "#", formatter: "rownum", headerSort: false, width: 44 },
        { title: "Column", field: "name" },
        { title: "Type", field: "type" },
      ], t.schema || [], { sort: false }),
    );
    grids.push(
      listGrid(
        snapsHost,
        [
          { title: "Snapshot", field: "snapshot_id" },
          { title: "Time", field: "timestamp_ms", formatter: (c) => escapeHtml(fmtTime(c.getValue())) },
          { title: "Operation", field: "operation" },
          {
            title: "Summary",
            field: "summary",
            headerSort: false,
            tooltip: (e, c) => JSON.stringify(c.getValue() || {}, null, 1),
            formatter: (c) => {
              const s = c.getValue() || {};
              const keys = ["added-records", "deleted-records", "total-records", "faas.commit", "faas.run_id"];
              return escapeHtml(keys.filter((k) => s[k] !== undefined).map((k) => `${k}=${s[k]}`).join(" ") || Object.entries(s).slice(0, 3).map(([k, v]) => `${k}=${v}`).join(" "));
            },
          },
        ],
        [...(t.snapshots || [])].sort((a, b) => b.timestamp_ms - a.timestamp_ms),
        { placeholder: "No snapshots", tabulator: { maxHeight: 300 } },
      ),
    );
    const page = await api.query({ sql: `SELECT * FROM ${quoteKey(key)}`, ref, offset: 0, limit: 100 });
    clear(previewNote, `first ${page.rows.length} rows${page.more ? " of more" : ""}`);
    grids.push(resultGrid(previewHost, page.columns, page.rows, { height: "320px" }));
  });
}
