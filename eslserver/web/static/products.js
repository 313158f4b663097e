// Products: search, price history with the 30-day lowest price, change a price (POST /prices).
import { api, ApiError } from "./api.js";
import { $, debounce, h, money, setStatus, when } from "./ui.js";

let session = null;
let active = false;
let selected = null;
let current = null; // the selected product's detail
let wired = false;

async function search() {
  const q = $("prod-q").value.trim();
  const body = await api("GET", `/api/v1/products?limit=100${q ? `&q=${encodeURIComponent(q)}` : ""}`);
  if (!active) return;
  $("prod-count").textContent = `${body.items.length} of ${body.total} products${q ? ` matching “${q}”` : ""}`;
  $("prod-list").replaceChildren(...body.items.map((p) => h("tr", { class: p.sku === selected ? "selected" : "" },
    h("td", {}, h("button", { type: "button", class: "link", dataset: { sku: p.sku },
                              onclick: () => select(p.sku) }, p.sku)),
    h("td", {}, p.name || "–", ...(p.created_by_pos  // a POS created it; a person has not looked yet
      ? [" ", h("span", { class: "badge pending", title: "created by the POS (unknown SKU)" }, "new")] : [])),
    h("td", {}, money(p.price, p.currency)), h("td", {}, p.labels))));
}

const searchSoon = debounce(() => search().catch((err) => { $("prod-count").textContent = err.message; }), 250);

/** When an open-ended base price (history newest first) stopped: the next base price's start. */
function until(history, i) {
  if (history[i].reduction) return "–";
  for (let j = i - 1; j >= 0; j -= 1) if (!history[j].reduction) return when(history[j].start_at);
  return "–";
}

async function detail(sku) {
  const p = await api("GET", `/api/v1/products/${encodeURIComponent(sku)}`);
  if (selected !== sku) return;
  current = p;
  $("prod-new-price").placeholder = p.price ?? ""; // left empty: the price stays as it is
  $("prod-detail").hidden = false;
  $("prod-promo-end").hidden = !session.canEdit || !p.record.promo;
  $("prod-name").textContent = `${p.name || p.sku} (${p.sku})`;
  const facts = [
    ["Price", money(p.price, p.currency)], ["Selling now", money(p.selling_price, p.currency)],
    ["Lowest in 30 days", p.lowest_30d === null ? "– (no reduction in force)"
      : `${money(p.lowest_30d, p.currency)} (before the reduction)`],
    ["Labels", p.bound_labels.length ? p.bound_labels.map((l) => `${l.mac} (${l.state})`).join(", ") : "none"],
    ["Updated", when(p.updated_at)],
  ];
  $("prod-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  // newest first: an open-ended period lasts until the next one starts
  $("prod-history").replaceChildren(...p.history.map((r, i) => h("tr", {},
    h("td", {}, money(r.price, p.currency)), h("td", {}, when(r.start_at)),
    h("td", {}, r.end_at ? when(r.end_at) : until(p.history, i)),
    h("td", {}, r.reduction ? "yes" : "–"), h("td", {}, r.source))));
  $("prod-scheduled").replaceChildren(...(p.scheduled.length ? p.scheduled.map((s) => h("li", {},
    `${when(s.valid_from)}: ${Object.entries(s.fields).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(", ")}`))
    : [h("li", {}, "Nothing scheduled.")]));
  $("prod-price").hidden = !session.canEdit;
}

function select(sku) {
  selected = sku;
  setStatus($("prod-price-status"), "");
  for (const id of ["prod-new-price", "prod-promo-price", "prod-promo-to"]) $(id).value = "";
  for (const row of $("prod-list").children) {
    row.classList.toggle("selected", row.querySelector("button").dataset.sku === sku);
  }
  detail(sku).catch((err) => setStatus($("prod-price-status"), err.message, "bad"));
}

async function submitPrice(body, done) {
  const status = $("prod-price-status");
  setStatus(status, "Saving…");
  const fields = ["prod-new-price", "prod-promo-price", "prod-promo-to"];
  try {
    await api("POST", "/api/v1/prices", { json: body });
    for (const id of fields) $(id).removeAttribute("aria-invalid");
    setStatus(status, `${done}; its labels are being redrawn.`, "good");
    await Promise.all([detail(body.sku), search()]);
  } catch (err) {
    const item = err instanceof ApiError && err.body.errors && err.body.errors[0];
    const field = item ? item.field : err instanceof ApiError ? err.body.field : null;
    const id = { price: "prod-new-price", "promo.price": "prod-promo-price", "promo.to": "prod-promo-to" }[field];
    for (const f of fields) $(f).toggleAttribute("aria-invalid", f === id);
    setStatus(status, item ? item.detail : err.message, "bad");
    if (id) $(id).focus();
  }
}

async function changePrice(event) {
  event.preventDefault();
  const sku = selected;
  const price = $("prod-new-price").value.trim() || current?.price;
  const promo = $("prod-promo-price").value.trim();
  const until = $("prod-promo-to").value;
  if (!price) { setStatus($("prod-price-status"), "price: enter a price such as 4.99", "bad"); return; }
  const body = { sku, price };
  if (promo) body.promo = { price: promo, ...(until ? { to: until } : {}) };
  await submitPrice(body, promo ? `Promotion of ${sku} at ${promo} set` : `Price of ${sku} changed to ${price}`);
}

function wire() {
  if (wired) return;
  wired = true;
  $("prod-q").addEventListener("input", searchSoon);
  $("prod-search").addEventListener("submit", (e) => { e.preventDefault(); search().catch(() => {}); });
  $("prod-price").addEventListener("submit", changePrice);
  $("prod-promo-end").addEventListener("click", () => submitPrice(
    { sku: selected, price: current.price, promo: null }, `Promotion of ${selected} ended`));
}

export function navigate(hash) {
  const sku = new URLSearchParams(hash.split("?")[1] || "").get("sku");
  if (sku) { $("prod-q").value = sku; search().then(() => select(sku)).catch(() => {}); }
}

export function show(s, hash) {
  session = s;
  active = true;
  wire();
  search().catch((err) => { $("prod-count").textContent = err.message; });
  navigate(hash);
  if (selected && !hash.includes("sku=")) detail(selected).catch(() => {});
}

export function hide() { active = false; }
export function refresh() { if (selected) detail(selected).catch(() => {}); }
export function onChange(name) {
  if (name === "prices" && selected) detail(selected).catch(() => {});
}
