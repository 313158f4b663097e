// Dashboard: GET /api/v1/summary and /gateways, refreshed on every live change (throttled).
import { api } from "./api.js";
import { $, h, seconds, throttle, when } from "./ui.js";

// degraded: connected to the broker, but its radio is down (reconnecting)
const GATEWAY_BADGE = { online: "ok", degraded: "pending" };

let active = false;
let timer = null;

function put(id, value) {
  const el = $(id);
  const text = String(value);
  if (el.textContent !== text && el.textContent !== "–") {
    const card = el.parentElement;
    card.classList.remove("changed");
    void card.offsetWidth; // restart the highlight
    card.classList.add("changed");
  }
  el.textContent = text;
}

async function load() {
  if (!active) return;
  const [s, gw] = await Promise.all([api("GET", "/api/v1/summary"), api("GET", "/api/v1/gateways")]);
  if (!active) return;
  put("stat-ok", s.labels_up_to_date);
  put("stat-pending", s.labels.pending ?? 0);
  put("stat-failed", s.labels.failed ?? 0);
  put("stat-offline", s.labels.offline ?? 0);
  put("stat-battery", s.labels_low_battery);
  $("stat-battery-what").textContent = `low battery (< ${s.battery_below} mV)`;
  put("stat-unpaired", s.labels.unpaired ?? 0);
  put("stat-gw-online", s.gateways.online ?? 0);
  put("stat-gw-offline", (s.gateways.offline ?? 0) + (s.gateways.degraded ?? 0));
  put("stat-updates", s.updates_last_hour);
  put("stat-p50", seconds(s.time_to_shelf_s.p50));
  put("stat-p99", seconds(s.time_to_shelf_s.p99));
  put("stat-jobs", `${s.open_jobs.queued} / ${s.open_jobs.sent}`);
  const at = $("stat-at");
  at.textContent = when(s.at);
  at.dateTime = s.at;
  $("gateways").replaceChildren(...gw.items.map((g) => h("tr", {},
    h("td", {}, g.id), h("td", {}, h("span", { class: `badge ${GATEWAY_BADGE[g.status] ?? "offline"}`,
      title: g.status === "degraded" ? `radio down since ${when(g.info.radio_since)}` : "" }, g.status)),
    h("td", {}, g.labels), h("td", {}, when(g.last_seen)))));
  if (!gw.items.length) $("gateways").append(h("tr", {}, h("td", { colspan: 4 }, "No gateway has connected yet.")));
}

const refreshSoon = throttle(() => load().catch(() => {}), 500);

export function show() {
  active = true;
  load().catch(() => {});
  timer = setInterval(refreshSoon, 30000); // time-based numbers (last hour) move without events too
}

export function hide() { active = false; clearInterval(timer); }
export function refresh() { refreshSoon(); }
export function onChange() { refreshSoon(); }
