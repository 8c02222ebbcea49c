// The faas console: hash routes, the top bar, sign-in, and the page in view.
import "tabulator-tables/dist/css/tabulator_simple.css";
import "./style.css";
import { api, clearToken, getToken, setToken, setUnauthorizedHandler, tokenUser } from "./api.js";
import { h, clear } from "./ui.js";
import { sqlPage } from "./pages/sql.js";
import { catalogPage, tablePage } from "./pages/catalog.js";
import { runsPage, runPage } from "./pages/runs.js";
import { clusterPage } from "./pages/cluster.js";

const root = document.getElementById("app");

/** What the pages share: the user, the alert area, and cleanups run when the page is left. */
export const app = {
  user: null,
  role: null,
  cleanups: [],
  onLeave(fn) {
    this.cleanups.push(fn);
  },
  showError(e) {
    const msg = typeof e === "string" ? e : e?.message || String(e);
    errorBox.hidden = false;
    clear(errorText, msg);
  },
  clearError() {
    errorBox.hidden = true;
    clear(errorText);
  },
  /** Runs fn; shows its error (unless aborted) instead of throwing. */
  async guard(fn) {
    try {
      return await fn();
    } catch (e) {
      if (e?.name !== "AbortError" && e?.status !== 401) this.showError(e);
      return undefined;
    }
  },
  canWrite() {
    return this.role === "writer" || this.role === "admin";
  },
};

// The alert area: role="alert" and data-testid="error" on the message itself, so its text
// is exactly the one-line error.
const errorText = h("span.error-text", { role: "alert", testid: "error" });
const errorBox = h(
  "div.alert",
  { hidden: true },
  errorText,
  h("button.btn.small.ghost", { type: "button", "aria-label": "Dismiss the error", onclick: () => app.clearError() }, "×"),
);

const NAV = [
  ["sql", "SQL", "#/sql"],
  ["catalog", "Catalog", "#/catalog"],
  ["runs", "Runs", "#/runs"],
  ["cluster", "Cluster", "#/cluster"],
];
const navLinks = NAV.map(([id, label, href]) => h("a.nav-link", { href, testid: `nav-${id}` }, label));
const who = h("span.who");
const signOut = h("button.btn.small.ghost", { type: "button", onclick: () => doSignOut() }, "Sign out");
const header = h(
  "header.topbar",
  h("a.brand", { href: "#/sql", "aria-label": "faas console home" }, h("span.logo", "faas"), h("span.brand-sub", "console")),
  h("nav", { "aria-label": "Main" }, navLinks),
  h("div.spacer"),
  who,
  signOut,
);
const main = h("main#main", { tabindex: "-1" });
root.append(h("a.skip", { href: "#main", onclick: (e) => { e.preventDefault(); main.focus(); } }, "Skip to content"), header, errorBox, main);

// Why the user is on the sign-in page (a refused token), kept across a reload.
const MSG_KEY = "faas.console.signin-message";
const AFTER_KEY = "faas.console.after";
function rememberPage() {
  if (location.hash && !location.hash.startsWith("#/signin")) sessionStorage.setItem(AFTER_KEY, location.hash);
}

setUnauthorizedHandler((message) => {
  clearToken();
  app.user = app.role = null;
  sessionStorage.setItem(MSG_KEY, message || "Your token was refused.");
  if (!location.hash.startsWith("#/signin")) {
    rememberPage();
    location.hash = "#/signin";
  }
});

function doSignOut() {
  clearToken();
  app.user = app.role = null;
  location.hash = "#/signin";
}

/** Parses "#/a/b?x=1" into {parts: ["a","b"], params}. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(qs || "") };
}

async function ensureUser() {
  if (app.user) return true;
  if (!getToken()) return false;
  try {
    const me = await api.whoami();
    app.user = me.user;
    app.role = me.role;
    return true;
  } catch (e) {
    if (e.status !== 401) {
      // The scheduler is unreachable or failing: stay signed in, say why.
      app.user = tokenUser();
      app.role = "reader";
      app.showError(e);
      return true;
    }
    return false;
  }
}

let routeSeq = 0;

async function route() {
  const seq = ++routeSeq;
  for (const fn of app.cleanups.splice(0)) {
    try {
      fn();
    } catch {
      // a page's cleanup must not stop the next page
    }
  }
  const { parts, params } = parseHash();
  const page = parts[0] || "sql";
  if (page !== "signin" && !(await ensureUser())) {
    if (seq !== routeSeq) return;
    rememberPage();
    location.hash = "#/signin";
    return;
  }
  if (seq !== routeSeq) return;
  app.clearError();
  const signedIn = page !== "signin";
  header.classList.toggle("signed-out", !signedIn);
  clear(who, app.user ? [h("span.user", app.user), " ", h("span.role", { title: "role" }, app.role)] : "");
  for (const a of navLinks) {
    const on = a.dataset.testid === `nav-${page}`;
    a.classList.toggle("active", on);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = h("div.page");
  clear(main, view);
  const titles = { sql: "SQL", catalog: "Catalog", runs: "Runs", cluster: "Cluster", signin: "Sign in" };
  document.title = `${titles[page] || "faas"} · faas console`;
  try {
    if (page === "signin") signinPage(view);
    else if (page === "sql") sqlPage(view, app, params);
    else if (page === "catalog" && parts[1] === "table" && parts[2]) tablePage(view, app, parts[2], params);
    else if (page === "catalog") catalogPage(view, app, params);
    else if (page === "runs" && parts[1]) runPage(view, app, parts[1]);
    else if (page === "runs") runsPage(view, app);
    else if (page === "cluster") clusterPage(view, app);
    else view.append(h("h1", "Not found"), h("p", "No page at ", h("code", location.hash), ". ", h("a", { href: "#/sql" }, "Go to SQL")));
  } catch (e) {
    app.showError(e);
  }
}

function signinPage(view) {
  const input = h("input#signin-token", {
    type: "password",
    testid: "signin-token",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "NAME:SECRET",
    required: true,
  });
  const submit = h("button.btn.primary", { type: "submit", testid: "signin-submit" }, "Sign in");
  const form = h(
    "form.signin",
    { "aria-labelledby": "signin-title" },
    h("h1#signin-title", "Sign in to faas"),
    h("p.muted", "Paste your faas user token: the text of your token file, ", h("code", "NAME:SECRET"), " (", h("code", "faasd user add"), " prints it). It is kept in this tab only."),
    h("label", { for: "signin-token" }, "Token"),
    input,
    submit,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    app.clearError();
    const token = input.value.trim();
    if (!/^[^:\s]+:\S+$/.test(token)) {
      app.showError("A token is NAME:SECRET, the text of a faas token file.");
      return;
    }
    submit.disabled = true;
    setToken(token);
    app.user = app.role = null;
    sessionStorage.removeItem(MSG_KEY);
    try {
      const me = await api.whoami();
      app.user = me.user;
      app.role = me.role;
      const after = sessionStorage.getItem(AFTER_KEY);
      sessionStorage.removeItem(AFTER_KEY);
      location.hash = after && !after.startsWith("#/signin") ? after : "#/sql";
    } catch (err) {
      clearToken();
      sessionStorage.removeItem(MSG_KEY);
      app.showError(err);
    } finally {
      submit.disabled = false;
    }
  });
  view.append(form);
  const why = sessionStorage.getItem(MSG_KEY);
  if (why) {
    app.showError(why);
    sessionStorage.removeItem(MSG_KEY);
  }
  setTimeout(() => input.focus(), 0);
}

window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/sql");
route();
