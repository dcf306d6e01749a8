// National authority: the national picture from a feed (one row per
// region, totals, a map coloured by a chosen figure), live over the feed's
// Server-Sent Events, under the roll-up's classification marking; a
// region's history; the inbox of reports addressed here, opened.

import { api, h, fill, when, short, zoneAbbr, marking, LEVELS, STATUS } from "./api.js";

const LEVEL_RANK = { NORMAL: 0, STAFF_ALERT: 2, REINFORCED: 3, DISASTER: 4 };
const STATUS_RANK = { ADEQUATE: 0, STRAINED: 2, CRITICAL: 4 };
const STATUS_LEGEND = ["Tillräcklig", null, "Ansträngd", null, "Kritisk"];

/** Figures the map can be coloured by: name, a row → 0..4 (or null: no data), and the legend. */
const FIGURES = {
  icu: ["IVA ledigt ‰ (ICU free)", (r) => {
    const p = Number(r.icu_free_permille || 0);
    return p >= 200 ? 0 : p >= 150 ? 1 : p >= 100 ? 2 : p >= 50 ? 3 : 4;
  }, ["≥ 200 ‰", "150–199 ‰", "100–149 ‰", "50–99 ‰", "< 50 ‰"]],
  level: ["Beredskapsläge (preparedness)", (r) => LEVEL_RANK[r.preparedness_level] ?? null,
    ["Normalläge", null, "Stabsläge", "Förstärkningsläge", "Katastrofläge"]],
  transports: ["Transporter (transports)", (r) => STATUS_RANK[r.transports_status] ?? null, STATUS_LEGEND],
  planned: ["Planerad vård (planned care)", (r) => STATUS_RANK[r.planned_care_status] ?? null, STATUS_LEGEND],
  staffing: ["Personal (staffing)", (r) => STATUS_RANK[r.staffing_status] ?? null, STATUS_LEGEND],
};

const n = (v) => Number(v || 0);
const permille = (v) => `${n(v)} ‰`;

function rowState(r) {
  if (r.never_reported) return ["never", "Ingen rapport (never reported)"];
  if (r.overdue) return ["overdue", "FÖRSENAD OVERDUE"];
  if (r.stale) return ["stale", "INAKTUELL STALE"];
  return ["ok", "Aktuell"];
}

export function showNational(root) {
  let source = null;
  let feedName = "";
  let latest = null;
  let figure = "icu";
  let svg = null;
  let inboxTimer = null;

  const picker = h("select", { id: "feed-select" });
  const figureSel = h("select", { id: "map-figure" }, Object.entries(FIGURES).map(([k, [t]]) => h("option", { value: k }, t)));
  const info = h("p", { id: "feed-info", class: "status-line", "aria-live": "polite" }, "Läser flöden …");
  const tbody = h("tbody", {});
  const tfoot = h("tfoot", {});
  const table = h("table", { id: "national-table", class: "grid national" },
    h("caption", {}, "Regionernas läge (one row per region)"),
    h("thead", {}, h("tr", {},
      ["Region", "Beredskapsläge", "IVA lediga / belagda", "IVA ledigt ‰", "Vårdplatser lediga / belagda", "Transporter (enheter)",
        "Planerad vård (uppskjutna)", `Senaste rapport / nästa (${zoneAbbr()})`, "Läge"]
        .map((t, i) => h("th", { scope: "col", class: `c${i}${i >= 2 && i <= 4 ? " num" : ""}` }, t)))),
    tbody, tfoot);
  const mapBox = h("figure", { id: "map", class: "map" }, h("figcaption", {}, "Karta"));
  const legend = h("ol", { id: "map-legend", class: "legend", "aria-label": "Teckenförklaring" });
  function paintLegend() {
    fill(legend,
      FIGURES[figure][2].map((t, i) => (t ? h("li", {}, h("span", { class: `swatch fill-${i}` }), t) : null)),
      h("li", {}, h("span", { class: "swatch fill-none" }), "Ingen uppgift"),
      h("li", {}, h("span", { class: "swatch fill-overdue" }), "Försenad"));
  }
  paintLegend();
  const history = h("section", { id: "region-history", class: "panel", "aria-live": "polite" });
  const inbox = h("section", { id: "inbox", class: "panel" });

  fill(root,
    h("h1", {}, "Nationell lägesbild ", h("span", { class: "en" }, "National picture")),
    h("div", { class: "row controls" },
      h("div", { class: "field" }, h("label", { for: "feed-select" }, "Flöde (feed)"), picker),
      h("div", { class: "field" }, h("label", { for: "map-figure" }, "Färga kartan efter (colour by)"), figureSel)),
    info,
    h("div", { class: "national-layout" }, h("div", { class: "table-wrap" }, table), h("div", {}, mapBox, legend)),
    history, inbox);

  picker.addEventListener("change", () => follow(picker.value));
  figureSel.addEventListener("change", () => { figure = figureSel.value; paintLegend(); paintMap(); });

  async function loadMap() {
    const resp = await fetch("/console/sweden.svg", { credentials: "same-origin" });
    const doc = new DOMParser().parseFromString(await resp.text(), "image/svg+xml");
    svg = document.importNode(doc.documentElement, true);
    svg.setAttribute("id", "map-svg");
    for (const p of svg.querySelectorAll(".region")) {
      p.setAttribute("tabindex", "0");
      p.setAttribute("role", "button");
      const open = () => showHistory(p.dataset.code);
      p.addEventListener("click", open);
      p.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    }
    mapBox.prepend(svg);
    paintMap();
  }

  function paintMap() {
    if (!svg || !latest) return;
    const [, rank] = FIGURES[figure];
    for (const p of svg.querySelectorAll(".region")) {
      const r = (latest.regions || []).find((x) => x.region_code === p.dataset.code);
      const v = r && !r.never_reported ? rank(r) : null;
      const cls = v === null || v === undefined ? "fill-none" : `fill-${v}`;
      p.setAttribute("class", `region ${cls}${r && r.overdue ? " overdue" : ""}`);
      p.setAttribute("data-fill", cls);
      const title = p.querySelector("title");
      if (title && r) title.textContent = `${r.region_name || p.dataset.code}: ${FIGURES[figure][0]} ${v === null || v === undefined ? "–" : FIGURES[figure][2][v] || v}${r.overdue ? " – FÖRSENAD" : ""}`;
    }
  }

  function render(rollup) {
    latest = rollup;
    marking(rollup.label || { class: "OPEN" });
    const rows = [...(rollup.regions || [])].sort((a, b) => a.region_code.localeCompare(b.region_code));
    fill(tbody, rows.map((r) => {
      const [state, stateText] = rowState(r);
      return h("tr", { id: `row-${r.region_code}`, class: `state-${state}`, "data-state": state },
        h("th", { scope: "row" }, h("button", { type: "button", class: "link", onclick: () => showHistory(r.region_code) },
          `${r.region_code} ${r.region_name || ""}`)),
        h("td", {}, LEVELS[r.preparedness_level] || "–"),
        h("td", { class: "num" }, r.never_reported ? "–" : `${n(r.icu_available)} / ${n(r.icu_occupied)}`),
        h("td", { class: "num", "data-figure": "icu" }, r.never_reported ? "–" : permille(r.icu_free_permille)),
        h("td", { class: "num" }, r.never_reported ? "–" : `${n(r.beds_available)} / ${n(r.beds_occupied)}`),
        h("td", {}, r.never_reported ? "–" : `${STATUS[r.transports_status] || "–"} (${n(r.transports_available_units)})`),
        h("td", {}, r.never_reported ? "–" : `${STATUS[r.planned_care_status] || "–"} (${n(r.postponed_procedures)})`),
        h("td", { class: "time", title: `${when(r.last_report_unix_ms)} / ${when(r.next_report_due_unix_ms)}` },
          short(r.last_report_unix_ms), h("br", {}), h("span", { class: "hint" }, `nästa ${short(r.next_report_due_unix_ms)}`)),
        h("td", { class: `flag flag-${state}` }, stateText));
    }));
    const t = rollup.totals || {};
    fill(tfoot, h("tr", { id: "totals" },
      h("th", { scope: "row" }, "Riket (TOTAL)"),
      h("td", {}, `${n(t.regions_reporting)}/${rows.length} rapporterar`),
      h("td", { class: "num" }, `${n(t.icu_available)} / ${n(t.icu_occupied)}`),
      h("td", { class: "num" }, permille(t.icu_free_permille)),
      h("td", { class: "num" }, `${rows.reduce((s, r) => s + n(r.beds_available), 0)} / ${rows.reduce((s, r) => s + n(r.beds_occupied), 0)}`),
      h("td", {}, `${rows.reduce((s, r) => s + n(r.transports_available_units), 0)} enheter`),
      h("td", {}, `${rows.reduce((s, r) => s + n(r.postponed_procedures), 0)} uppskjutna`),
      h("td", {}, ""),
      h("td", {}, `${n(t.regions_overdue)} försenade, ${n(t.regions_stale)} inaktuella`)));
    info.textContent = `Flöde ${rollup.feed}, sekvens ${rollup.sequence}, byggt ${when(rollup.built_unix_ms)} av ${rollup.aggregator}` +
      `${(rollup.withheld || []).length ? `; ${rollup.withheld.length} underlag över flödets klass undanhållna` : ""}.`;
    info.dataset.sequence = rollup.sequence;
    paintMap();
  }

  function follow(name) {
    if (source) source.close();
    feedName = name;
    source = new EventSource(`/v1/feeds/${encodeURIComponent(name)}/events`);
    source.addEventListener("rollup", (ev) => render(JSON.parse(ev.data)));
    source.addEventListener("error", () => {
      info.textContent = `${info.textContent.replace(/ \(.*återansluter.*\)$/, "")} (förbindelsen bröts, återansluter …)`;
      // EventSource reconnects by itself, with Last-Event-ID; a lost session
      // shows as a failed status check.
      api("GET", "/v1/session").catch(() => {});
    });
  }

  async function showHistory(code) {
    if (!feedName) return;
    fill(history, h("h2", { id: "history-title", tabindex: "-1" }, `Region ${code}: historik`), h("p", {}, "Läser …"));
    let hist;
    try {
      hist = await api("GET", `/v1/feeds/${encodeURIComponent(feedName)}/regions/${encodeURIComponent(code)}`);
    } catch (e) {
      fill(history, h("h2", {}, `Region ${code}`), h("p", {}, e.message));
      return;
    }
    const reported = hist.entries.filter((e) => !e.row.never_reported);
    const entries = [...reported].reverse();
    const points = reported.map((e) => n(e.row.icu_free_permille));
    fill(history,
      h("h2", { id: "history-title", tabindex: "-1" }, `${hist.region_name || code}: historik `, h("span", { class: "en" }, "history")),
      points.length > 1 ? spark(points, "IVA ledigt ‰ över tid") : null,
      entries.length ? null : h("p", {}, "Ingen rapport från regionen i de roll-ups som finns här."),
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Rapport nr", `Mottagen (${zoneAbbr()})`, "Beredskapsläge", "IVA lediga / belagda", "IVA ledigt", "Vårdplatser", "Transporter", "Läge"]
          .map((t, i) => h("th", { scope: "col", class: [0, 3, 4, 5].includes(i) ? "num" : undefined }, t)))),
        h("tbody", {}, entries.map(({ row: r }) => h("tr", {},
          h("td", { class: "num" }, r.report_number || "–"),
          h("td", {}, short(r.last_report_unix_ms)),
          h("td", {}, LEVELS[r.preparedness_level] || "–"),
          h("td", { class: "num" }, `${n(r.icu_available)} / ${n(r.icu_occupied)}`),
          h("td", { class: "num" }, permille(r.icu_free_permille)),
          h("td", { class: "num" }, `${n(r.beds_available)} / ${n(r.beds_occupied)}`),
          h("td", {}, STATUS[r.transports_status] || "–"),
          h("td", {}, rowState(r)[1]))))));
    document.getElementById("history-title").focus();
  }

  /** A small line chart of values (no library: SVG built here). */
  function spark(values, label) {
    const w = 240, hgt = 40;
    const max = Math.max(1, ...values);
    const pts = values.map((v, i) => `${values.length < 2 ? w : (i * w) / (values.length - 1)},${hgt - (v / max) * (hgt - 4) - 2}`).join(" ");
    return h("svg:svg", { viewBox: `0 0 ${w} ${hgt}`, class: "spark", role: "img", "aria-label": label },
      h("svg:title", {}, label), h("svg:polyline", { points: pts || `0,${hgt} ${w},${hgt}`, class: "spark-line" }));
  }

  // The inbox is read page by page from where the last read stopped: new
  // reports are added at the top, nothing is read twice.
  let inboxAfter = "";
  const inboxReports = [];
  async function loadInbox() {
    try {
      for (let i = 0; i < 20; i++) {
        const page = await api("GET", `/v1/inbox?limit=500${inboxAfter ? `&after=${inboxAfter}` : ""}`);
        inboxReports.unshift(...page.items.filter((x) => x.content_type === "SITUATION_REPORT").reverse());
        if (!page.items.length || page.next === inboxAfter) break;
        inboxAfter = page.next;
      }
    } catch (e) {
      fill(inbox, h("h2", {}, "Inkorg"), h("p", {}, e.message));
      return;
    }
    inboxReports.splice(200);
    const reports = inboxReports;
    fill(inbox, h("h2", {}, "Inkorg ", h("span", { class: "en" }, "Reports addressed here"), ` (${reports.length}${reports.length === 200 ? "+" : ""})`),
      reports.length ? null : h("p", {}, "Inga rapporter adresserade hit."),
      reports.slice(0, 50).map((x) => {
        const r = x.report || {};
        return h("details", { class: "inbox-item" },
          h("summary", {}, `${when(x.received)} · ${x.label.class} · ${x.origin} · ${r.reporting_unit || ""} nr ${r.report_number || "?"} · ${LEVELS[r.preparedness_level] || ""}`),
          h("dl", {},
            h("dt", {}, "Klassificering"), h("dd", {}, [x.label.class, ...(x.label.caveats || [])].join(" · ")),
            h("dt", {}, "Läge / prioritet"), h("dd", {}, `${x.mode} / ${x.precedence}`),
            h("dt", {}, "Avsändare"), h("dd", {}, `${x.author} (${x.origin})`),
            h("dt", {}, "Period"), h("dd", {}, `${when(r.period?.start_unix_ms)} – ${when(r.period?.end_unix_ms)}`),
            h("dt", {}, "IVA"), h("dd", {}, (r.beds || []).filter((b) => (b.type || "").startsWith("ICU")).map((b) => `${b.type}: ${n(b.available)} lediga, ${n(b.occupied)} belagda`).join("; ") || "–"),
            h("dt", {}, "Bedömning"), h("dd", {}, r.assessment || "–"),
            h("dt", {}, "Åtgärdsplan"), h("dd", {}, r.action_plan || "–"),
            h("dt", {}, "Upprättad / godkänd"), h("dd", {}, `${r.prepared_by || "–"} / ${r.approved_by || "–"}`)));
      }));
  }

  async function start() {
    loadMap();
    let feeds;
    try {
      feeds = (await api("GET", "/v1/feeds")).feeds;
    } catch (e) {
      info.textContent = e.message;
      return;
    }
    const usable = feeds.filter((f) => f.state === "active" || f.state === "publishing");
    if (!usable.length) {
      info.textContent = feeds.length
        ? `Inget flöde är aktivt här än (${feeds.map((f) => `${f.name}: ${f.state}${f.reason ? ` – ${f.reason}` : ""}`).join(", ")}).`
        : "Noden bygger och prenumererar inte på något flöde. Prenumerera med `sitrep feed subscribe NAMN`.";
    } else {
      fill(picker, usable.map((f) => h("option", { value: f.name }, `${f.name} (${f.channel}, ${f.mode}${f.max_class ? `, högst ${f.max_class}` : ""})`)));
      follow(usable[0].name);
    }
    loadInbox();
    inboxTimer = setInterval(loadInbox, 30000);
  }

  start();
  return () => { if (source) source.close(); clearInterval(inboxTimer); };
}
