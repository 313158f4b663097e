// The shell: sign-in, navigation between views (#/name), the live event stream.
import { api, ApiError, forgetImages, liveEvents, setStore, setToken, store, token } from "./api.js";
import { $, notice } from "./ui.js";
import * as dashboard from "./dashboard.js";
import * as shelf from "./shelf.js";
import * as templates from "./templates.js";
import * as products from "./products.js";

const VIEWS = { dashboard, shelf, templates, products };
const EDITORS = ["merchandiser", "admin"]; // templates and prices
const FLASHERS = ["tech", "admin"];        // the API's roles for LED commands

let session = null; // { name, role, canEdit, canFlash }
let live = null;
let current = null;

function showOnly(id) {
  for (const section of document.querySelectorAll("main > .view")) section.hidden = section.id !== id;
}

function setLive(on) {
  const el = $("live");
  el.textContent = on ? "live" : "offline";
  el.classList.toggle("on", on);
  el.title = on ? "receiving changes as they happen" : "not connected: reconnecting";
}

function signedOut(message) {
  if (live) live.stop();
  live = null;
  session = null;
  setToken(null);
  setStore(null);
  forgetImages();
  if (current) VIEWS[current].hide();
  current = null;
  for (const id of ["nav", "who", "signout", "live", "store-pick"]) $(id).hidden = true;
  $("signin-error").textContent = message || "";
  showOnly("view-signin");
  $("token").value = "";
  $("token").focus();
}

function route() {
  if (!session) return;
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor, not a view
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const view = VIEWS[name] ? name : "dashboard";
  if (!VIEWS[name]) { history.replaceState(null, "", "#/dashboard"); }
  if (current && current !== view) VIEWS[current].hide();
  const changed = current !== view;
  current = view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  showOnly(`view-${view}`);
  if (changed) {
    VIEWS[view].show(session, location.hash);
    $("main").focus({ preventScroll: true });
  } else if (VIEWS[view].navigate) {
    VIEWS[view].navigate(location.hash);
  }
}

function onEvent(name, data) {
  if (name === "ready") { if (current) VIEWS[current].refresh(); return; }
  if (current) VIEWS[current].onChange(name, data);
}

/** A chain's stores to choose from (only when there is a choice); a restricted token's first one. */
async function pickStore() {
  const { items, default: configured } = await api("GET", "/api/v1/stores");
  const ids = items.map((s) => s.id);
  if (!ids.includes(store() || "")) setStore(ids.includes(configured) ? null : (ids[0] || null));
  const select = $("store");
  select.replaceChildren(...items.map((s) => {
    const option = document.createElement("option");
    option.value = s.id;
    option.textContent = `${s.name} (${s.id})`;
    return option;
  }));
  select.value = store() || configured;
  $("store-pick").hidden = items.length < 2;
}

async function start() {
  try {
    const me = await api("GET", "/api/v1/me");
    session = { ...me, canEdit: EDITORS.includes(me.role), canFlash: FLASHERS.includes(me.role) };
  } catch (err) {
    signedOut(err instanceof ApiError && err.status === 401
      ? "That token is not valid (unknown, revoked or mistyped)." : `Cannot reach the server: ${err.message}`);
    return;
  }
  await pickStore();
  $("who").textContent = `${session.name} · ${session.role}${session.canEdit ? "" : " (read-only)"}`;
  for (const id of ["nav", "who", "signout", "live"]) $(id).hidden = false;
  notice(session.canEdit ? "" : `Signed in as ${session.role}: views are read-only.`);
  setLive(false);
  if (session.stores === null) { // the live stream tells every store's changes: not for a token of some stores
    live = liveEvents(onEvent, (on, err) => {
      setLive(on);
      if (err) signedOut("Your token is no longer valid; sign in again.");
    });
  } else {
    $("live").hidden = true; // views refresh on their own timers
  }
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    setToken(value);
    start();
  });
  $("signout").addEventListener("click", () => { notice(""); signedOut(""); });
  $("store").addEventListener("change", (event) => {
    setStore(event.target.value);
    forgetImages();
    if (current) VIEWS[current].show(session, location.hash);
  });
  window.addEventListener("hashchange", route);
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault(); // the hash names views: move focus instead of following the link
    $("main").focus();
  });
  if (token()) start(); else signedOut("");
});
