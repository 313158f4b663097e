// Small DOM helpers shared by the views.

/** h("td", {class: "x", onclick: f}, "text", child…) → an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (id) => document.getElementById(id);

/** Call `fn` once `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Call `fn` at most once per `ms`, always once more after the last call (trailing). */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    const wait = last + ms - Date.now();
    if (timer) return;
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, Math.max(0, wait));
  };
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

export function money(value, currency) {
  if (value === null || value === undefined) return "–";
  return currency ? `${value} ${currency}` : String(value);
}

/** Show a transient message in the page's status line (read by screen readers). */
export function notice(text) { $("notice").textContent = text || ""; }

export function setStatus(el, text, kind) {
  el.textContent = text || "";
  el.classList.toggle("bad", kind === "bad");
  el.classList.toggle("good", kind === "good");
}
