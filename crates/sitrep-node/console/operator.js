// Operator: peers, outboxes per hop, certificate and roster expiry,
// refusals by reason, disk use, readiness, and rates over the last hour.

import { api, h, fill, when } from "./api.js";

const RATES = [
  ["submitted", "Inskickade (submitted)"],
  ["accepted", "Mottagna (accepted)"],
  ["forwarded", "Vidaresända (forwarded)"],
  ["delivered", "Levererade (delivered)"],
  ["refused", "Avvisade (refused)"],
];

function bytes(b) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(b || 0);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function age(s) {
  if (s === null || s === undefined) return "–";
  const v = Number(s);
  if (v < 60) return `${v.toFixed(0)} s`;
  if (v < 3600) return `${(v / 60).toFixed(0)} min`;
  return `${(v / 3600).toFixed(1)} h`;
}

function days(d) {
  const cls = d < 7 ? "bad" : d < 30 ? "warn" : "ok";
  return h("span", { class: `expiry expiry-${cls}` }, `${d.toFixed(0)} dagar`);
}

/** A rate chart: per-minute rate between samples, as an SVG bar strip. */
function chart(name, title, times, values, intervalS) {
  const w = 360, hgt = 60;
  const rates = [];
  for (let i = 1; i < values.length; i++) {
    const dt = (Date.parse(times[i]) - Date.parse(times[i - 1])) / 1000 || intervalS;
    rates.push(Math.max(0, values[i] - values[i - 1]) / dt);
  }
  const max = Math.max(...rates, 0);
  const slots = 360;
  const bw = w / slots;
  const bars = rates.slice(-slots).map((r, i, arr) => {
    const bh = max > 0 ? (r / max) * (hgt - 2) : 0;
    const x = (slots - arr.length + i) * bw;
    return h("svg:rect", { x: x.toFixed(2), y: (hgt - bh).toFixed(2), width: Math.max(bw, 0.8).toFixed(2), height: bh.toFixed(2), class: "chart-bar" });
  });
  const now = rates.length ? rates[rates.length - 1] : 0;
  return h("figure", { class: "chart", id: `chart-${name}` },
    h("svg:svg", { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", role: "img", "aria-label": `${title}: senaste timmen` },
      h("svg:title", {}, `${title}, högst ${max.toFixed(1)}/s`),
      h("svg:rect", { x: 0, y: 0, width: w, height: hgt, class: "chart-bg" }), bars),
    h("figcaption", {}, `${title}: ${now.toFixed(1)}/s nu, högst ${max.toFixed(1)}/s senaste timmen`));
}

export function showOperator(root) {
  let statusTimer = null;
  let historyTimer = null;
  const line = h("p", { id: "operator-line", class: "status-line", "aria-live": "polite" }, "Läser status …");
  const peers = h("tbody", { id: "peers-body" });
  const outboxes = h("tbody", { id: "outboxes-body" });
  const expiry = h("tbody", { id: "expiry-body" });
  const refusals = h("tbody", { id: "refusals-body" });
  const stores = h("tbody", { id: "stores-body" });
  const charts = h("div", { id: "charts", class: "charts" });
  const table = (id, caption, heads, body) => h("table", { id, class: "grid" }, h("caption", {}, caption),
    h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))), body);

  fill(root,
    h("h1", {}, "Drift ", h("span", { class: "en" }, "Operations")),
    line,
    h("div", { class: "ops" },
      h("section", { class: "panel wide" }, table("peers", "Grannoder (peers)", ["Nod", "Kanal", "Adress", "Ansluten", "Senast hörd", "RTT", "Senaste fel"], peers)),
      h("section", { class: "panel wide" }, table("outboxes", "Utköer per nästa hopp (outboxes)", ["Kanal", "Nästa hopp", "Djup", "Storlek", "Äldsta"], outboxes)),
      h("section", { class: "panel" }, table("expiry", "Certifikat och nodförteckning (expiry)", ["Vad", "Gäller till", "Kvar"], expiry)),
      h("section", { class: "panel" }, table("refusals", "Avvisningar per orsak (refusals)", ["Orsak", "Antal"], refusals)),
      h("section", { class: "panel" }, table("stores", "Lagring (disk use)", ["Kanal", "På disk", "Tillstånd"], stores)),
      h("section", { class: "panel wide" }, h("h2", {}, "Takt senaste timmen ", h("span", { class: "en" }, "Rates, last hour")), charts)));

  async function refresh() {
    let s;
    let ready = "";
    try {
      s = await api("GET", "/v1/status");
      ready = await fetch("/readyz", { cache: "no-store" }).then((r) => (r.ok ? "redo (ready)" : "INTE REDO (not ready)"), () => "?");
    } catch (e) {
      line.textContent = `Kan inte läsa status: ${e.message}`;
      statusTimer = setTimeout(refresh, 2000);
      return;
    }
    line.textContent = `${s.node} · ${ready} · läst ${when(s.time)}`;
    fill(peers, s.peers.map((p) => h("tr", { "data-peer": p.peer, "data-channel": p.channel, "data-connected": String(p.connected), class: p.connected ? "up" : "down" },
      h("th", { scope: "row" }, p.peer),
      h("td", {}, p.channel),
      h("td", {}, h("code", {}, p.address)),
      h("td", { class: `conn conn-${p.connected ? "up" : "down"}` }, p.connected ? "● Ansluten" : "○ Nere"),
      h("td", { class: "time" }, when(p.last_seen)),
      h("td", { class: "num" }, p.rtt_ms === null || p.rtt_ms === undefined ? "–" : `${p.rtt_ms.toFixed(1)} ms`),
      h("td", { class: "error-text" }, p.last_error || ""))));
    fill(outboxes, s.outboxes.length ? s.outboxes.map((o) => h("tr", { "data-hop": o.next_hop },
      h("td", {}, o.channel), h("th", { scope: "row" }, o.next_hop),
      h("td", { class: "num" }, o.depth), h("td", { class: "num" }, bytes(o.bytes)), h("td", { class: "num" }, age(o.oldest_age_s))))
      : h("tr", {}, h("td", { colspan: 5 }, "Inga köade meddelanden.")));
    fill(expiry,
      h("tr", {}, h("th", { scope: "row" }, `Nodförteckning (roster) ${s.roster.network} nr ${s.roster.serial}`), h("td", { class: "time" }, when(s.roster.not_after)), h("td", {}, days(s.roster.days_left))),
      s.certificates.map((c) => h("tr", {}, h("th", { scope: "row" }, `Certifikat, kanal ${c.channel}`), h("td", { class: "time" }, when(c.not_after)), h("td", {}, days(c.days_left)))));
    const reasons = Object.entries(s.refusals || {});
    fill(refusals, reasons.length ? reasons.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "num" }, v)))
      : h("tr", {}, h("td", { colspan: 2 }, "Inga avvisningar.")));
    fill(stores, s.stores.map((st) => h("tr", {}, h("th", { scope: "row" }, st.channel), h("td", { class: "num" }, bytes(st.disk_bytes)),
      h("td", { class: st.failed ? "error-text" : "" }, st.failed ? `STOPPAD: ${st.failed}` : "Tar emot"))));
    statusTimer = setTimeout(refresh, 2000);
  }

  async function history() {
    try {
      const hist = await api("GET", "/v1/status/history");
      fill(charts, RATES.map(([name, title]) => {
        const series = hist.series.find((x) => x.name === name);
        return chart(name, title, hist.times, series ? series.values : [], hist.interval_s);
      }));
    } catch (e) {
      fill(charts, h("p", {}, e.message));
    }
    historyTimer = setTimeout(history, 10000);
  }

  refresh();
  history();
  return () => { clearTimeout(statusTimer); clearTimeout(historyTimer); };
}
