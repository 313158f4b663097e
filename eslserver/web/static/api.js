// The HTTP API as the UI uses it: bearer token, JSON errors, images by hash, the live stream.

const TOKEN_KEY = "eslserver.token";
const STORE_KEY = "eslserver.store";
// what belongs to the whole chain, never under /api/v1/stores/{store}/
const CHAIN = ["/api/v1/me", "/api/v1/stores", "/api/v1/templates", "/api/v1/audit", "/api/v1/events/stream",
               "/api/v1/images/"];

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error : `http_${status}`;
    this.body = body || {};
  }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
}

/** The store of the chain the views show (null: the server's configured store, on the plain paths). */
export function store() { return sessionStorage.getItem(STORE_KEY); }
export function setStore(value) {
  if (value) sessionStorage.setItem(STORE_KEY, value); else sessionStorage.removeItem(STORE_KEY);
}

/** `path` for the chosen store: /api/v1/stores/{store}/… for a store's routes. */
export function scoped(path) {
  const s = store();
  if (!s || !path.startsWith("/api/v1/") || CHAIN.some((prefix) => path.startsWith(prefix))) return path;
  return `/api/v1/stores/${encodeURIComponent(s)}/${path.slice("/api/v1/".length)}`;
}

function headers(extra) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function errorOf(response) {
  let body = null;
  if ((response.headers.get("Content-Type") || "").startsWith("application/json")) {
    try { body = await response.json(); } catch { body = null; }
  }
  return new ApiError(response.status, body);
}

/** JSON from `method path` (body `json`); throws ApiError with the server's code and detail. */
export async function api(method, path, { json, signal } = {}) {
  const init = { method, headers: headers(json === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (json !== undefined) init.body = JSON.stringify(json);
  const response = await fetch(scoped(path), init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** A PNG (as an object URL the caller revokes) from a POST returning image/png. */
export async function postForImage(path, json, signal) {
  const response = await fetch(scoped(path), {
    method: "POST", signal, body: JSON.stringify(json),
    headers: headers({ "Content-Type": "application/json" }),
  });
  if (!response.ok) throw await errorOf(response);
  return URL.createObjectURL(await response.blob());
}

const images = new Map(); // hash -> Promise<object URL>; images are immutable, kept for the session

/** The object URL of a stored image by content hash (fetched once with the token). */
export function imageUrl(hash) {
  if (!images.has(hash)) {
    const p = fetch(`/api/v1/images/${hash}.png`, { headers: headers({}) }).then(async (r) => {
      if (!r.ok) throw await errorOf(r);
      return URL.createObjectURL(await r.blob());
    });
    p.catch(() => images.delete(hash));
    images.set(hash, p);
  }
  return images.get(hash);
}

export function forgetImages() {
  for (const p of images.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
  images.clear();
}

/**
 * Read GET /api/v1/events/stream (server-sent events) with fetch, which can send the token
 * (EventSource cannot). Calls onEvent(name, data) per event and onState(bool) when the
 * stream opens or drops; reconnects after a pause until stop() is called.
 */
export function liveEvents(onEvent, onState) {
  let controller = null;
  let stopped = false;
  let retryMs = 2000;

  async function once() {
    controller = new AbortController();
    const response = await fetch("/api/v1/events/stream", { headers: headers({}), signal: controller.signal });
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = val;
          else if (field === "data") data.push(val);
          else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
        }
        if (!data.length) continue;
        let parsed;
        try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
        if (name === "ready") onState(true);
        onEvent(name, parsed);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) { stopped = true; onState(false, err); return; }
      }
      if (stopped) return;
      onState(false);
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();

  return { stop() { stopped = true; if (controller) controller.abort(); } };
}
