// Region staff: the situation report form (lägesrapport), field by field,
// validated by the node (the same checks as POST /v1/reports), then the
// report's delivery state per recipient until every receipt is in.

import { api, h, fill, when, CLASS_NAMES, LEVELS, STATUS, marking } from "./api.js";

const MODES = { ACTUAL: "Skarpt (ACTUAL)", EXERCISE: "Övning (EXERCISE)", TEST: "Test (TEST)" };
const PRECEDENCES = { ROUTINE: "Rutin (ROUTINE)", PRIORITY: "Prioriterad (PRIORITY)", IMMEDIATE: "Omedelbar (IMMEDIATE)", FLASH: "Blixt (FLASH)" };
const VERSIONS = { INITIAL: "Första (INITIAL)", UPDATE: "Uppdatering (UPDATE)", FINAL: "Slutlig (FINAL)" };
const ICU = [
  ["ICU_ADULT", "IVA vuxen (ICU adult)"],
  ["ICU_PEDIATRIC", "IVA barn (ICU pediatric)"],
  ["ICU_NEONATAL", "Neonatal-IVA (ICU neonatal)"],
];
const WARDS = [
  ["MEDICAL_SURGICAL", "Vårdplatser somatik (medical/surgical)"],
  ["INTERMEDIATE", "Intermediärvård (intermediate)"],
  ["PSYCHIATRIC", "Psykiatri (psychiatric)"],
  ["ISOLATION", "Isolering (isolation)"],
  ["BURN", "Brännskada (burn)"],
];
const BED_FIELDS = [
  ["available", "Lediga (available)"],
  ["occupied", "Belagda (occupied)"],
  ["baseline", "Bemannade normalt (baseline)"],
  ["surge_24h", "Utökning 24 h (surge)"],
  ["surge_72h", "Utökning 72 h (surge)"],
  ["with_ventilator", "Med ventilator (ventilator)"],
];
const HOUR = 3600 * 1000;

/** A labelled input with a place for its error. */
function field(id, label, input, hint) {
  input.id = id;
  const err = h("span", { class: "field-error", id: `${id}-error`, role: "alert" });
  input.setAttribute("aria-describedby", `${id}-error`);
  return h("div", { class: "field" }, h("label", { for: id }, label), hint ? h("span", { class: "hint" }, hint) : null, input, err);
}

function select(options, value, placeholder) {
  const el = h("select", {},
    placeholder ? h("option", { value: "" }, placeholder) : null,
    Object.entries(options).map(([v, t]) => h("option", { value: v }, t)));
  el.value = value ?? "";
  return el;
}

const num = (v) => h("input", { type: "number", min: "0", step: "1", inputmode: "numeric", value: v ?? 0 });
const text = (v, max) => h("input", { type: "text", maxlength: max || 256, value: v ?? "" });
const area = (v) => { const t = h("textarea", { rows: 4, maxlength: 20000 }); t.value = v ?? ""; return t; };

/** datetime-local value for ms since the epoch, in the viewer's zone. */
function localInput(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  const off = d.getTimezoneOffset() * 60000;
  return new Date(d.getTime() - off).toISOString().slice(0, 16);
}
const dt = (ms) => h("input", { type: "datetime-local", value: localInput(ms) });
const msOf = (input) => (input.value ? new Date(input.value).getTime() : 0);
const intOf = (input) => (input.value === "" ? 0 : Number(input.value));

export function showReport(root, session) {
  let options = null;
  let polling = null;
  // Dynamic lists: supplies, incidents, requests.
  const lists = {};
  // Path in the API's errors → input, filled as the body is built.
  let paths = new Map();
  // Facilities are not in the form; a copied report keeps its own.
  let facilities = [];

  const form = h("form", { id: "report-form", novalidate: true });
  const summary = h("div", { id: "form-errors", class: "errors", role: "alert", "aria-live": "assertive" });
  const delivery = h("section", { id: "delivery", class: "panel", "aria-live": "polite" });
  const status = h("p", { id: "report-status", class: "status-line" });

  const f = {
    class: h("select", {}),
    caveats: text("", 512),
    precedence: select(PRECEDENCES, "ROUTINE"),
    mode: select(MODES, "", "– välj läge –"),
    author: text(""),
    region_code: text("", 2),
    reporting_unit: text(""),
    report_number: num(1),
    version: select(VERSIONS, "INITIAL"),
    start: dt(Date.now() - 6 * HOUR),
    end: dt(Date.now()),
    next_due: dt(Date.now() + 6 * HOUR),
    level: select(LEVELS, "", "– välj beredskapsläge –"),
    staffing_status: select(STATUS, "ADEQUATE"),
    staffing_shortfall: num(0),
    transports_status: select(STATUS, "ADEQUATE"),
    transports_units: num(0),
    planned_status: select(STATUS, "ADEQUATE"),
    planned_postponed: num(0),
    assessment: area(""),
    action_plan: area(""),
    prepared_by: text(""),
    approved_by: text(""),
  };
  const recipients = h("fieldset", { id: "recipients", class: "checks" }, h("legend", {}, "Mottagare (recipients)"));
  const recipientsError = h("span", { class: "field-error", id: "recipients-error", role: "alert" });

  // Bed tables: one row per bed type, one input per figure.
  const beds = {};
  function bedTable(caption, types) {
    return h("table", { class: "grid beds" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Typ"), BED_FIELDS.map(([, t]) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, types.map(([type, name]) => {
        beds[type] = {};
        return h("tr", {}, h("th", { scope: "row" }, name), BED_FIELDS.map(([k, t]) => {
          const input = num(0);
          input.id = `bed-${type}-${k}`;
          input.setAttribute("aria-label", `${name}: ${t}`);
          input.setAttribute("aria-describedby", `${input.id}-error`);
          beds[type][k] = input;
          return h("td", {}, input, h("span", { class: "field-error", id: `${input.id}-error`, role: "alert" }));
        }));
      })));
  }

  // A list of rows the user adds and removes.
  function rowList(key, title, columns) {
    const body = h("tbody", {});
    const rows = [];
    const add = (values = {}) => {
      const inputs = {};
      const n = rows.length;
      const cells = columns.map(([k, t, make]) => {
        const input = make(values[k]);
        input.id = `${key}-${n}-${k}-${Math.random().toString(36).slice(2, 7)}`;
        input.setAttribute("aria-label", `${title} ${n + 1}: ${t}`);
        input.setAttribute("aria-describedby", `${input.id}-error`);
        inputs[k] = input;
        return h("td", {}, input, h("span", { class: "field-error", id: `${input.id}-error`, role: "alert" }));
      });
      const row = { inputs };
      const tr = h("tr", {}, cells, h("td", {}, h("button", {
        type: "button", class: "small", "aria-label": `Ta bort rad ${n + 1} (${title})`,
        onclick: () => { rows.splice(rows.indexOf(row), 1); tr.remove(); },
      }, "Ta bort")));
      row.tr = tr;
      rows.push(row);
      body.append(tr);
    };
    lists[key] = { rows, add, clear: () => { rows.length = 0; body.replaceChildren(); } };
    return h("div", { class: "rowlist" },
      h("table", { class: "grid" }, h("caption", {}, title),
        h("thead", {}, h("tr", {}, columns.map(([, t]) => h("th", { scope: "col" }, t)), h("th", {}, ""))), body),
      h("button", { type: "button", class: "small", onclick: () => add() }, `+ Lägg till rad (${title})`));
  }

  const statusSel = (v) => select(STATUS, v || "ADEQUATE");

  form.append(
    h("fieldset", { class: "panel" }, h("legend", {}, "Sändning (sending)"),
      h("div", { class: "row" },
        field("report-class", "Klassificering (label)", f.class),
        field("report-caveats", "Hanteringsföreskrifter (caveats)", f.caveats, "kommaseparerade"),
        field("report-precedence", "Prioritet (precedence)", f.precedence),
        field("report-mode", "Läge (mode)", f.mode),
        field("report-author", "Avsändare (author)", f.author)),
      recipients, recipientsError),
    h("fieldset", { class: "panel" }, h("legend", {}, "Rapport (report)"),
      h("div", { class: "row" },
        field("report-region", "Länskod (region code)", f.region_code),
        field("report-unit", "Rapporterande enhet (reporting unit)", f.reporting_unit),
        field("report-number", "Rapport nr (report number)", f.report_number),
        field("report-version", "Version", f.version)),
      h("div", { class: "row" },
        field("report-start", "Period från (start)", f.start),
        field("report-end", "Period till (end)", f.end),
        field("report-next", "Nästa rapport senast (next report due)", f.next_due),
        field("report-level", "Beredskapsläge (preparedness level)", f.level))),
    h("fieldset", { class: "panel" }, h("legend", {}, "IVA-platser (intensive care beds)"), bedTable("IVA-platser per vårdtyp", ICU)),
    h("fieldset", { class: "panel" }, h("legend", {}, "Vårdplatser (beds)"), bedTable("Vårdplatser per vårdtyp", WARDS)),
    h("fieldset", { class: "panel" }, h("legend", {}, "Förnödenheter (supplies)"),
      rowList("supplies", "Förnödenhet", [
        ["code", "Kod (code)", (v) => text(v)],
        ["name", "Benämning (name)", (v) => text(v)],
        ["on_hand", "I lager (on hand)", num],
        ["days_of_supply", "Räcker dagar (days of supply)", num],
        ["status", "Status", statusSel],
      ])),
    h("fieldset", { class: "panel" }, h("legend", {}, "Personal, transporter, planerad vård"),
      h("div", { class: "row" },
        field("staffing-status", "Personal: status (staffing)", f.staffing_status),
        field("staffing-shortfall", "Personal: underskott, heltider (shortfall FTE)", f.staffing_shortfall),
        field("transports-status", "Transporter: status", f.transports_status),
        field("transports-units", "Transporter: enheter tillgängliga (units)", f.transports_units),
        field("planned-status", "Planerad vård: status (planned care)", f.planned_status),
        field("planned-postponed", "Planerad vård: uppskjutna ingrepp (postponed)", f.planned_postponed))),
    h("fieldset", { class: "panel" }, h("legend", {}, "Händelser (incidents)"),
      rowList("incidents", "Händelse", [
        ["kind", "Typ (kind)", (v) => text(v)],
        ["location", "Plats (location)", (v) => text(v)],
        ["severity", "Allvarlighet (severity)", statusSel],
        ["casualties", "Skadade (casualties)", num],
      ])),
    h("fieldset", { class: "panel" }, h("legend", {}, "Resursbehov (resource requests)"),
      rowList("requests", "Resursbehov", [
        ["resource", "Resurs (resource)", (v) => text(v)],
        ["quantity", "Antal (quantity)", num],
        ["needed_by", "Behövs senast (needed by)", (v) => dt(v)],
      ])),
    h("fieldset", { class: "panel" }, h("legend", {}, "Bedömning och åtgärder"),
      field("report-assessment", "Bedömning (assessment)", f.assessment),
      field("report-action-plan", "Åtgärdsplan (action plan)", f.action_plan),
      h("div", { class: "row" },
        field("report-prepared-by", "Upprättad av (prepared by)", f.prepared_by),
        field("report-approved-by", "Godkänd av (approved by)", f.approved_by))),
    summary,
    h("div", { class: "actions" },
      h("button", { type: "button", id: "copy-last", onclick: copyLast }, "Kopiera min senaste rapport (copy from my last report)"),
      h("button", { type: "submit", id: "submit-report", class: "primary" }, "Skicka rapport (submit)")),
    status);

  fill(root, h("h1", {}, "Lägesrapport ", h("span", { class: "en" }, "Situation report")), form, delivery);
  form.addEventListener("submit", submit);
  f.class.addEventListener("change", () => { offerRecipients(); marking({ class: f.class.value }); });

  function offerRecipients(keep) {
    const choice = options?.classes.find((c) => c.class === f.class.value);
    const was = new Set(keep || [...recipients.querySelectorAll("input:checked")].map((i) => i.value));
    recipients.replaceChildren(h("legend", {}, "Mottagare (recipients)"));
    if (!choice || choice.recipients.length === 0) {
      recipients.append(h("p", { class: "hint" }, "Ingen mottagare tillåts för denna klassificering."));
      return;
    }
    for (const id of choice.recipients) {
      const node = options.nodes.find((n) => n.id === id);
      const box = h("input", { type: "checkbox", value: id, id: `to-${id}`, checked: was.has(id) });
      recipients.append(h("label", { class: "check", for: `to-${id}` }, box, ` ${node ? node.name : id} `, h("code", {}, id)));
    }
  }

  async function load() {
    try {
      options = await api("GET", "/v1/reports/options");
    } catch (e) {
      status.textContent = `Kan inte läsa nodens policy: ${e.message}`;
      return;
    }
    fill(f.class, options.classes.map((c) => h("option", { value: c.class }, `${CLASS_NAMES[c.class] || c.class} – kanal ${c.channel}`)));
    f.class.value = options.classes[0]?.class || "";
    fill(f.precedence, options.precedences.map((p) => h("option", { value: p }, PRECEDENCES[p] || p)));
    f.precedence.value = "ROUTINE";
    fill(f.mode, h("option", { value: "" }, "– välj läge –"), options.modes.map((m) => h("option", { value: m }, MODES[m] || m)));
    marking({ class: f.class.value });
    f.region_code.value = options.region_code || "";
    if (options.region_code) f.region_code.readOnly = true;
    f.reporting_unit.value = options.name ? `${options.name}, RSSL` : "";
    offerRecipients();
  }

  function clearErrors() {
    for (const el of root.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    summary.replaceChildren();
  }

  function body() {
    paths = new Map();
    const at = (p, input) => { paths.set(p, input); return input; };
    const bedsOut = [];
    for (const [type] of [...ICU, ...WARDS]) {
      const row = beds[type];
      const values = Object.fromEntries(BED_FIELDS.map(([k]) => [k, intOf(row[k])]));
      if (Object.values(values).every((v) => v === 0)) continue;
      const i = bedsOut.length;
      for (const [k] of BED_FIELDS) at(`report.beds[${i}].${k}`, row[k]);
      at(`report.beds[${i}]`, row.available);
      at(`report.beds[${i}].type`, row.available);
      bedsOut.push({ type, ...values });
    }
    const listOut = (key, make) => lists[key].rows.map((r, i) => {
      for (const [k, input] of Object.entries(r.inputs)) at(`report.${key}[${i}].${k === "needed_by" ? "needed_by_unix_ms" : k}`, input);
      at(`report.${key}[${i}]`, Object.values(r.inputs)[0]);
      return make(r.inputs);
    });
    at("label", f.class); at("label.class", f.class); at("label.caveats", f.caveats);
    at("precedence", f.precedence); at("mode", f.mode); at("author", f.author);
    at("recipients", recipientsError);
    at("report.region_code", f.region_code); at("report.reporting_unit", f.reporting_unit);
    at("report.report_number", f.report_number); at("report.version", f.version);
    at("report.period", f.start); at("report.period.start_unix_ms", f.start); at("report.period.end_unix_ms", f.end);
    at("report.next_report_due_unix_ms", f.next_due); at("report.preparedness_level", f.level);
    at("report.staffing.status", f.staffing_status); at("report.staffing.shortfall", f.staffing_shortfall);
    at("report.transports.status", f.transports_status); at("report.transports.available_units", f.transports_units);
    at("report.planned_care.status", f.planned_status); at("report.planned_care.postponed_procedures", f.planned_postponed);
    at("report.assessment", f.assessment); at("report.action_plan", f.action_plan);
    at("report.prepared_by", f.prepared_by); at("report.approved_by", f.approved_by);
    const caveats = f.caveats.value.split(",").map((c) => c.trim()).filter(Boolean);
    const out = {
      label: { class: f.class.value, caveats },
      precedence: f.precedence.value,
      recipients: [...recipients.querySelectorAll("input:checked")].map((i) => i.value),
      author: f.author.value,
      report: {
        region_code: f.region_code.value,
        reporting_unit: f.reporting_unit.value,
        report_number: intOf(f.report_number),
        version: f.version.value,
        period: { start_unix_ms: String(msOf(f.start)), end_unix_ms: String(msOf(f.end)) },
        next_report_due_unix_ms: String(msOf(f.next_due)),
        preparedness_level: f.level.value || "PREPAREDNESS_LEVEL_UNSPECIFIED",
        beds: bedsOut,
        facilities,
        supplies: listOut("supplies", (x) => ({ code: x.code.value, name: x.name.value, on_hand: intOf(x.on_hand), days_of_supply: intOf(x.days_of_supply), status: x.status.value })),
        staffing: { status: f.staffing_status.value, shortfall: intOf(f.staffing_shortfall) },
        transports: { status: f.transports_status.value, available_units: intOf(f.transports_units) },
        planned_care: { status: f.planned_status.value, postponed_procedures: intOf(f.planned_postponed) },
        incidents: listOut("incidents", (x) => ({ kind: x.kind.value, location: x.location.value, severity: x.severity.value, casualties: intOf(x.casualties) })),
        requests: listOut("requests", (x) => ({ resource: x.resource.value, quantity: intOf(x.quantity), needed_by_unix_ms: String(msOf(x.needed_by)) })),
        assessment: f.assessment.value,
        action_plan: f.action_plan.value,
        prepared_by: f.prepared_by.value,
        approved_by: f.approved_by.value,
      },
    };
    if (f.mode.value) out.mode = f.mode.value;
    return out;
  }

  /** Shows each error at its field; the ones without a field in the summary. */
  function showErrors(message, errors) {
    const loose = [];
    let first = null;
    for (const e of errors) {
      let p = e.field;
      let input = paths.get(p);
      while (!input && p.includes(".")) {
        p = p.slice(0, p.lastIndexOf("."));
        input = paths.get(p);
      }
      if (!input) { loose.push(e); continue; }
      const slot = input.id.endsWith("-error") ? input : document.getElementById(`${input.id}-error`);
      if (input.tagName !== "SPAN") input.setAttribute("aria-invalid", "true");
      if (slot) slot.textContent = slot.textContent ? `${slot.textContent}; ${e.problem}` : e.problem;
      first = first || input;
    }
    fill(summary, h("p", {}, `Rapporten skickades inte (not sent): ${message}`),
      loose.length ? h("ul", {}, loose.map((e) => h("li", {}, `${e.field}: ${e.problem}`))) : null);
    (first && first.tagName !== "SPAN" ? first : summary).focus?.();
  }

  async function submit(ev) {
    ev.preventDefault();
    clearErrors();
    const sent = body();
    const button = document.getElementById("submit-report");
    button.disabled = true;
    status.textContent = "Skickar …";
    try {
      const { id } = await api("POST", "/v1/reports", sent);
      status.textContent = `Rapport ${id} lagrad och köad. Stored and queued.`;
      follow(id, sent.recipients);
    } catch (e) {
      status.textContent = "";
      showErrors(e.message, e.errors.length ? e.errors : []);
    } finally {
      button.disabled = false;
    }
  }

  /** Delivery state per recipient, live, until every state is final. */
  function follow(id, to) {
    if (polling) clearTimeout(polling);
    const rows = new Map(to.map((r) => [r, h("tr", { "data-recipient": r },
      h("th", { scope: "row" }, r), h("td", { class: "state state-queued" }, "QUEUED"), h("td", {}, "–"), h("td", {}, ""))]));
    const head = h("p", { id: "delivery-summary" }, "Väntar på kvitton …");
    fill(delivery, h("h2", {}, "Leverans ", h("span", { class: "en" }, "Delivery"), " ", h("code", { id: "delivery-id" }, id)), head,
      h("table", { class: "grid", id: "delivery-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Mottagare"), h("th", { scope: "col" }, "Läge (state)"), h("th", { scope: "col" }, "Tid"), h("th", { scope: "col" }, "Anmärkning (note)"))),
        h("tbody", {}, [...rows.values()])));
    const tick = async () => {
      let st;
      try {
        st = await api("GET", `/v1/reports/${id}`);
      } catch (e) {
        head.textContent = `Kan inte läsa leveransläget: ${e.message}`;
        polling = setTimeout(tick, 2000);
        return;
      }
      for (const r of st.recipients) {
        const tr = rows.get(r.recipient);
        if (!tr) continue;
        const [, state, at, why] = tr.children;
        state.textContent = r.state;
        state.className = `state state-${r.state.toLowerCase()}`;
        at.textContent = when(r.at);
        why.textContent = r.reason || (r.state === "FORWARDED" && r.hop ? `via ${r.hop}` : "");
      }
      const delivered = st.recipients.filter((r) => r.state === "DELIVERED").length;
      head.textContent = st.final
        ? `Klart: ${delivered} av ${st.recipients.length} mottagare har kvitterat (signed receipts in).`
        : `${delivered} av ${st.recipients.length} kvitterade …`;
      if (!st.final) polling = setTimeout(tick, 1000);
    };
    tick();
  }

  async function copyLast() {
    let last;
    try {
      last = await api("GET", "/v1/reports/last");
    } catch (e) {
      status.textContent = e.status === 404 ? "Ingen tidigare rapport från denna nod." : e.message;
      return;
    }
    const r = last.report || {};
    facilities = r.facilities || [];
    if (last.label) {
      f.class.value = last.label.class;
      f.caveats.value = (last.label.caveats || []).join(", ");
      marking({ class: f.class.value });
    }
    f.precedence.value = last.precedence || "ROUTINE";
    f.mode.value = last.mode || "";
    f.author.value = last.author || "";
    offerRecipients(last.recipients || []);
    f.reporting_unit.value = r.reporting_unit || f.reporting_unit.value;
    f.report_number.value = (Number(r.report_number) || 0) + 1;
    f.version.value = "UPDATE";
    const now = Date.now();
    const prevEnd = Number(r.period?.end_unix_ms) || now - 6 * HOUR;
    const interval = Math.max(HOUR, (Number(r.next_report_due_unix_ms) || prevEnd + 6 * HOUR) - prevEnd);
    f.start.value = localInput(Math.min(prevEnd, now));
    f.end.value = localInput(now);
    f.next_due.value = localInput(now + interval);
    f.level.value = r.preparedness_level || "";
    for (const [type, row] of Object.entries(beds)) {
      const b = (r.beds || []).find((x) => x.type === type) || {};
      for (const [k] of BED_FIELDS) row[k].value = b[k] ?? 0;
    }
    f.staffing_status.value = r.staffing?.status || "ADEQUATE";
    f.staffing_shortfall.value = r.staffing?.shortfall ?? 0;
    f.transports_status.value = r.transports?.status || "ADEQUATE";
    f.transports_units.value = r.transports?.available_units ?? 0;
    f.planned_status.value = r.planned_care?.status || "ADEQUATE";
    f.planned_postponed.value = r.planned_care?.postponed_procedures ?? 0;
    for (const key of ["supplies", "incidents", "requests"]) {
      lists[key].clear();
      for (const v of r[key] || []) lists[key].add(key === "requests" ? { ...v, needed_by: v.needed_by_unix_ms } : v);
    }
    f.assessment.value = r.assessment || "";
    f.action_plan.value = r.action_plan || "";
    f.prepared_by.value = r.prepared_by || "";
    f.approved_by.value = r.approved_by || "";
    status.textContent = `Kopierad från rapport nr ${r.report_number ?? "?"} (${when(last.submitted_ms)}). Granska och skicka.`;
  }

  load();
  return () => { if (polling) clearTimeout(polling); };
}
