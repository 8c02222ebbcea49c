// The faas console's HTTP client: every call carries the signed-in user's token
// (Authorization: Bearer NAME:SECRET); an error answer becomes an ApiError with the
// one-line message the CLI would print; a 401 sends the user back to sign-in.

const TOKEN_KEY = "faas.console.token";

export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The user name in the token (the part before the colon). */
export function tokenUser(token = getToken()) {
  const i = token.indexOf(":");
  return i > 0 ? token.slice(0, i) : token;
}

let onUnauthorized = () => {};
/** What to do when the server answers 401 (set by the app: go to sign-in). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function errorOf(res) {
  let kind = "Error";
  let message = `${res.status} ${res.statusText || "error"}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      kind = body.error.kind || kind;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, kind, message);
}

/** A raw fetch of /api/v1/<path> with the token; throws ApiError on an error status. */
export async function request(path, { method = "GET", params, body, signal } = {}) {
  const headers = { Authorization: `Bearer ${getToken()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(`/api/v1/${path}${query(params)}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "Unreachable", `cannot reach the scheduler: ${e.message}`);
  }
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401) onUnauthorized(err.message);
    throw err;
  }
  return res;
}

// Iceberg snapshot ids (and other 64-bit integers) exceed what a JS number holds exactly:
// the snapshot id fields are kept as strings, and where the browser gives the reviver the
// source text, so is any integer past 2^53.
const BIG_ID = /"((?:old_|new_)?snapshot_id)":\s*(-?\d{16,})/g;
function reviver(key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context?.source && /^-?\d+$/.test(context.source)) {
    return context.source;
  }
  return value;
}

async function json(path, opts) {
  const res = await request(path, opts);
  const text = await res.text();
  return JSON.parse(text.replace(BIG_ID, '"$1":"$2"'), reviver);
}

const enc = encodeURIComponent;

export const api = {
  whoami: () => json("whoami"),
  branches: () => json("branches"),
  tags: () => json("tags"),
  log: (ref, n = 50) => json("log", { params: { ref, n } }),
  diff: (from, to) => json("diff", { params: { from, to } }),
  namespaces: (ref) => json("namespaces", { params: { ref } }),
  tables: (ref, namespace) => json("tables", { params: { ref, namespace } }),
  table: (key, ref) => json(`tables/${enc(key)}`, { params: { ref } }),
  query: (req, signal) => json("query", { method: "POST", body: req, signal }),
  jobs: (limit = 50) => json("jobs", { params: { limit } }),
  job: (id) => json(`jobs/${enc(id)}`),
  cancel: (id) => json(`jobs/${enc(id)}/cancel`, { method: "POST" }),
  cluster: () => json("cluster"),
};

/**
 * Downloads the whole result of a query as CSV or Parquet: a link cannot carry the
 * Authorization header, so the file is fetched and saved from a Blob.
 */
export async function exportResult({ sql, ref, namespace, format }) {
  const res = await request("export", { params: { sql, ref, namespace, format } });
  const blob = await res.blob();
  let name = `result.${format}`;
  const cd = res.headers.get("Content-Disposition") || "";
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  if (m) name = decodeURIComponent(m[1]);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}

/**
 * Follows a run's events (text/event-stream) with fetch and a stream reader, so the token
 * goes along. Calls onEvent(obj) for each `data:` line of a default event and
 * onEnd(obj) for `event: end`; resolves when the stream ends or signal aborts.
 */
export async function followEvents(runId, { onEvent, onEnd, signal }) {
  const res = await request(`jobs/${enc(runId)}/events`, { signal });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  const dispatch = (block) => {
    let event = "message";
    const data = [];
    for (const raw of block.split("\n")) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length && event === "message") return false;
    let obj = null;
    try {
      obj = JSON.parse(data.join("\n"));
    } catch {
      obj = { line: data.join("\n") };
    }
    if (event === "end") {
      onEnd?.(obj);
      return true;
    }
    onEvent?.(obj);
    return false;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let j;
      while ((j = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, j);
        buf = buf.slice(j + 2);
        if (dispatch(block)) {
          reader.cancel().catch(() => {});
          return;
        }
      }
    }
    if (buf.trim()) dispatch(buf);
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  }
}
