// Virtual shelf: each label drawn as what it should show next to what it reports it shows.
import { api, ApiError, imageUrl } from "./api.js";
import { $, h, money, setStatus, throttle, when } from "./ui.js";

const PAGE = 200;
let active = false;
let session = null;
let limit = PAGE;
let shown = new Map(); // mac -> { li, key }
let filtersReady = false;
let dialogMac = null;

function query() {
  const p = new URLSearchParams({ limit: String(limit) });
  const aisle = $("f-aisle").value.trim();
  if (aisle) p.set("aisle", aisle);
  if ($("f-gateway").value) p.set("gateway", $("f-gateway").value);
  if ($("f-state").value) p.set("state", $("f-state").value);
  if ($("f-stale").checked) p.set("stale", "true");
  return p.toString();
}

export function mismatch(label) {
  return label.expected_hash !== null && label.displayed_hash !== label.expected_hash;
}

function picture(hash, what) {
  if (!hash) return h("div", { class: "none" }, `no ${what} image`);
  const img = h("img", { alt: `${what} image`, dataset: { hash } });
  imageUrl(hash).then((url) => { if (img.dataset.hash === hash) img.src = url; },
                      () => { img.alt = `${what} image not stored on this server`; });
  return img;
}

function tileBody(label) {
  const bad = mismatch(label);
  const why = !bad ? null : label.displayed_hash ? "Shows an older image" : "Has not shown its image yet";
  return [
    h("span", { class: "head" }, h("span", { class: "mac" }, label.mac),
      h("span", { class: `badge ${label.state}` }, label.state)),
    h("span", {}, label.sku ? `SKU ${label.sku}` : "not bound",
      label.aisle ? ` · aisle ${label.aisle}` : "", label.gateway ? ` · ${label.gateway}` : ""),
    h("span", { class: "pair" },
      h("figure", {}, picture(label.expected_hash, "expected"), h("figcaption", {}, "should show")),
      h("figure", {}, picture(label.displayed_hash, "displayed"), h("figcaption", {}, "reports showing"))),
    why ? h("span", { class: "why" }, why) : null,
  ].filter(Boolean);
}

function render(items, total) {
  const list = $("shelf");
  const next = new Map();
  const nodes = items.map((label) => {
    const key = JSON.stringify([label.state, label.expected_hash, label.displayed_hash, label.sku, label.aisle,
                                label.gateway]);
    let entry = shown.get(label.mac);
    if (!entry) {
      const button = h("button", { type: "button", class: "tile", dataset: { mac: label.mac },
                                   onclick: () => openLabel(label.mac) });
      entry = { li: h("li", {}, button), key: null };
    }
    const button = entry.li.firstChild;
    if (entry.key !== key) {
      button.replaceChildren(...tileBody(label));
      button.classList.toggle("mismatch", mismatch(label));
      button.dataset.expected = label.expected_hash || "";
      button.dataset.displayed = label.displayed_hash || "";
      button.dataset.state = label.state;
      entry.key = key;
    }
    next.set(label.mac, entry);
    return entry.li;
  });
  list.replaceChildren(...nodes);
  shown = next;
  const stale = items.filter(mismatch).length;
  $("shelf-count").textContent = `${items.length} of ${total} labels shown; ${stale} not showing what they should.`;
  $("shelf-more").hidden = total <= items.length || limit >= 1000;
}

async function loadFilters() {
  const [gw, all] = await Promise.all([api("GET", "/api/v1/gateways"), api("GET", "/api/v1/labels?limit=1000")]);
  const select = $("f-gateway");
  const keep = select.value;
  select.replaceChildren(h("option", { value: "" }, "any"), ...gw.items.map((g) => h("option", { value: g.id }, g.id)));
  select.value = keep;
  const aisles = [...new Set(all.items.map((l) => l.aisle).filter(Boolean))].sort();
  $("aisles").replaceChildren(...aisles.map((a) => h("option", { value: a })));
  filtersReady = true;
}

async function load() {
  if (!active) return;
  const body = await api("GET", `/api/v1/labels?${query()}`);
  if (active) render(body.items, body.total);
}

const reload = throttle(() => load().catch((err) => { $("shelf-count").textContent = err.message; }), 700);

function historyItems(events, audit, jobs) {
  const rows = [
    ...events.map((e) => ({ at: e.at, text: `${e.kind}${e.gateway ? ` via ${e.gateway}` : ""}${
      e.detail && typeof e.detail === "object" && (e.detail.reason || e.detail.error)
        ? `: ${e.detail.reason || e.detail.error}` : ""}` })),
    ...audit.map((a) => ({ at: a.at, text: `${a.action} by ${a.actor}` })),
    ...jobs.map((j) => {
      const what = j.kind === "image" ? `image ${j.image_hash || ""}` : j.kind;
      const took = j.finished_at && j.origin_at
        ? ` in ${((new Date(j.finished_at) - new Date(j.origin_at)) / 1000).toFixed(1)} s` : "";
      return { at: j.finished_at || j.sent_at || j.created_at,
               text: `${what}: ${j.state}${j.state === "done" ? took : ""}${j.error ? ` (${j.error})` : ""}` };
    }),
  ];
  rows.sort((a, b) => (a.at < b.at ? 1 : -1));
  return rows.slice(0, 40).map((r) => h("li", {}, h("time", { datetime: r.at }, when(r.at)), " — ", r.text));
}

async function fillDialog(mac) {
  const [label, events, jobs, audit] = await Promise.all([
    api("GET", `/api/v1/labels/${mac}`),
    api("GET", `/api/v1/labels/${mac}/events?limit=20`),
    api("GET", `/api/v1/jobs?mac=${encodeURIComponent(mac)}&limit=20`),
    api("GET", `/api/v1/labels/${mac}/history?limit=20`).catch(() => ({ items: [] })),
  ]);
  if (dialogMac !== mac) return;
  $("ld-title").textContent = `Label ${mac}`;
  for (const [id, hash, what] of [["ld-expected", label.expected_hash, "expected"],
                                  ["ld-displayed", label.displayed_hash, "displayed"]]) {
    const img = $(id);
    img.dataset.hash = hash || "";
    img.alt = hash ? `${what} image` : `no ${what} image`;
    img.removeAttribute("src");
    if (hash) imageUrl(hash).then((url) => { if (img.dataset.hash === hash) img.src = url; }, () => {});
  }
  const bad = mismatch(label);
  setStatus($("ld-match"), label.expected_hash === null ? "Nothing rendered for this label yet."
    : bad ? "Not showing what it should." : "Shows what it should.", bad ? "bad" : "good");
  const p = label.product;
  const facts = [
    ["State", label.state], ["Product", p ? h("a", { href: `#/products?sku=${encodeURIComponent(p.sku)}` },
      `${p.name || p.sku} (${p.sku})`) : "not bound"],
    ["Price", p ? money(p.price, p.currency) : "–"], ["Model", label.model], ["Template", label.template || "default"],
    ["Aisle", label.aisle || "–"], ["Gateway", label.gateway || "–"],
    ["Battery", label.battery_mv === null ? "–" : `${label.battery_mv} mV`],
    ["Temperature", label.temperature_c === null ? "–" : `${label.temperature_c} °C`],
    ["Signal", label.rssi === null ? "–" : `${label.rssi} dBm`], ["Last seen", when(label.last_seen)],
    ["Open jobs", label.open_jobs.length ? label.open_jobs.map((j) => `${j.kind} (${j.state})`).join(", ") : "none"],
  ];
  $("ld-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const history = historyItems(events.items, audit.items, jobs.items);
  $("ld-history").replaceChildren(...(history.length ? history : [h("li", {}, "No events yet.")]));
  const flash = $("ld-flash");
  flash.disabled = !session.canFlash || !label.paired;
  const why = !session.canFlash ? "Flashing the LED needs the tech or admin role."
    : !label.paired ? "The label is not paired yet." : "";
  if (why) setStatus($("ld-flash-status"), why);
}

function openLabel(mac) {
  dialogMac = mac;
  setStatus($("ld-flash-status"), "");
  $("ld-title").textContent = `Label ${mac}`;
  const dialog = $("label-dialog");
  if (!dialog.open) dialog.showModal();
  fillDialog(mac).catch((err) => setStatus($("ld-match"), err.message, "bad"));
}

async function flash() {
  const mac = dialogMac;
  const status = $("ld-flash-status");
  setStatus(status, "Sending…");
  try {
    const r = await api("POST", `/api/v1/labels/${mac}/flash`, { json: { seconds: 10 } });
    setStatus(status, `LED flash queued (job ${r.job}, ${r.seconds} s).`, "good");
  } catch (err) {
    setStatus(status, err instanceof ApiError ? err.message : `Failed: ${err.message}`, "bad");
  }
}

let wired = false;
function wire() {
  if (wired) return;
  wired = true;
  for (const id of ["f-gateway", "f-state", "f-stale"]) $(id).addEventListener("change", () => { limit = PAGE; reload(); });
  $("f-aisle").addEventListener("input", () => { limit = PAGE; reload(); });
  $("shelf-filters").addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  $("shelf-more").addEventListener("click", () => { limit = Math.min(1000, limit + PAGE); reload(); });
  $("ld-flash").addEventListener("click", flash);
  $("label-dialog").addEventListener("close", () => {
    const tile = document.querySelector(`#shelf .tile[data-mac="${dialogMac}"]`);
    dialogMac = null;
    if (tile) tile.focus();
  });
}

export function show(s) {
  session = s;
  active = true;
  wire();
  if (!filtersReady) loadFilters().catch(() => {});
  load().catch((err) => { $("shelf-count").textContent = err.message; });
}

export function hide() { active = false; if ($("label-dialog").open) $("label-dialog").close(); }
export function refresh() { reload(); }

export function onChange(name, data) {
  if (name !== "labels") return;
  reload();
  if (dialogMac && data.macs && data.macs.includes(dialogMac)) fillDialog(dialogMac).catch(() => {});
}
