// The console's plumbing: calls to this node's API with the session cookie
// and the CSRF token, a small DOM builder (text only: data never becomes
// markup), and times in the viewer's zone.

let csrf = "";
let onSignedOut = () => {};

/** Keeps the CSRF token of the session in force. */
export function setSession(view) {
  csrf = view ? view.csrf_token : "";
}

/** What to do when the node says the session is gone (401). */
export function whenSignedOut(f) {
  onSignedOut = f;
}

/** An answer that was not 2xx: status, message, and field errors for 400s. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.errors = (body && body.errors) || [];
  }
}

/** Calls the API; resolves to the JSON answer (or null), rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, { error: `the node does not answer (${e.message})` });
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = { error: text };
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, json);
    if (resp.status === 401 && path !== "/v1/session") onSignedOut(err.message);
    throw err;
  }
  return json;
}

/**
 * Builds an element: h("td", {class: "num"}, "12"). Strings become text
 * nodes, never markup. Attributes starting with "on" are listeners.
 */
export function h(tag, attrs, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "for") el.setAttribute("for", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
}

const zone = new Intl.DateTimeFormat("sv-SE", { timeZoneName: "short" })
  .formatToParts(new Date())
  .find((p) => p.type === "timeZoneName")?.value;
const stamp = new Intl.DateTimeFormat("sv-SE", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** A time (ms since the epoch, or RFC 3339) in the viewer's zone, zone shown. */
export function when(t) {
  if (t === undefined || t === null || t === "" || t === 0 || t === "0") return "–";
  const d = typeof t === "string" && !/^\d+$/.test(t) ? new Date(t) : new Date(Number(t));
  if (Number.isNaN(d.getTime())) return "–";
  return `${stamp.format(d)} ${zone || ""}`.trim();
}

const brief = new Intl.DateTimeFormat("sv-SE", { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });

/** A short time for tables ("24/11 09:03"), in the viewer's zone; the column names the zone. */
export function short(t) {
  const n = Number(t);
  if (!n) return "–";
  return brief.format(new Date(n));
}

/** The viewer's zone abbreviation, e.g. "CET". */
export function zoneAbbr() {
  return zone || "UTC";
}

/** The viewer's time zone name, for headings. */
export function zoneName() {
  return `${Intl.DateTimeFormat().resolvedOptions().timeZone} (${zone || "UTC"})`;
}

/** Swedish and English names of the classes, as markings read. */
export const CLASS_NAMES = {
  OPEN: "ÖPPEN · OPEN",
  SENSITIVE: "SKYDDSVÄRD · SENSITIVE",
  RESTRICTED: "BEGRÄNSAT HEMLIG · RESTRICTED",
  CONFIDENTIAL: "KONFIDENTIELL · CONFIDENTIAL",
  SECRET: "HEMLIG · SECRET",
  TOP_SECRET: "KVALIFICERAT HEMLIG · TOP SECRET",
};

/** Shows the classification marking at the top and bottom of the page. */
export function marking(label) {
  for (const id of ["marking-top", "marking-bottom"]) {
    const el = document.getElementById(id);
    if (!label) {
      el.hidden = true;
      continue;
    }
    const cls = label.class || "OPEN";
    const caveats = (label.caveats || []).join(" · ");
    el.textContent = caveats ? `${CLASS_NAMES[cls] || cls} — ${caveats}` : CLASS_NAMES[cls] || cls;
    el.className = `marking marking-${cls.toLowerCase()}`;
    el.hidden = false;
  }
}

/** Preparedness levels (beredskapsläge). */
export const LEVELS = {
  NORMAL: "Normalläge",
  STAFF_ALERT: "Stabsläge",
  REINFORCED: "Förstärkningsläge",
  DISASTER: "Katastrofläge",
};

/** Resource status. */
export const STATUS = { ADEQUATE: "Tillräcklig", STRAINED: "Ansträngd", CRITICAL: "Kritisk" };
