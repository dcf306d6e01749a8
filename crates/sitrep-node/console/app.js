// The console's entry: who is signed in decides the view (reporter: the
// report form; reader: the national picture; operator: operations).

import { api, setSession, whenSignedOut, marking, zoneName } from "./api.js";
import { showReport } from "./report.js";
import { showNational } from "./national.js";
import { showOperator } from "./operator.js";

const ROLE_NAMES = {
  reporter: "Rapportör · reporter",
  reader: "Läsare · reader",
  operator: "Operatör · operator",
};
const VIEWS = { reporter: "report-view", reader: "national-view", operator: "operator-view" };
let stop = null;
let expiresAt = 0;

function showSignIn(message) {
  if (stop) stop();
  stop = null;
  setSession(null);
  marking(null);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "sign-in";
  document.getElementById("sign-out").hidden = true;
  document.getElementById("role").textContent = "";
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").value = "";
  document.getElementById("token").focus();
}

function showRole(session) {
  setSession(session);
  expiresAt = Date.parse(session.expires) || 0;
  document.getElementById("node").textContent = session.node;
  document.getElementById("role").textContent = ROLE_NAMES[session.role] || session.role;
  document.getElementById("sign-out").hidden = false;
  const id = VIEWS[session.role];
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== id;
  const el = document.getElementById(id);
  const start = { reporter: showReport, reader: showNational, operator: showOperator }[session.role];
  stop = start(el, session);
}

async function signIn(ev) {
  ev.preventDefault();
  const token = document.getElementById("token").value;
  try {
    const session = await api("POST", "/v1/session", { token });
    document.getElementById("token").value = "";
    showRole(session);
  } catch (e) {
    document.getElementById("sign-in-error").textContent =
      e.status === 401 ? "Fel token. Wrong token." : e.message;
    document.getElementById("token").select();
  }
}

async function signOut() {
  try {
    await api("DELETE", "/v1/session");
  } finally {
    showSignIn("Utloggad. Signed out.");
  }
}

async function boot() {
  document.getElementById("zone").textContent = `Tider i ${zoneName()}`;
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  // The browser drops the cookie when it expires, so the node may only see
  // a request without one: the session's end time tells the two apart.
  whenSignedOut((why) => showSignIn(expiresAt && Date.now() >= expiresAt - 1000
    ? "Sessionen har gått ut. The session has expired; sign in again."
    : `Sessionen gäller inte längre: ${why}`));
  try {
    showRole(await api("GET", "/v1/session"));
  } catch (e) {
    showSignIn(e.status === 401 && /expired/.test(e.message) ? `Sessionen har gått ut. ${e.message}` : "");
  }
}

boot();
