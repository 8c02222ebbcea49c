// The SQL page: the editor, ref and namespace pickers, a paged result grid, exports and
// this user's query history.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { Compartment, Prec } from "@codemirror/state";
import { sql as sqlLanguage, PostgreSQL } from "@codemirror/lang-sql";
import { completionStatus } from "@codemirror/autocomplete";
import { api, exportResult } from "../api.js";
import { h, clear, fmtSeconds, fmtAgo, fmtInt } from "../ui.js";
import { resultGrid } from "../grid.js";
import { refPicker, namespacePicker, schemaFor } from "../refs.js";

const PAGE = 100;
const HISTORY_MAX = 100;

function historyKey(user) {
  return `faas.console.history.${user}`;
}

export function loadHistory(user) {
  try {
    return JSON.parse(localStorage.getItem(historyKey(user)) || "[]");
  } catch {
    return [];
  }
}

function saveHistory(user, entries) {
  try {
    localStorage.setItem(historyKey(user), JSON.stringify(entries.slice(0, HISTORY_MAX)));
  } catch {
    // storage full or disabled: history is a convenience
  }
}

/** Table keys named after FROM/JOIN (and any known key mentioned) in the text. */
function referencedTables(text, keys, namespace) {
  const found = new Set();
  const lower = text.toLowerCase();
  for (const key of keys) {
    const k = key.toLowerCase();
    const shortName = k.slice(k.lastIndexOf(".") + 1);
    const ns = k.slice(0, k.lastIndexOf("."));
    if (lower.includes(k)) found.add(key);
    else if (ns === (namespace || "").toLowerCase() && new RegExp(`\\b${shortName.replace(/[^\w]/g, "\\$&")}\\b`).test(lower)) found.add(key);
  }
  return [...found];
}

export function sqlPage(view, app, params) {
  const user = app.user;
  const draftKey = `faas.console.draft.${user}`;
  let state = {
    ref: params.get("ref") || sessionStorage.getItem("faas.console.ref") || "main",
    namespace: params.get("namespace") ?? sessionStorage.getItem("faas.console.namespace") ?? "",
  };
  const initialSql = params.get("sql") || localStorage.getItem(draftKey) || "SELECT 1 AS one";

  // -- pickers --------------------------------------------------------------------------
  const ref = refPicker({
    testid: "ref-picker",
    label: "Ref to query",
    value: state.ref,
    app,
    onchange: (v) => {
      state.ref = v;
      sessionStorage.setItem("faas.console.ref", v);
      ns.load(v);
      refreshSchema();
    },
  });
  const ns = namespacePicker({
    testid: "namespace-picker",
    label: "Namespace",
    value: state.namespace,
    app,
    onchange: (v) => {
      state.namespace = v;
      sessionStorage.setItem("faas.console.namespace", v);
      refreshSchema();
    },
  });

  // -- editor ---------------------------------------------------------------------------
  const language = new Compartment();
  const langConfig = (schema = {}) =>
    sqlLanguage({ dialect: PostgreSQL, schema, defaultSchema: state.namespace || undefined, upperCaseKeywords: true });
  const columnSource = async (context) => {
    const word = context.matchBefore(/[\w$]+/);
    if (!word && !context.explicit) return null;
    const before = context.state.sliceDoc(Math.max(0, (word ? word.from : context.pos) - 1), word ? word.from : context.pos);
    if (before === ".") return null; // t.col: the schema completion answers
    const schema = schemaFor(state.ref);
    let keys = [];
    try {
      keys = await schema.tables();
    } catch {
      return null;
    }
    const tables = referencedTables(context.state.doc.toString(), keys, state.namespace).slice(0, 8);
    if (!tables.length) return null;
    const lists = await Promise.all(tables.map((k) => schema.tableColumns(k)));
    if (context.aborted) return null;
    scheduleSchema();
    const options = [];
    const seen = new Set();
    lists.forEach((cols, i) => {
      for (const c of cols) {
        if (seen.has(c.name)) continue;
        seen.add(c.name);
        options.push({ label: c.name, type: "property", detail: `${c.type} · ${tables[i]}`, boost: 5 });
      }
    });
    return { from: word ? word.from : context.pos, options, validFor: /^[\w$]*$/ };
  };
  const run = () => {
    runQuery(0);
    return true;
  };
  const editorHost = h("div.editor", { testid: "sql-editor", "aria-label": "SQL editor" });
  const editor = new EditorView({
    parent: editorHost,
    doc: initialSql,
    extensions: [
      Prec.highest(keymap.of([{ key: "Mod-Enter", run }, { key: "Shift-Enter", run }])),
      basicSetup,
      language.of(langConfig()),
      PostgreSQL.language.data.of({ autocomplete: columnSource }),
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({ "aria-label": "SQL query" }),
      EditorView.updateListener.of((u) => {
        if (u.docChanged) localStorage.setItem(draftKey, u.state.doc.toString());
      }),
    ],
  });

  // The schema map for completion: tables at the ref (nested by namespace), then the
  // columns of the tables fetched so far.
  let schemaTimer = null;
  function buildSchema() {
    const schema = schemaFor(state.ref);
    return schema.tables().then((keys) => {
      const nested = {};
      for (const key of keys) {
        const i = key.lastIndexOf(".");
        const n = i < 0 ? "" : key.slice(0, i);
        const t = key.slice(i + 1);
        const cols = (schema.known.get(key) || []).map((c) => ({ label: c.name, type: "property", detail: c.type }));
        (nested[n] ||= {})[t] = cols;
      }
      return nested;
    });
  }
  // Reconfiguring replaces the completion sources, which would empty an open completion
  // list: wait until it is closed, and only when the map has grown.
  let schemaSig = "";
  function applySchema() {
    buildSchema()
      .then((nested) => {
        const sig = JSON.stringify([state.ref, state.namespace, nested]);
        if (sig === schemaSig) return;
        if (completionStatus(editor.state) !== null) {
          scheduleSchema(500);
          return;
        }
        schemaSig = sig;
        editor.dispatch({ effects: language.reconfigure(langConfig(nested)) });
      })
      .catch(() => {});
  }
  function scheduleSchema(ms = 300) {
    clearTimeout(schemaTimer);
    schemaTimer = setTimeout(applySchema, ms);
  }
  function refreshSchema() {
    applySchema();
    renderTables();
  }

  // -- results --------------------------------------------------------------------------
  const runBtn = h("button.btn.primary", { type: "button", testid: "sql-run", onclick: () => runQuery(0), title: "Run (Ctrl/Cmd-Enter)" }, "▶ Run");
  const csvBtn = h("button.btn", { type: "button", testid: "export-csv", onclick: () => doExport("csv") }, "CSV");
  const pqBtn = h("button.btn", { type: "button", testid: "export-parquet", onclick: () => doExport("parquet") }, "Parquet");
  const prevBtn = h("button.btn.small", { type: "button", testid: "results-prev", "aria-label": "Previous page", disabled: true, onclick: () => runQuery(Math.max(0, last.offset - PAGE), true) }, "‹ Prev");
  const nextBtn = h("button.btn.small", { type: "button", testid: "results-next", "aria-label": "Next page", disabled: true, onclick: () => runQuery(last.offset + PAGE, true) }, "Next ›");
  const count = h("span.count", { testid: "results-count", "aria-live": "polite" });
  const timing = h("span.muted.timing");
  const gridHost = h("div.grid-host", { testid: "results", "aria-label": "Query results" });
  const resultsEmpty = h("div.empty", "Run a query to see its rows here. ", h("kbd", "Ctrl"), "+", h("kbd", "Enter"), " runs it.");
  let grid = null;
  let last = { sql: "", ref: "", namespace: "", offset: 0, more: false };
  let inflight = null;

  async function runQuery(offset, paging = false) {
    const sql = paging ? last.sql : editor.state.doc.toString().trim();
    if (!sql) return;
    const req = paging
      ? { sql, ref: last.ref, namespace: last.namespace || undefined, offset, limit: PAGE }
      : { sql, ref: ref.value, namespace: state.namespace || undefined, offset: 0, limit: PAGE };
    inflight?.abort();
    const ctl = new AbortController();
    inflight = ctl;
    app.clearError();
    runBtn.disabled = true;
    runBtn.textContent = "Running…";
    clear(count, "running…");
    clear(timing);
    const t0 = performance.now();
    try {
      const page = await api.query(req, ctl.signal);
      if (ctl.signal.aborted) return;
      const wall = (performance.now() - t0) / 1000;
      last = { sql, ref: req.ref, namespace: req.namespace || "", offset: page.offset ?? offset, more: !!page.more };
      grid?.destroy();
      grid = null;
      resultsEmpty.remove();
      gridHost.replaceChildren();
      grid = resultGrid(gridHost, page.columns || [], page.rows || []);
      const n = (page.rows || []).length;
      const from = n ? last.offset + 1 : 0;
      clear(count, n ? `rows ${fmtInt(from)}–${fmtInt(last.offset + n)}` : "0 rows", last.more ? " · more" : last.offset ? " · end" : "");
      count.dataset.rows = String(n);
      count.dataset.more = String(last.more);
      clear(timing, `${fmtSeconds(page.seconds ?? wall)} on ${req.ref}`);
      prevBtn.disabled = last.offset === 0;
      nextBtn.disabled = !last.more;
      if (!paging) remember({ sql, ref: req.ref, namespace: req.namespace || "", ok: true, seconds: page.seconds });
    } catch (e) {
      if (e.name === "AbortError") return;
      clear(count, "error");
      if (!paging) remember({ sql, ref: req.ref, namespace: req.namespace || "", ok: false, error: e.message });
      if (e.status !== 401) app.showError(e);
    } finally {
      if (inflight === ctl) {
        inflight = null;
        runBtn.disabled = false;
        runBtn.textContent = "▶ Run";
      }
    }
  }

  async function doExport(format) {
    const sql = editor.state.doc.toString().trim();
    if (!sql) return;
    const btn = format === "csv" ? csvBtn : pqBtn;
    btn.disabled = true;
    app.clearError();
    await app.guard(() => exportResult({ sql, ref: ref.value, namespace: state.namespace, format }));
    btn.disabled = false;
  }

  // -- history --------------------------------------------------------------------------
  const historyList = h("ol.history", { "aria-label": "Query history" });
  function remember(entry) {
    const entries = loadHistory(user).filter((e) => !(e.sql === entry.sql && e.ref === entry.ref && e.namespace === entry.namespace));
    entries.unshift({ ...entry, at: Date.now() });
    saveHistory(user, entries);
    renderHistory();
  }
  function renderHistory() {
    const entries = loadHistory(user);
    if (!entries.length) {
      clear(historyList, h("li.muted", "Queries you run are kept here, in this browser."));
      return;
    }
    clear(
      historyList,
      entries.slice(0, 50).map((e) =>
        h(
          "li",
          h(
            "button.history-item",
            {
              type: "button",
              title: e.sql,
              "aria-label": `Load query: ${e.sql.slice(0, 80)}`,
              onclick: () => {
                editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: e.sql } });
                if (e.ref && e.ref !== ref.value) {
                  ref.set(e.ref);
                  state.ref = e.ref;
                }
                state.namespace = e.namespace || "";
                ns.el.value = state.namespace;
                ns.load(state.ref);
                editor.focus();
              },
            },
            h("span.history-sql", e.sql.replace(/\s+/g, " ").slice(0, 140)),
            h("span.history-meta", h("span", { class: e.ok ? "ok" : "bad" }, e.ok ? "✓" : "✗"), ` ${e.ref}${e.namespace ? ` · ${e.namespace}` : ""} · ${fmtAgo(e.at)}`),
          ),
        ),
      ),
    );
  }
  const clearHistory = h(
    "button.btn.small.ghost",
    { type: "button", "aria-label": "Clear query history", onclick: () => { saveHistory(user, []); renderHistory(); } },
    "Clear",
  );

  // -- tables of the namespace ----------------------------------------------------------
  const tablesList = h("ul.tables-list", { "aria-label": "Tables" });
  async function renderTables() {
    const r = state.ref;
    try {
      const keys = await schemaFor(r).tables();
      if (r !== state.ref) return;
      const shown = state.namespace ? keys.filter((k) => k.startsWith(`${state.namespace}.`)) : keys;
      clear(
        tablesList,
        shown.length
          ? shown.slice(0, 200).map((k) =>
              h(
                "li",
                h("button.linkish", {
                  type: "button",
                  title: `Insert ${k}`,
                  "aria-label": `Insert table name ${k}`,
                  onclick: () => {
                    const name = state.namespace && k.startsWith(`${state.namespace}.`) ? k.slice(state.namespace.length + 1) : k;
                    const { from, to } = editor.state.selection.main;
                    editor.dispatch({ changes: { from, to, insert: name }, selection: { anchor: from + name.length } });
                    editor.focus();
                  },
                }, k),
                " ",
                h("a.muted.small", { href: `#/catalog/table/${encodeURIComponent(k)}?ref=${encodeURIComponent(r)}`, "aria-label": `Open table ${k}` }, "↗"),
              ),
            )
          : h("li.muted", "No tables"),
      );
    } catch (e) {
      clear(tablesList, h("li.muted", "—"));
    }
  }

  // -- layout ---------------------------------------------------------------------------
  view.classList.add("sql-page");
  view.append(
    h("h1.visually-hidden", "SQL"),
    h(
      "div.toolbar",
      h("label.inline", h("span", "Ref"), ref.el),
      h("label.inline", h("span", "Namespace"), ns.el),
      h("div.spacer"),
      h("span.muted.small.hint", h("kbd", "Ctrl"), "/", h("kbd", "⌘"), "+", h("kbd", "Enter")),
      runBtn,
    ),
    h(
      "div.sql-layout",
      h(
        "div.sql-main",
        editorHost,
        h(
          "div.results-bar",
          h("h2", "Results"),
          count,
          timing,
          h("div.spacer"),
          prevBtn,
          nextBtn,
          h("span.sep"),
          h("span.muted.small", "Export"),
          csvBtn,
          pqBtn,
        ),
        h("div.results", gridHost, resultsEmpty),
      ),
      h(
        "aside.sql-side",
        h("section", h("h2", "Tables"), tablesList),
        h("section", h("div.side-head", h("h2", "History"), clearHistory), historyList),
      ),
    ),
  );
  renderHistory();
  ref.ready.then(() => {
    state.ref = ref.value;
    ns.load(state.ref);
    refreshSchema();
  });
  editor.focus();
  app.onLeave(() => {
    inflight?.abort();
    clearTimeout(schemaTimer);
    grid?.destroy();
    editor.destroy();
  });
  if (params.get("run") === "1") runQuery(0);
}
