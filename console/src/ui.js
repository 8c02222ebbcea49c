// Small DOM and formatting helpers shared by the pages.

/**
 * h("div.cls#id", {attrs}, ...children): an element. Attributes starting with "on" are
 * listeners; `dataset`/`style` objects are merged; false/null children are skipped.
 */
export function h(tag, attrs, ...children) {
  const m = /^([a-z0-9-]+)?((?:[.#][\w-]+)*)$/i.exec(tag);
  const el = document.createElement((m && m[1]) || "div");
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === ".") el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "class") el.className = [el.className, v].filter(Boolean).join(" ");
    else if (k === "testid") el.dataset.testid = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(v < 10 ? 1 : 0) : v} ${units[i]}`;
}

export function fmtInt(n) {
  return n === null || n === undefined ? "" : Number(n).toLocaleString("en-US");
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "";
  if (s < 1) return s === 0 ? "0 s" : `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s - m * 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

/** A time: epoch seconds (number), epoch ms (big number) or an ISO string. */
export function toDate(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return new Date(t > 1e12 ? t : t * 1000);
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtTime(t) {
  const d = toDate(t);
  if (!d) return "";
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtAgo(t) {
  const d = toDate(t);
  if (!d) return "";
  const s = (Date.now() - d.getTime()) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return fmtTime(t);
}

export function short(hash, n = 10) {
  return hash ? String(hash).slice(0, n) : "";
}

/** A status badge (running, success, failed, cancelled, done, queued, ...). */
export function badge(state) {
  return h(`span.badge.s-${String(state || "unknown").replace(/[^\w-]/g, "")}`, state || "—");
}

export function badgeHtml(state) {
  const s = String(state || "unknown").replace(/[^\w-]/g, "");
  return `<span class="badge s-${s}">${escapeHtml(state || "—")}</span>`;
}

/** A button that copies `text` to the clipboard. */
export function copyButton(text, label = "Copy") {
  const b = h("button.btn.small", { type: "button", "aria-label": `${label} to clipboard` }, "Copy");
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(typeof text === "function" ? text() : text);
      b.textContent = "Copied";
    } catch {
      b.textContent = "Select and copy";
    }
    setTimeout(() => (b.textContent = "Copy"), 1500);
  });
  return b;
}

/** A labelled <select>. options: [{value, label}] or [{group, options}]. */
export function select({ label, testid, options, value, onchange, id }) {
  const s = h("select", { testid, "aria-label": label, id });
  fillSelect(s, options, value);
  if (onchange) s.addEventListener("change", () => onchange(s.value));
  return s;
}

export function fillSelect(s, options, value) {
  s.replaceChildren();
  for (const o of options) {
    if (o.group) {
      const g = h("optgroup", { label: o.group });
      for (const x of o.options) g.append(h("option", { value: x.value }, x.label ?? x.value));
      s.append(g);
    } else {
      s.append(h("option", { value: o.value }, o.label ?? o.value));
    }
  }
  if (value !== undefined) s.value = value;
}

export function section(title, ...children) {
  return h("section.panel", h("h2", title), ...children);
}
