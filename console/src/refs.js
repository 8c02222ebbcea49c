// The ref picker (branches, tags, or a commit typed or picked from the log), the
// namespace picker, and the schema map (tables and their columns) per ref.
import { api } from "./api.js";
import { h, fillSelect, short } from "./ui.js";

const COMMIT = "\u0000commit";
let refsCache = null;

export function loadRefs(force = false) {
  if (!refsCache || force) {
    refsCache = Promise.all([api.branches(), api.tags()]).catch((e) => {
      refsCache = null;
      throw e;
    });
  }
  return refsCache;
}

/**
 * A ref picker: a <select> of branches and tags and "commit…", which opens a field to
 * type a hash, with the log of the last ref picked as suggestions.
 * Returns {el, get value(), set(value), ready}.
 */
export function refPicker({ testid, label = "Ref", value = "main", onchange, app, id }) {
  const sel = h("select", { testid, "aria-label": label, id });
  const listId = `${testid || "ref"}-commits-${Math.random().toString(36).slice(2, 8)}`;
  const datalist = h("datalist", { id: listId });
  const commit = h("input.commit-input", {
    type: "text",
    list: listId,
    placeholder: "commit hash",
    "aria-label": `${label}: commit hash`,
    testid: testid ? `${testid}-commit` : undefined,
    spellcheck: "false",
    hidden: true,
  });
  let current = value;
  let lastRef = value && !/^[0-9a-f]{12,}$/i.test(value) ? value : "main";
  const el = h("span.ref-picker", sel, commit, datalist);
  const picker = {
    el,
    get value() {
      return current;
    },
    set(v) {
      current = v;
      render();
    },
    ready: null,
  };
  let branches = [];
  let tags = [];
  const render = () => {
    const names = new Set([...branches, ...tags].map((r) => r.name));
    const isCommit = current && !names.has(current);
    fillSelect(
      sel,
      [
        { group: "Branches", options: branches.map((r) => ({ value: r.name, label: r.name })) },
        { group: "Tags", options: tags.map((r) => ({ value: r.name, label: r.name })) },
        { value: COMMIT, label: "commit…" },
      ],
      isCommit ? COMMIT : current,
    );
    commit.hidden = !isCommit;
    if (isCommit) commit.value = current;
  };
  const fillLog = async () => {
    try {
      const log = await api.log(lastRef, 50);
      datalist.replaceChildren(...log.map((c) => h("option", { value: c.hash }, `${short(c.hash)} ${c.message} (${c.author})`)));
    } catch {
      // suggestions only
    }
  };
  sel.addEventListener("change", () => {
    if (sel.value === COMMIT) {
      commit.hidden = false;
      commit.value = "";
      commit.focus();
      fillLog();
      return;
    }
    commit.hidden = true;
    current = sel.value;
    lastRef = current;
    onchange?.(current);
  });
  commit.addEventListener("change", () => {
    const v = commit.value.trim();
    if (v) {
      current = v;
      onchange?.(current);
    }
  });
  picker.ready = loadRefs()
    .then(([b, t]) => {
      branches = b;
      tags = t;
      if (!current) current = b.find((r) => r.name === "main") ? "main" : b[0]?.name || "";
      render();
    })
    .catch((e) => app?.showError(e));
  render();
  return picker;
}

/** A namespace picker for a ref: "(none)" and the namespaces at that ref. */
export function namespacePicker({ testid, label = "Namespace", value = "", onchange, app }) {
  const sel = h("select", { testid, "aria-label": label });
  let current = value;
  sel.addEventListener("change", () => {
    current = sel.value;
    onchange?.(current);
  });
  return {
    el: sel,
    get value() {
      return current;
    },
    async load(ref) {
      try {
        const names = await schemaFor(ref).namespaces();
        if (current && !names.includes(current)) names.push(current);
        fillSelect(sel, [{ value: "", label: "(no namespace)" }, ...names.map((n) => ({ value: n }))], current);
      } catch (e) {
        app?.showError(e);
      }
    },
  };
}

// -- the schema map -----------------------------------------------------------------

const schemas = new Map();

/** What is known of a ref's tables, fetched lazily and kept for the session. */
export function schemaFor(ref) {
  const key = ref || "";
  if (!schemas.has(key)) schemas.set(key, new Schema(key));
  return schemas.get(key);
}

class Schema {
  constructor(ref) {
    this.ref = ref;
    this._namespaces = null;
    this._tables = null; // Promise<string[]> of every table key
    this.columns = new Map(); // key -> Promise<[{name,type}]>
    this.known = new Map(); // key -> [{name,type}] once fetched
  }
  namespaces() {
    if (!this._namespaces) this._namespaces = api.namespaces(this.ref).catch((e) => ((this._namespaces = null), Promise.reject(e)));
    return this._namespaces.then((n) => [...n]);
  }
  tables() {
    if (!this._tables) this._tables = api.tables(this.ref).catch((e) => ((this._tables = null), Promise.reject(e)));
    return this._tables;
  }
  tableColumns(key) {
    if (!this.columns.has(key)) {
      const p = api
        .table(key, this.ref)
        .then((t) => {
          const cols = t.schema || [];
          this.known.set(key, cols);
          return cols;
        })
        .catch(() => {
          this.columns.delete(key);
          return [];
        });
      this.columns.set(key, p);
    }
    return this.columns.get(key);
  }
}
