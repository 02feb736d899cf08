// fastprod pages: plain JavaScript, no framework, no build step, nothing fetched but this service's own API.
// This script is every page's: the helpers the page scripts share (elements, formats, the API, the token form,
// bars), as window.fastprod. Each page that does more loads its own script after this one (model.js, rollout.js,
// monitoring.js, review.js); each reads and writes through the JSON API, exactly the requests a script would send
// (watch the browser's network panel).
"use strict";

(function () {
  const ROOT = document.body.dataset.root || "";
  const PAGE_DATA = readJson("page-data") || {};
  const TOKEN_KEY = "fastprod.token"; // sessionStorage only: gone when the tab closes

  // -- small helpers ---------------------------------------------------------------------------

  function readJson(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (err) { return null; }
  }

  // h("p", {class: "x"}, "text", child) -> element. Text is always set as text, never parsed as HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fill(target, ...children) {
    const el = typeof target === "string" ? document.getElementById(target) : target;
    if (el) el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
    return el;
  }

  function pick(obj, ...keys) {
    if (!obj || typeof obj !== "object") return undefined;
    for (const key of keys) if (obj[key] !== undefined && obj[key] !== null) return obj[key];
    return undefined;
  }

  function fmt(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "number") {
      if (!Number.isFinite(value)) return "—";
      if (Number.isInteger(value)) return value.toLocaleString("en");
      if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) return value.toExponential(3);
      return String(Number(value.toPrecision(4)));
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function pct(fraction) {
    return Number.isFinite(fraction) ? (fraction * 100).toFixed(fraction >= 0.1 || fraction === 0 ? 1 : 2) + "%" : "—";
  }

  function when(value) {
    if (value === null || value === undefined || value === "") return "—";
    const date = typeof value === "number" ? new Date(value > 1e12 ? value : value * 1000) : new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function notice(text, kind) {
    return h("p", {class: "notice" + (kind ? " " + kind : "")}, text);
  }

  // The page says plainly that an endpoint is not there yet, instead of failing.
  function unavailable(what, result) {
    const why = result.status ? `${result.method} ${result.path} answered ${result.status}` : result.message;
    return notice(`${what} is not available yet (${why}).`, "unavailable");
  }

  function isAbsent(result) {
    return result.status === 404 || result.status === 405 || result.status === 501;
  }

  function badge(text, kind) {
    return h("span", {class: "badge" + (kind ? " " + kind : "")}, text);
  }

  function showError(id, message) {
    const el = document.getElementById(id);
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  function stamp() {
    fill("updated", `Updated ${new Date().toLocaleTimeString("en-GB")}.`);
  }

  // Refresh while the tab is visible; never two refreshes at once (one asked for meanwhile runs right after).
  function every(seconds, refresh) {
    let running = null;
    let again = false;
    const run = () => {
      if (document.hidden) return Promise.resolve();
      if (running) { again = true; return running; }
      running = (async () => {
        try { do { again = false; await refresh(); } while (again); } finally { running = null; }
      })();
      return running;
    };
    run();
    setInterval(run, seconds * 1000);
    document.addEventListener("visibilitychange", run);
    return run;
  }

  // -- the API ---------------------------------------------------------------------------------

  const token = {
    get() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (err) { return ""; } },
    set(value) { try { sessionStorage.setItem(TOKEN_KEY, value); } catch (err) { /* storage refused */ } },
    clear() { try { sessionStorage.removeItem(TOKEN_KEY); } catch (err) { /* storage refused */ } },
  };

  // One request to the JSON API -> {ok, status, data, message, headers}. Never throws.
  async function api(method, path, options) {
    const opts = options || {};
    const headers = Object.assign({}, opts.headers || {});
    if (opts.auth && token.get()) headers["Authorization"] = "Bearer " + token.get();
    const result = {ok: false, status: 0, data: null, message: "", headers: new Headers(), method, path};
    let response;
    try {
      response = await fetch(ROOT + path, {method, headers, body: opts.body, credentials: "same-origin"});
    } catch (err) {
      result.message = `the service did not answer (${err.message})`;
      return result;
    }
    result.status = response.status;
    result.ok = response.ok;
    result.headers = response.headers;
    const text = await response.text();
    result.text = text;
    try { result.data = text ? JSON.parse(text) : null; } catch (err) { result.data = null; }
    if (!response.ok) {
      const error = result.data && result.data.error;
      result.message = (error && error.message) || `HTTP ${response.status}`;
      result.code = error && error.code;
    }
    return result;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) search.set(key, value);
    const text = search.toString();
    return text ? "?" + text : "";
  }

  function enc(name) { return encodeURIComponent(name); }

  // Token form (rollout and review pages): the token lives in sessionStorage only.
  function initTokenForm(onChange) {
    const form = document.getElementById("token-form");
    if (!form) return;
    const input = document.getElementById("token");
    const describe = () => fill("token-state", token.get() ? "A token is kept for this tab." : "No token kept.");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value) token.set(input.value);
      input.value = "";
      showError("token-error", "");
      describe();
      if (onChange) onChange();
    });
    document.getElementById("token-forget").addEventListener("click", () => {
      token.clear();
      input.value = "";
      describe();
      if (onChange) onChange();
    });
    describe();
  }

  // A token typed but not yet "used" still counts when a button needs one.
  function ensureToken() {
    const input = document.getElementById("token");
    if (input && input.value) { token.set(input.value); input.value = ""; fill("token-state", "A token is kept for this tab."); }
    if (token.get()) { showError("token-error", ""); return true; }
    showError("token-error", "Enter the token first.");
    if (input) input.focus();
    return false;
  }

  // -- probabilities as bars -------------------------------------------------------------------

  function bars(entries, options) {
    const opts = options || {};
    const max = opts.max || 1;
    return h("ul", {class: "bars", "aria-label": opts.label || "Probabilities"},
      entries.map(([name, value, extra]) => {
        const width = Math.max(0, Math.min(1, (Number(value) || 0) / max)) * 100;
        const fillEl = h("div", {class: "fill" + (extra && extra.kind ? " " + extra.kind : "")});
        fillEl.style.width = width.toFixed(1) + "%"; // CSSOM, which the page's CSP allows (no inline styles)
        const track = h("div", {class: "track", "aria-hidden": "true"}, fillEl);
        if (extra && Number.isFinite(extra.mark)) {
          const mark = h("div", {class: "mark", title: "threshold"});
          mark.style.left = (Math.min(1, extra.mark / max) * 100).toFixed(1) + "%";
          track.append(mark);
        }
        const shown = opts.format ? opts.format(value) : pct(Number(value));
        return h("li", {}, h("span", {class: "name"}, name), track,
          h("span", {class: "value"}, shown, extra && extra.note ? h("span", {class: "visually-hidden"}, " " + extra.note) : null));
      }));
  }

  function topProbabilities(probabilities, n) {
    return Object.entries(probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, n || 5);
  }

  function oodVerdict(ood) {
    if (!ood || typeof ood !== "object") return null;
    const reasons = Array.isArray(ood.reasons) && ood.reasons.length ? ": " + ood.reasons.join(", ") : "";
    const score = Number.isFinite(ood.score) ? ` (score ${fmt(ood.score)})` : "";
    return h("p", {class: "ood"}, "Out of domain: ",
      ood.flagged ? badge("flagged", "verdict-drift") : badge("in domain", "verdict-ok"), reasons + score);
  }

  // -- what the page scripts use -----------------------------------------------------------------

  window.fastprod = Object.freeze({
    ROOT, PAGE_DATA,
    h, fill, pick, fmt, pct, when, notice, unavailable, isAbsent, badge, showError, stamp, every,
    token, api, query, enc, initTokenForm, ensureToken,
    bars, topProbabilities, oodVerdict,
  });
})();
