// Template editor: source with line numbers, live previews per model, save (validated, audited).
import { api, ApiError, postForImage } from "./api.js";
import { $, debounce, h, setStatus, when } from "./ui.js";

const HEADER = /^\s*\{#-?\s*esl-template\b([\s\S]*?)-?#\}/;

let session = null;
let active = false;
let infos = [];          // GET /templates items
let name = null;         // template being edited
let baseVersion = 0;     // version the edit started from
let saved = "";          // its source
let errorLine = null;
let previewSeq = 0;
let previewAbort = null;
let previewUrls = [];
let wired = false;

/** The models the source declares (its esl-template header), else the stored template's. */
export function modelsOf(source, fallback) {
  const m = HEADER.exec(source);
  if (m) {
    for (const line of m[1].split("\n")) {
      const kv = /^\s*model\s*:\s*(.+?)\s*$/.exec(line);
      if (kv) {
        const models = kv[1].split(",").map((s) => s.trim()).filter(Boolean);
        if (models.length) return models;
      }
    }
  }
  return fallback && fallback.length ? fallback : [null];
}

function drawGutter() {
  const lines = $("tpl-source").value.split("\n").length;
  const gutter = $("tpl-gutter");
  const spans = [];
  for (let i = 1; i <= lines; i += 1) {
    spans.push(i === errorLine ? h("span", { class: "bad", title: "error on this line" }, String(i)) : String(i), "\n");
  }
  gutter.replaceChildren(...spans);
  gutter.scrollTop = $("tpl-source").scrollTop;
}

function showError(err) {
  const body = err instanceof ApiError ? err.body : {};
  errorLine = Number.isInteger(body.line) ? body.line : null;
  const where = errorLine ? `Line ${errorLine}: ` : "";
  const kind = body.kind ? ` (${body.kind} error)` : "";
  const detail = err.message.replace(/^\S*?:\d+:\s*/, ""); // the line is said once, first
  setStatus($("tpl-status"), `${where}${detail}${kind}`, "bad");
  $("tpl-status").dataset.line = errorLine ? String(errorLine) : "";
  $("tpl-source").setAttribute("aria-invalid", "true");
  $("tpl-goto").hidden = errorLine === null;
  if (errorLine !== null) $("tpl-goto").textContent = `Go to line ${errorLine}`;
  drawGutter();
}

function clearError(text) {
  errorLine = null;
  setStatus($("tpl-status"), text, "good");
  $("tpl-status").dataset.line = "";
  $("tpl-source").removeAttribute("aria-invalid");
  $("tpl-goto").hidden = true;
  drawGutter();
}

function info() { return infos.find((t) => t.name === name); }

function setInfos(items) {
  infos = items;
  $("tpl-name").replaceChildren(...infos.map((t) => h("option", { value: t.name },
    `${t.name}${t.origin === "database" ? ` (v${t.version})` : ""}`)));
  if (name !== null) $("tpl-name").value = name;
}

async function preview() {
  if (!session.canEdit || !active || name === null) return;
  const source = $("tpl-source").value;
  const sku = $("tpl-sku").value || null;
  const models = modelsOf(source, info() ? info().models : []);
  const seq = ++previewSeq;
  if (previewAbort) previewAbort.abort();
  previewAbort = new AbortController();
  setStatus($("tpl-status"), "Rendering…");
  try {
    const urls = await Promise.all(models.map((model) => postForImage("/api/v1/templates/preview",
      { source, sku, ...(model ? { model } : {}) }, previewAbort.signal)));
    if (seq !== previewSeq) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
    previewUrls.forEach((u) => URL.revokeObjectURL(u));
    previewUrls = urls;
    $("tpl-previews").replaceChildren(...urls.map((url, i) => h("figure", {},
      h("img", { src: url, alt: `preview on ${models[i] || "the default model"}`, dataset: { model: models[i] || "" } }),
      h("figcaption", {}, models[i] || "default model"))));
    $("tpl-previews").dataset.seq = String(seq);
    clearError(source === saved ? "Preview of the saved version." : "Preview of your unsaved changes.");
  } catch (err) {
    if (err.name === "AbortError" || seq !== previewSeq) return;
    showError(err);
  }
}

const previewSoon = debounce(() => preview(), 350);

function updateMeta() {
  const t = info();
  const dirty = $("tpl-source").value !== saved;
  $("tpl-meta").textContent = t ? `${t.description || t.name} — version ${baseVersion}${
    t.updated_by ? `, saved by ${t.updated_by} ${when(t.updated_at)}` : " (shipped)"}${
    t.models.length ? `; models: ${t.models.join(", ")}` : ""}${dirty ? " — unsaved changes" : ""}` : "";
  $("tpl-save").disabled = !session.canEdit || !dirty;
  $("tpl-revert").disabled = !dirty;
}

async function open(which) {
  const t = await api("GET", `/api/v1/templates/${encodeURIComponent(which)}`);
  name = t.name;
  baseVersion = t.version;
  saved = t.source;
  $("tpl-source").value = t.source;
  $("tpl-name").value = t.name;
  $("tpl-previews").replaceChildren();
  clearError("");
  updateMeta();
  if (session.canEdit) preview(); else setStatus($("tpl-status"), "");
}

async function loadList(keep, reopen = true) {
  const [list, products] = await Promise.all([api("GET", "/api/v1/templates"),
                                              api("GET", "/api/v1/products?limit=500")]);
  setInfos(list.items);
  const pick = $("tpl-sku");
  const sku = pick.value;
  pick.replaceChildren(h("option", { value: "" }, "sample product"),
    ...products.items.map((p) => h("option", { value: p.sku }, `${p.sku} — ${p.name || ""} ${p.price ?? ""}`)));
  pick.value = products.items.some((p) => p.sku === sku) ? sku : "";
  const first = keep || name || (infos.find((t) => t.name === "shelf-2.9") || infos[0] || {}).name;
  if (!reopen && name !== null) {
    $("tpl-name").value = name;
    updateMeta();
    preview();
  } else if (first) {
    await open(first);
  }
}

async function save() {
  const source = $("tpl-source").value;
  setStatus($("tpl-status"), "Saving…");
  try {
    const r = await api("PUT", `/api/v1/templates/${encodeURIComponent(name)}`,
      { json: { source, base_version: baseVersion } });
    saved = source;
    baseVersion = r.version;
    setInfos((await api("GET", "/api/v1/templates")).items);
    clearError(`Saved as version ${r.version}; labels using it are being redrawn.`);
    updateMeta();
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) {
      setStatus($("tpl-status"), `${err.message}. Someone saved a newer version: copy your changes, then reload.`, "bad");
    } else {
      showError(err);
      setStatus($("tpl-status"), `Not saved — ${$("tpl-status").textContent}`, "bad");
    }
  }
}

function gotoLine() {
  if (errorLine === null) return;
  const area = $("tpl-source");
  const lines = area.value.split("\n");
  let start = 0;
  for (let i = 0; i < errorLine - 1 && i < lines.length; i += 1) start += lines[i].length + 1;
  area.focus();
  area.setSelectionRange(start, start + (lines[errorLine - 1] || "").length);
  const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 19;
  area.scrollTop = Math.max(0, (errorLine - 3) * lineHeight);
}

function wire() {
  if (wired) return;
  wired = true;
  const area = $("tpl-source");
  area.addEventListener("input", () => { drawGutter(); updateMeta(); previewSoon(); });
  area.addEventListener("scroll", () => { $("tpl-gutter").scrollTop = area.scrollTop; });
  $("tpl-sku").addEventListener("change", () => preview());
  $("tpl-name").addEventListener("change", (e) => {
    if ($("tpl-source").value !== saved && !window.confirm("Discard your unsaved changes?")) {
      e.target.value = name;
      return;
    }
    open(e.target.value).catch((err) => showError(err));
  });
  $("tpl-save").addEventListener("click", save);
  $("tpl-revert").addEventListener("click", () => { area.value = saved; drawGutter(); updateMeta(); preview(); });
  $("tpl-goto").addEventListener("click", gotoLine);
  area.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); if (!$("tpl-save").disabled) save(); }
  });
}

export function show(s) {
  session = s;
  active = true;
  wire();
  $("tpl-readonly").hidden = s.canEdit;
  $("tpl-source").readOnly = !s.canEdit;
  $("tpl-save").hidden = !s.canEdit;
  $("tpl-revert").hidden = !s.canEdit;
  // coming back to the editor keeps unsaved changes
  loadList(name, name === null || $("tpl-source").value === saved).catch((err) => showError(err));
}

export function hide() { active = false; previewSoon.cancel(); if (previewAbort) previewAbort.abort(); }
export function refresh() {}
export function onChange() {}
