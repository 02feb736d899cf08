// fastprod pages: plain JavaScript, no framework, no build step, nothing fetched but this service's own API.
// Each page's <body data-page="..."> picks one init function below; each reads and writes through the JSON API,
// exactly the requests a script would send (watch the browser's network panel).
"use strict";

(function () {
  const ROOT = document.body.dataset.root || "";
  const PAGE_DATA = readJson("page-data") || {};
  const TOKEN_KEY = "fastprod.token"; // sessionStorage only: gone when the tab closes
  // The review queue's listing of flagged predictions (the prediction log, from the monitoring work).
  const REVIEW_QUEUE_PATH = "/v1/predictions";

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

  // Prometheus text -> [{name, labels, value}] (enough of the format for our own /metrics).
  function parseMetrics(text) {
    const samples = [];
    for (const line of (text || "").split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      const labelRe = /(\w+)="((?:[^"\\]|\\.)*)"/g;
      let m;
      while ((m = labelRe.exec(match[2] || ""))) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
      samples.push({name: match[1], labels, value: Number(match[3])});
    }
    return samples;
  }

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

  // One prediction as people read it: the answer, bars, the OOD verdict.
  function predictionView(prediction, classes) {
    const parts = [];
    if (prediction.label !== undefined) parts.push(h("p", {class: "answer", "data-testid": "label"}, String(prediction.label)));
    else if (Array.isArray(prediction.labels)) {
      parts.push(h("p", {class: "answer", "data-testid": "label"}, prediction.labels.length ? prediction.labels.join(", ") : "no label"));
    } else if (prediction.value !== undefined) {
      parts.push(h("p", {class: "answer", "data-testid": "label"}, fmt(prediction.value)));
    } else if (prediction.values !== undefined && typeof prediction.values === "object") {
      parts.push(h("dl", {class: "facts"}, Object.entries(prediction.values).map(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v))])));
    }
    if (prediction.probabilities) {
      const shown = topProbabilities(prediction.probabilities, 5);
      parts.push(h("p", {class: "meta"}, `Top ${shown.length} of ${Object.keys(prediction.probabilities).length} probabilities`));
      parts.push(bars(shown));
    }
    const ood = oodVerdict(prediction.ood);
    if (ood) parts.push(ood);
    return parts;
  }

  // -- model card: try it ----------------------------------------------------------------------

  function shellQuote(text) { return "'" + String(text).replace(/'/g, "'\\''") + "'"; }

  function initModel() {
    const form = document.getElementById("try-form");
    if (!form) return;
    const name = PAGE_DATA.name;

    function target() {
      const version = document.getElementById("try-version").value;
      const path = version ? `/v1/models/${enc(name)}/versions/${enc(version)}/predict` : `/v1/models/${enc(name)}/predict`;
      const headers = {};
      const region = document.getElementById("try-region").value.trim();
      const key = document.getElementById("try-key").value.trim();
      if (region) headers["X-Region"] = region;
      if (key) headers["X-Request-Key"] = key;
      return {path, headers};
    }

    function showCurl(parts) {
      const url = location.origin + ROOT + parts.path;
      const lines = ["curl -X POST " + shellQuote(url)];
      for (const [k, v] of Object.entries(parts.headers)) lines.push("  -H " + shellQuote(`${k}: ${v}`));
      for (const arg of parts.args) lines.push("  " + arg);
      fill("curl-command", lines.join(" \\\n"));
      document.getElementById("try-curl").hidden = false;
    }

    async function send(body, contentType, curlArgs, errorId) {
      const parts = target();
      showCurl({path: parts.path, headers: parts.headers, args: curlArgs});
      // A FormData body gets its multipart Content-Type (with the boundary) from the browser.
      const headers = Object.assign({}, parts.headers, contentType ? {"Content-Type": contentType} : {});
      for (const el of document.querySelectorAll(".field-error")) showError(el.id, "");
      fill("try-result", h("p", {class: "status"}, "Predicting…"));
      const result = await api("POST", parts.path, {body, headers});
      if (!result.ok) {
        fill("try-result");
        placeError(result.message, errorId);
        return;
      }
      showResult(result);
    }

    // An API error naming a column ("rows[0].island: ...") goes next to that field; any other next to the control used.
    function placeError(message, fallbackId) {
      const match = /^rows\[\d+\]\.([^:]+):/.exec(message || "");
      if (match) {
        const field = Array.from(form.querySelectorAll("[name]")).find((el) => el.name === match[1]);
        if (field) { showError(field.id + "-error", message); field.focus(); return; }
      }
      showError(fallbackId, message);
    }

    function showResult(result) {
      const data = result.data || {};
      const predictions = Array.isArray(data.predictions) ? data.predictions : [];
      const version = result.headers.get("X-Model-Version") || data.version;
      const meta = h("p", {class: "meta"}, "Answered by ", h("strong", {"data-testid": "version"}, `version ${fmt(version)}`),
        " of ", data.model || name, data.request_id ? ` · request id ${data.request_id}` : "");
      if (predictions.length === 1) {
        fill("try-result", h("h3", {}, "Prediction"), predictionView(predictions[0], PAGE_DATA.classes), meta);
        return;
      }
      // Several rows (CSV): one table row each.
      const rows = predictions.map((p, i) => {
        const answer = p.label !== undefined ? p.label : Array.isArray(p.labels) ? p.labels.join(", ") : fmt(p.value !== undefined ? p.value : p.values);
        const top = p.probabilities ? topProbabilities(p.probabilities, 1)[0] : null;
        return h("tr", {}, h("td", {class: "num"}, i + 1), h("td", {}, answer), h("td", {class: "num"}, top ? pct(top[1]) : "—"),
          h("td", {}, p.ood ? (p.ood.flagged ? "flagged" + (p.ood.reasons && p.ood.reasons.length ? ": " + p.ood.reasons.join(", ") : "") : "in domain") : "—"));
      });
      fill("try-result", h("h3", {}, `${predictions.length} predictions`),
        h("div", {class: "table-scroll"}, h("table", {},
          h("thead", {}, h("tr", {}, h("th", {class: "num", scope: "col"}, "Row"), h("th", {scope: "col"}, "Prediction"),
            h("th", {class: "num", scope: "col"}, "Confidence"), h("th", {scope: "col"}, "Out of domain"))),
          h("tbody", {}, rows))), meta);
    }

    if (form.dataset.kind === "image") initImageForm(form, send);
    else initTabularForm(form, send);
  }

  function initImageForm(form, send) {
    const input = document.getElementById("try-file");
    const preview = document.getElementById("try-preview");
    const zone = document.getElementById("drop-zone");
    let previewUrl = null;

    function submit(file) {
      if (!file) { showError("try-file-error", "Choose an image first."); return; }
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(file);
      preview.src = previewUrl;
      preview.hidden = false;
      const body = new FormData();
      body.append("file", file, file.name || "image");
      send(body, null, ["-F " + shellQuote("file=@" + (file.name || "image"))], "try-file-error");
    }

    preview.addEventListener("error", () => { preview.hidden = true; }); // not an image the browser can show
    input.addEventListener("change", () => submit(input.files[0]));
    form.addEventListener("submit", (event) => { event.preventDefault(); submit(input.files[0]); });
    for (const type of ["dragenter", "dragover"]) zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) submit(file);
    });
  }

  function initTabularForm(form, send) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const row = {};
      for (const field of form.querySelectorAll("[data-kind]")) {
        showError(field.id + "-error", "");
        if (field.validity && field.validity.badInput) {
          showError(field.id + "-error", `${field.name}: not a number; leave it empty for a missing value`);
          field.focus();
          return;
        }
        const raw = field.value.trim();
        if (raw === "") { row[field.name] = null; continue; }
        const asNumber = Number(raw);
        row[field.name] = field.dataset.kind === "continuous" && Number.isFinite(asNumber) ? asNumber : raw;
      }
      const body = JSON.stringify({rows: [row]});
      send(body, "application/json", ["-H " + shellQuote("Content-Type: application/json"), "-d " + shellQuote(body)], "try-form-error");
    });
    const csv = document.getElementById("try-csv");
    const csvForm = document.getElementById("csv-form");
    const sendCsv = async () => {
      const file = csv.files[0];
      if (!file) { showError("try-csv-error", "Choose a CSV file first."); return; }
      send(file, "text/csv", ["-H " + shellQuote("Content-Type: text/csv"), "--data-binary " + shellQuote("@" + (file.name || "rows.csv"))], "try-csv-error");
    };
    csv.addEventListener("change", sendCsv);
    csvForm.addEventListener("submit", (event) => { event.preventDefault(); sendCsv(); });
  }

  function initCurlCopy() {
    const button = document.getElementById("curl-copy");
    if (!button) return;
    button.addEventListener("click", async () => {
      const text = document.getElementById("curl-command").textContent;
      try {
        await navigator.clipboard.writeText(text);
        fill("curl-copied", "Copied.");
      } catch (err) {
        // No clipboard permission: select the text so the usual copy keys work.
        const range = document.createRange();
        range.selectNodeContents(document.getElementById("curl-command"));
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        fill("curl-copied", "Selected: press Ctrl+C (⌘C) to copy.");
      }
    });
  }

  // -- rollout ---------------------------------------------------------------------------------
  // GET /v1/rollouts -> {enabled, detail, policy_error, models: {name: state}}; a state has stage, stable,
  // candidate, step {index, phase, started_at, next_at, of}, shares {region: 0..1}, problems, guardrails
  // {status, message, readings {stable, candidate, min_requests, window_s}, limits}, last_decisions, timeline.
  // Every field is optional here: the page shows what the API gives.

  function rolloutOf(doc, name) {
    if (!doc) return undefined;
    if (Array.isArray(doc)) return doc.find((r) => r && (r.model === name || r.name === name));
    for (const key of ["models", "rollouts"]) {
      const inner = doc[key];
      if (Array.isArray(inner)) return inner.find((r) => r && (r.model === name || r.name === name));
      if (inner && typeof inner === "object") return inner[name] || undefined;
    }
    return doc[name];
  }

  // A share as a fraction 0..1: the API and the metric give fractions, the policy file writes percents.
  function asFraction(value, percent) {
    const n = Number(value);
    if (!Number.isFinite(n)) return NaN;
    return percent || n > 1 ? n / 100 : n;
  }

  function byTimeNewestFirst(list) {
    const at = (e) => new Date(pick(e, "at", "time", "when", "created_at") || 0).getTime() || 0;
    return list.slice().sort((a, b) => at(b) - at(a));
  }

  function stepsOf(state) {
    const timeline = pick(state, "timeline");
    if (Array.isArray(timeline) && timeline.length) return timeline;
    const steps = pick(pick(state, "policy"), "steps") || pick(state, "steps", "plan") || [];
    return Array.isArray(steps) ? steps : [];
  }

  function stepOf(state) {
    const step = pick(state, "step", "current_step");
    if (typeof step === "number") return {index: step};
    return step && typeof step === "object" ? step : {};
  }

  function regionsText(regions, percent) {
    if (!regions || typeof regions !== "object") return "—";
    return Object.entries(regions).map(([region, share]) => `${region === "*" ? "every region" : region} ${pct(asFraction(share, percent))}`).join(", ");
  }

  const PHASES = {not_started: "the plan has not started", ended: "the plan has ended", no_plan: "no plan",
    last_step: "on the last step, until someone promotes", step: "walking the plan"};

  function renderState(state) {
    const stage = pick(state, "stage") || "off";
    const step = stepOf(state);
    const total = pick(step, "of") || stepsOf(state).length;
    const rows = [["Stage", badge(stage, "stage-" + stage)], ["Stable", fmt(pick(state, "stable"))],
      ["Candidate", fmt(pick(state, "candidate"))]];
    if (Number.isInteger(step.index)) rows.push(["Current step", `${step.index + 1} of ${total || "?"}`]);
    if (step.phase) rows.push(["Plan", PHASES[step.phase] || step.phase]);
    if (step.started_at) rows.push(["Step started", when(step.started_at)]);
    if (step.next_at) rows.push(["Next change", when(step.next_at)]);
    if (pick(state, "shadow_percent")) rows.push(["Shadow", `${fmt(state.shadow_percent)}% of requests also run on the candidate`]);
    if (pick(state, "sticky_key")) rows.push(["Sticky key", h("code", {}, state.sticky_key)]);
    const decided = pick(state, "decided");
    if (decided) rows.push(["Last change", `${when(decided.at)} by ${fmt(decided.by)}${decided.reason ? ` (${decided.reason})` : ""}`]);
    const parts = [h("dl", {class: "facts", "data-testid": "rollout-state"}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))];
    const problems = pick(state, "problems");
    for (const problem of Array.isArray(problems) ? problems : problems ? [problems] : []) parts.push(h("p", {class: "error", role: "alert"}, fmt(problem)));
    return parts;
  }

  function renderPlan(state) {
    const steps = stepsOf(state);
    if (!steps.length) return notice("This policy has no steps.");
    const current = stepOf(state).index;
    return h("ol", {class: "timeline", "data-testid": "timeline"}, steps.map((step, i) => {
      const starts = pick(step, "starts_at", "start", "at");
      const hold = pick(step, "hold");
      const attrs = {class: Number.isInteger(current) && i < current ? "done" : ""};
      if (i === current) attrs["aria-current"] = "step";
      // The timeline and the policy write shares in percent, as the policy file does.
      return h("li", attrs, `Step ${i + 1}: `, regionsText(pick(step, "regions", "shares"), true),
        hold ? ` · hold ${hold}` : (i === steps.length - 1 ? " · until promoted" : ""),
        starts ? ` · starts ${when(starts)}` : "", i === current ? " (current)" : "");
    }));
  }

  function renderShares(state) {
    const shares = Object.entries(pick(state, "shares", "candidate_share") || {});
    if (!shares.length) return notice("The candidate gets no traffic in any region.");
    return bars(shares.map(([region, share]) => [region === "*" ? "every other region" : region, asFraction(share)]),
      {label: "Candidate share per region"});
  }

  // Guardrail metric -> [limit name, "max" or "min"], in the order they are shown.
  const GUARDRAILS = [["requests", "min_requests", "min"], ["error_rate", "max_error_rate", "max"], ["p99_ms", "max_p99_ms", "max"],
    ["disagreement", "max_disagreement", "max"], ["mean_abs_difference", "max_mean_abs_difference", "max"],
    ["drift", "max_drift", "max"], ["live_accuracy", "min_live_accuracy", "min"]];

  function guardrailRows(state) {
    const guard = pick(state, "guardrails") || {};
    const limits = Object.assign({}, pick(pick(state, "policy"), "guardrails") || {}, pick(guard, "limits", "thresholds") || {});
    const readings = pick(guard, "readings") || pick(state, "readings") || {};
    const stable = readings.stable || {};
    const candidate = readings.candidate || {};
    const rows = [];
    for (const [metric, limitName, kind] of GUARDRAILS) {
      const limit = limits[limitName];
      const noLimit = limit === undefined || limit === null;
      const known = (arm) => arm[metric] !== undefined && arm[metric] !== null;
      if (noLimit && !known(stable) && !known(candidate)) continue; // neither limited nor measured: nothing to show
      // the monitor's readings carry their own counts (items in the drift window, feedback answers)
      const count = (arm) => (metric === "disagreement" ? arm.compared : arm[`${metric}_count`] ?? arm.requests);
      rows.push({metric, kind, limit, stable: {value: stable[metric], count: metric === "requests" ? undefined : count(stable)},
        candidate: {value: candidate[metric], count: metric === "requests" ? undefined : count(candidate)}});
    }
    return rows;
  }

  function judge(row) {
    const value = Number(row.candidate.value);
    if (row.candidate.value === null || row.candidate.value === undefined || !Number.isFinite(value)) return ["waiting for data", "verdict-waiting"];
    if (row.limit === null || row.limit === undefined) return ["no limit", ""];
    const bad = row.kind === "max" ? value > Number(row.limit) : value < Number(row.limit);
    if (row.metric === "requests") return bad ? ["waiting for data", "verdict-waiting"] : ["enough", "verdict-ok"];
    return bad ? [row.kind === "max" ? "over" : "under", "verdict-breach"] : ["within", "verdict-ok"];
  }

  function renderGuardrails(state) {
    const guard = pick(state, "guardrails") || {};
    const parts = [];
    const status = pick(guard, "status");
    if (status) {
      const kind = status === "ok" ? "verdict-ok" : status === "breach" ? "verdict-breach" : "verdict-waiting";
      parts.push(h("p", {"data-testid": "guardrail-status"}, badge(status.replace(/_/g, " "), kind), " ", fmt(pick(guard, "message") || "")));
    }
    const window = pick(pick(guard, "readings") || {}, "window_s");
    if (window) parts.push(h("p", {class: "meta"}, `Both arms over the last ${fmt(window)} s.`));
    const rows = guardrailRows(state);
    if (!rows.length) { parts.push(notice("No guardrail readings yet.")); return parts; }
    const cell = (a) => h("td", {class: "num"}, fmt(a.value), a.count !== undefined && a.count !== null ? h("span", {class: "hint"}, ` (n=${fmt(a.count)})`) : null);
    parts.push(h("div", {class: "table-scroll"}, h("table", {"data-testid": "guardrails"},
      h("thead", {}, h("tr", {}, ["Guardrail", "Stable", "Candidate", "Limit", "Candidate is"].map((t, i) => h("th", {scope: "col", class: i && i < 4 ? "num" : ""}, t)))),
      h("tbody", {}, rows.map((r) => {
        const [verdictText, kind] = judge(r);
        const limit = r.limit === undefined || r.limit === null ? "—" : `${r.kind === "max" ? "≤" : "≥"} ${fmt(r.limit)}`;
        return h("tr", {}, h("th", {scope: "row"}, r.metric.replace(/_/g, " ")), cell(r.stable), cell(r.candidate),
          h("td", {class: "num"}, limit), h("td", {}, badge(verdictText, kind)));
      })))));
    return parts;
  }

  function renderDecisions(state) {
    const decisions = pick(state, "last_decisions", "decisions", "recent_decisions") || [];
    if (!Array.isArray(decisions) || !decisions.length) return notice("No decisions yet.");
    return h("ul", {"data-testid": "decisions"}, byTimeNewestFirst(decisions).slice(0, 10).map((d) => typeof d === "string" ? h("li", {}, d) :
      h("li", {}, when(pick(d, "at", "time", "when")), ": ", fmt(pick(d, "action", "decision", "kind", "stage")),
        pick(d, "actor", "by") ? ` by ${fmt(pick(d, "actor", "by"))}` : "", pick(d, "reason") ? ` (${fmt(d.reason)})` : "")));
  }

  function historyOf(doc) {
    if (Array.isArray(doc)) return doc;
    const list = pick(doc, "history", "entries", "events", "audit");
    return Array.isArray(list) ? list : [];
  }

  function renderHistory(result) {
    if (!result.ok) return isAbsent(result) ? unavailable("The audit history", result) : h("p", {class: "error"}, result.message);
    const entries = byTimeNewestFirst(historyOf(result.data));
    if (!entries.length) return notice("No changes recorded yet.");
    const detail = (value) => value === undefined || value === null ? "—" :
      h("details", {}, h("summary", {}, "show"), h("pre", {}, JSON.stringify(value, null, 2)));
    return h("div", {class: "table-scroll"}, h("table", {"data-testid": "history"},
      h("thead", {}, h("tr", {}, ["When", "Who", "Change", "Reason", "Before", "After"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, entries.map((e) => h("tr", {},
        h("td", {}, when(pick(e, "at", "time", "when", "created_at"))), h("td", {}, fmt(pick(e, "actor", "who", "by", "source"))),
        h("td", {}, fmt(pick(e, "action", "change", "kind", "event"))), h("td", {}, fmt(pick(e, "reason"))),
        h("td", {}, detail(pick(e, "before"))), h("td", {}, detail(pick(e, "after"))))))));
  }

  function initRollout() {
    const name = PAGE_DATA.name;
    const sections = ["rollout-state", "rollout-plan", "rollout-shares", "rollout-guardrails", "rollout-decisions"];
    const buttons = [document.getElementById("promote"), document.getElementById("rollback")];

    const refresh = every(5, async () => {
      const [list, history] = await Promise.all([api("GET", "/v1/rollouts"), api("GET", `/v1/rollouts/${enc(name)}/history`)]);
      stamp();
      const body = document.getElementById("rollout-body");
      if (!list.ok) {
        // One plain sentence instead of a page of empty sections.
        fill("rollout-status", isAbsent(list) ? unavailable("Rollout state", list) : h("p", {class: "error"}, list.message));
        body.hidden = true;
        return;
      }
      const state = rolloutOf(list.data, name);
      const fileError = pick(list.data, "policy_error");
      const fileProblem = fileError ? h("p", {class: "error", role: "alert"}, "The policy file has a problem (the last good policy is kept): " + fmt(fileError)) : null;
      if (!state) {
        const why = list.data && list.data.enabled === false && list.data.detail ? ` (${list.data.detail})` : "";
        fill("rollout-status", fileProblem, notice(`No rollout policy is configured for ${name}: the highest loaded version serves every request${why}.`));
        body.hidden = !historyOf(history.data).length;
        fill("rollout-history", renderHistory(history));
        for (const id of sections) fill(id, notice("No policy."));
        for (const b of buttons) b.disabled = true;
        return;
      }
      fill("rollout-status", fileProblem);
      body.hidden = false;
      fill("rollout-history", renderHistory(history));
      for (const b of buttons) b.disabled = false;
      fill("rollout-state", renderState(state));
      fill("rollout-plan", renderPlan(state));
      fill("rollout-shares", renderShares(state));
      fill("rollout-guardrails", renderGuardrails(state));
      fill("rollout-decisions", renderDecisions(state));
    });

    initTokenForm();
    const act = async (action, question) => {
      if (!ensureToken()) return;
      if (!window.confirm(question)) return;
      const reason = document.getElementById("reason").value.trim();
      fill("steer-result", `Asking the service to ${action}…`);
      const result = await api("POST", `/v1/rollouts/${enc(name)}/${action}`, {
        auth: true, headers: {"Content-Type": "application/json"}, body: JSON.stringify(reason ? {reason} : {}),
      });
      if (result.ok) {
        fill("steer-result", action === "promote" ? "Promoted." : "Rolled back.");
      } else if (result.status === 401 || result.status === 403) {
        fill("steer-result");
        showError("token-error", result.message);
      } else {
        fill("steer-result", h("span", {class: "error"}, isAbsent(result) ? `This service cannot ${action} yet (${result.status}).` : result.message));
      }
      refresh();
    };
    buttons[0].addEventListener("click", () => act("promote", `Make the candidate of ${name} the stable version for everyone?`));
    buttons[1].addEventListener("click", () => act("rollback", `Stop sending any traffic to the candidate of ${name}?`));
  }

  // -- monitoring ------------------------------------------------------------------------------
  // GET /v1/models/{name}/drift -> {model, region, thresholds {warn, drift}, versions: [{version, window {size,
  // capacity}, reference_size, drift_score, verdict, features: [{feature, psi, verdict, unseen}], predictions: [...],
  // ood {items, flagged, flagged_share}, performance {estimated_accuracy, live_accuracy, feedback}}]}, read tolerantly.

  function driftReports(doc) {
    if (!doc || typeof doc !== "object") return [];
    let list = Array.isArray(doc) ? doc : pick(doc, "versions", "reports");
    if (list && !Array.isArray(list) && typeof list === "object") {
      list = Object.entries(list).map(([version, report]) => Object.assign({version}, report));
    }
    if (!Array.isArray(list)) list = [doc];
    return list.filter((r) => r && typeof r === "object").map((r) => Object.assign({thresholds: doc.thresholds, region: doc.region}, r));
  }

  function featuresOf(list, thresholds) {
    let features = list || [];
    if (!Array.isArray(features)) {
      features = Object.entries(features).map(([feature, v]) => (typeof v === "number" ? {feature, score: v} : Object.assign({feature}, v)));
    }
    return features.map((f) => {
      const score = Number(pick(f, "psi", "score", "value", "drift"));
      let verdict = pick(f, "verdict", "status");
      if (!verdict && Number.isFinite(score)) verdict = score >= thresholds.drift ? "drift" : score >= thresholds.warn ? "warn" : "ok";
      return {name: String(pick(f, "feature", "name", "column") || "?"), score, verdict: verdict || "unknown",
        unseen: pick(f, "unseen", "unseen_count", "unseen_levels")};
    });
  }

  function sizeOf(value) {
    return value && typeof value === "object" ? pick(value, "size", "n", "count") : value;
  }

  function driftBars(features, t, label) {
    const max = Math.max(t.drift * 1.5, ...features.map((f) => (Number.isFinite(f.score) ? f.score : 0)));
    return [bars(features.map((f) => [f.name, f.score, {kind: "verdict-" + f.verdict, mark: t.drift, note: f.verdict}]),
      {max, label, format: (v) => fmt(v)}),
    h("p", {class: "meta"}, features.map((f) => `${f.name}: ${f.verdict.replace(/_/g, " ")}` + (f.unseen ? ` (${fmt(f.unseen)} unseen)` : "")).join(" · "))];
  }

  function renderDrift(result) {
    if (!result.ok) return isAbsent(result) ? unavailable("Drift", result) : h("p", {class: "error"}, result.message);
    const reports = driftReports(result.data);
    if (!reports.length) return notice("No drift report yet.");
    return reports.map((report) => {
      const t = Object.assign({warn: 0.1, drift: 0.25}, pick(report, "thresholds") || {});
      const features = featuresOf(pick(report, "features", "table", "psi"), t);
      const predictions = featuresOf(pick(report, "predictions"), t);
      const title = [report.version !== undefined ? `Version ${report.version}` : "Served versions",
        report.region && report.region !== "*" ? `region ${report.region}` : "every region"].join(", ");
      const verdict = pick(report, "verdict");
      return h("article", {class: "card", "data-testid": "drift-report"},
        h("h3", {}, title, verdict ? [" ", badge(String(verdict).replace(/_/g, " "), "verdict-" + verdict)] : null),
        h("p", {class: "meta"}, `Window ${fmt(sizeOf(pick(report, "window_size", "window")))} items, reference ${fmt(sizeOf(pick(report, "reference_size", "reference")))}; PSI warn at ${t.warn}, drift at ${t.drift} (the mark on each bar).`),
        features.length ? driftBars(features, t, "PSI per input feature") : notice("No input features in this report yet."),
        predictions.length ? [h("h4", {}, "Predictions"), driftBars(predictions, t, "PSI of the predicted classes and confidences")] : null);
    });
  }

  function renderQuality(drift, samples, name) {
    // Per version and region: OOD rate, live accuracy (from feedback), estimated accuracy (from confidences).
    const rows = {};
    const row = (version, region) => {
      const key = `${version}|${region}`;
      return (rows[key] = rows[key] || {version, region});
    };
    for (const report of drift.ok ? driftReports(drift.data) : []) {
      const r = row(report.version !== undefined ? String(report.version) : "all", !report.region || report.region === "*" ? "all" : report.region);
      const ood = pick(report, "ood") || {};
      const perf = pick(report, "performance") || report;
      const value = (v) => (v && typeof v === "object" ? pick(v, "value", "rate") : v);
      r.ood = value(pick(report, "ood_rate") ?? pick(ood, "flagged_share", "rate"));
      r.oodItems = pick(ood, "items");
      r.live = value(pick(perf, "live_accuracy"));
      r.estimated = value(pick(perf, "estimated_accuracy"));
      r.validation = value(pick(perf, "validation_accuracy"));
      r.feedback = value(pick(perf, "feedback", "feedback_count"));
    }
    if (!drift.ok) {
      for (const s of samples) {
        if (s.labels.model !== name) continue;
        const r = () => row(s.labels.version || "all", s.labels.region || "all");
        if (s.name === "serving_live_accuracy") r().live = s.value;
        else if (s.name === "serving_estimated_accuracy") r().estimated = s.value;
        else if (s.name === "serving_feedback_total") r().feedback = (r().feedback || 0) + s.value;
      }
    }
    const known = (v) => v !== undefined && v !== null;
    const list = Object.values(rows).filter((r) => known(r.ood) || known(r.live) || known(r.estimated) || known(r.feedback));
    if (!list.length) {
      return notice("Out-of-domain rate and accuracy are not available yet: no drift report carries them and /metrics has no serving_live_accuracy for this model.", "unavailable");
    }
    const headings = ["Version", "Region", "OOD rate", "Live accuracy", "Estimated accuracy", "Validation accuracy", "Feedback"];
    return h("div", {class: "table-scroll"}, h("table", {"data-testid": "quality"},
      h("thead", {}, h("tr", {}, headings.map((t, i) => h("th", {scope: "col", class: i > 1 ? "num" : ""}, t)))),
      h("tbody", {}, list.map((r) => h("tr", {}, h("td", {}, r.version), h("td", {}, r.region),
        h("td", {class: "num"}, pct(Number(r.ood)), known(r.oodItems) ? h("span", {class: "hint"}, ` of ${fmt(r.oodItems)}`) : null),
        h("td", {class: "num", "data-testid": "live-accuracy"}, known(r.live) ? pct(Number(r.live)) : "no feedback yet"),
        h("td", {class: "num"}, pct(Number(r.estimated))), h("td", {class: "num"}, pct(Number(r.validation))),
        h("td", {class: "num"}, fmt(r.feedback)))))));
  }

  function renderTraffic(samples, name) {
    const rows = {};
    let ood = {};
    for (const s of samples) {
      if (s.labels.model !== name) continue;
      if (s.name === "serving_requests_total") {
        const key = `${s.labels.version}|${s.labels.region}`;
        const r = (rows[key] = rows[key] || {version: s.labels.version, region: s.labels.region, ok: 0, other: 0});
        if (s.labels.outcome === "ok") r.ok += s.value; else r.other += s.value;
      } else if (s.name === "serving_ood_total") {
        ood[s.labels.version] = (ood[s.labels.version] || 0) + s.value;
      }
    }
    const list = Object.values(rows);
    if (!list.length) return notice("No requests yet.");
    return h("div", {class: "table-scroll"}, h("table", {"data-testid": "traffic"},
      h("thead", {}, h("tr", {}, ["Version", "Region", "Answered", "Failed or refused", "OOD flags (version)"].map((t, i) => h("th", {scope: "col", class: i > 1 ? "num" : ""}, t)))),
      h("tbody", {}, list.map((r) => h("tr", {}, h("td", {}, r.version), h("td", {}, r.region), h("td", {class: "num"}, fmt(r.ok)),
        h("td", {class: "num"}, fmt(r.other)), h("td", {class: "num"}, ood[r.version] !== undefined ? fmt(ood[r.version]) : "—"))))));
  }

  function initMonitoring() {
    const name = PAGE_DATA.name;
    const form = document.getElementById("monitor-filters");
    const refresh = every(10, async () => {
      const params = {version: document.getElementById("monitor-version").value, region: document.getElementById("monitor-region").value.trim()};
      const [drift, metrics] = await Promise.all([api("GET", `/v1/models/${enc(name)}/drift${query(params)}`), api("GET", "/metrics")]);
      stamp();
      const samples = metrics.ok ? parseMetrics(metrics.text) : [];
      fill("monitor-drift", renderDrift(drift));
      fill("monitor-quality", renderQuality(drift, samples, name));
      fill("monitor-traffic", metrics.ok ? renderTraffic(samples, name) : unavailable("Traffic", metrics));
      const regions = new Set(samples.filter((s) => s.labels.model === name && s.labels.region).map((s) => s.labels.region));
      fill("monitor-regions", Array.from(regions).sort().map((r) => h("option", {value: r})));
    });
    form.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  }

  // -- review queue ----------------------------------------------------------------------------
  // Items from the prediction log, read tolerantly: {request_id, item, created_at, model, version, region, arm,
  // reasons, inputs, outputs, ood}, where inputs/outputs/ood may be the whole request's lists (one entry per item):
  // a row as an object, or an image as {sha256, bytes, brightness, ..., b64 when images are kept}.

  const IMAGE_KEYS = ["b64", "thumbnail", "image", "image_b64"];

  function nth(value, index) {
    return Array.isArray(value) ? value[index] || value[0] || {} : value || {};
  }

  function queueOf(doc) {
    const list = Array.isArray(doc) ? doc : pick(doc, "predictions", "items", "queue", "records") || [];
    return list.filter((x) => x && typeof x === "object").map((x) => {
      const item = Number.isInteger(x.item) ? x.item : 0;
      let out = nth(pick(x, "prediction", "output", "outputs"), item);
      if (Array.isArray(out.predictions)) out = out.predictions[item] || {};
      const ood = pick(x, "ood") !== undefined ? nth(x.ood, item) : out.ood;
      const input = nth(pick(x, "input", "inputs"), item);
      const picture = pick(x, ...IMAGE_KEYS) || pick(input, ...IMAGE_KEYS);
      const isImage = Boolean(picture) || "sha256" in input;
      const summaries = isImage ? Object.fromEntries(Object.entries(input).filter(([k, v]) => !IMAGE_KEYS.includes(k) && k !== "sha256" && typeof v === "number")) : null;
      let reasons = pick(x, "reasons", "flags") || (x.reason ? [x.reason] : null) || pick(ood, "reasons") || [];
      if (!Array.isArray(reasons)) reasons = [String(reasons)];
      return {
        id: pick(x, "request_id", "id"), item, time: pick(x, "created_at", "time", "at", "logged_at", "timestamp"),
        model: pick(x, "model"), version: pick(x, "version"), region: pick(x, "region"), arm: pick(x, "arm", "rollout_arm"),
        reasons, prediction: Object.assign({}, out, ood && typeof ood === "object" && Object.keys(ood).length ? {ood} : {}),
        image: typeof picture === "string" ? (picture.startsWith("data:") ? picture : "data:image/png;base64," + picture) : null,
        row: isImage ? null : (pick(input, "row") || (Object.keys(input).length ? input : null)), summaries,
      };
    }).sort((a, b) => (new Date(typeof b.time === "number" ? b.time * 1000 : b.time || 0) - new Date(typeof a.time === "number" ? a.time * 1000 : a.time || 0)));
  }

  function hotkeys(classes) {
    // Single-character labels are their own keys (digits: 0-9); otherwise 1-9 in class order.
    const single = classes.every((c) => String(c).length === 1) && new Set(classes.map((c) => String(c).toLowerCase())).size === classes.length;
    const keys = {};
    classes.forEach((c, i) => {
      const key = single ? String(c).toLowerCase() : i < 9 ? String(i + 1) : null;
      if (key && key !== "j" && key !== "k" && key !== "y") keys[key] = c;
    });
    return keys;
  }

  function initReview() {
    const list = document.getElementById("review-queue");
    const form = document.getElementById("review-filters");
    const models = {}; // name -> GET /v1/models/{name}, for classes and task
    let current = 0;

    async function describe(name) {
      if (!name) return {};
      if (!models[name]) {
        const r = await api("GET", `/v1/models/${enc(name)}`);
        models[name] = r.ok ? r.data : {};
      }
      return models[name];
    }

    function focusItem(index) {
      const items = Array.from(list.children);
      if (!items.length) return;
      current = Math.max(0, Math.min(items.length - 1, index));
      items.forEach((el, i) => el.classList.toggle("current", i === current));
      items[current].focus();
    }

    async function review(li, item, answer) {
      const body = Object.assign({request_id: item.id}, item.item ? {item: item.item} : {}, answer);
      const result = await api("POST", "/v1/feedback", {auth: true, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      const error = li.querySelector(".item-error");
      if (!result.ok) {
        error.textContent = result.message;
        error.hidden = false;
        return;
      }
      const index = Array.from(list.children).indexOf(li);
      li.remove();
      fill("review-status", `Feedback recorded for ${item.id}: ${fmt(answer.label !== undefined ? answer.label : answer.value)}. ${list.children.length} left.`);
      if (!list.children.length) fill("review-status", "Queue empty: every flagged prediction here is reviewed.");
      else focusItem(index);
    }

    function itemView(item, model) {
      const classes = Array.isArray(model.classes) ? model.classes : [];
      const task = model.task || (item.prediction.value !== undefined ? "regression" : item.prediction.labels ? "multilabel" : "classification");
      const keys = hotkeys(classes);
      const keyOf = (c) => Object.keys(keys).find((k) => keys[k] === c);
      const li = h("li", {tabindex: "0", "data-request-id": item.id || "", "aria-label": `Prediction ${item.id || ""}`});
      li._review = {item, keys, task};
      const input = item.image ? h("img", {class: "thumb", src: item.image, alt: "The image the model was sent"}) :
        item.row ? h("table", {}, h("tbody", {}, Object.entries(item.row).map(([k, v]) => h("tr", {}, h("th", {scope: "row"}, k), h("td", {}, fmt(v)))))) :
        item.summaries ? h("div", {}, h("p", {class: "muted"}, "Image not kept; its summaries:"), h("dl", {class: "facts"},
          Object.entries(item.summaries).map(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v))]))) : h("p", {class: "muted"}, "Input not kept.");
      const predicted = item.prediction.label !== undefined ? item.prediction.label : item.prediction.labels;
      const actions = h("div", {class: "actions", role: "group", "aria-label": "Confirm or correct"});
      if (task === "regression") {
        const id = "value-" + (item.id || Math.random().toString(36).slice(2));
        const field = h("input", {id, type: "number", step: "any", inputmode: "decimal"});
        actions.append(h("label", {for: id, class: "visually-hidden"}, "True value"), field,
          h("button", {type: "button", onclick: () => field.value !== "" && review(li, item, {value: Number(field.value)})}, "Send the true value"));
      } else if (task === "multilabel") {
        const boxes = classes.map((c) => h("label", {}, h("input", {type: "checkbox", value: c, checked: Array.isArray(predicted) && predicted.includes(c)}), " " + c));
        actions.append(...boxes, h("button", {type: "button", onclick: () => review(li, item, {label: boxes.map((b) => b.firstChild).filter((b) => b.checked).map((b) => b.value)})}, "Send labels"));
      } else {
        actions.append(h("button", {type: "button", class: "confirm", onclick: () => review(li, item, {label: predicted})},
          `Confirm ${predicted !== undefined ? predicted : ""} `, h("kbd", {}, "y")));
        for (const c of classes) {
          if (c === predicted) continue;
          const key = keyOf(c);
          actions.append(h("button", {type: "button", class: "secondary", "data-label": c, onclick: () => review(li, item, {label: c})},
            `It is ${c} `, key ? h("kbd", {}, key) : null));
        }
      }
      const probabilities = item.prediction.probabilities ? bars(topProbabilities(item.prediction.probabilities, 3)) : null;
      li.append(h("div", {}, input), h("div", {},
        h("p", {class: "answer"}, predicted !== undefined ? fmt(Array.isArray(predicted) ? predicted.join(", ") : predicted) : fmt(item.prediction.value)),
        h("p", {class: "meta"}, [item.model, item.version !== undefined ? `v${item.version}` : null, item.region, item.arm, when(item.time)].filter(Boolean).join(" · ")),
        h("p", {}, item.reasons.map((r) => badge(String(r).replace(/_/g, " "), r === "sample" ? "" : "verdict-warn"))),
        probabilities, oodVerdict(item.prediction.ood), actions, h("p", {class: "field-error item-error", role: "alert", hidden: true})));
      li.addEventListener("focus", () => { current = Array.from(list.children).indexOf(li); Array.from(list.children).forEach((el) => el.classList.toggle("current", el === li)); });
      return li;
    }

    async function load() {
      const params = {};
      for (const el of form.elements) if (el.name && el.value.trim()) params[el.name] = el.value.trim();
      fill("review-status", "Loading…");
      const result = await api("GET", REVIEW_QUEUE_PATH + query(Object.assign({flagged: "true", reviewed: "false", limit: 50}, params)), {auth: true});
      if (!result.ok) {
        list.replaceChildren();
        if (result.status === 401 || result.status === 403) {
          fill("review-status", "The queue needs the admin or reviewer token.");
          showError("token-error", result.message);
        } else if (isAbsent(result)) fill("review-status", unavailable("The review queue", result));
        else fill("review-status", h("span", {class: "error"}, result.message));
        return;
      }
      let items = queueOf(result.data);
      // The filters again in the browser, in case the listing ignores one.
      if (params.model) items = items.filter((i) => !i.model || i.model === params.model);
      if (params.version) items = items.filter((i) => i.version === undefined || String(i.version) === params.version);
      if (params.region) items = items.filter((i) => !i.region || i.region === params.region);
      if (params.reason) items = items.filter((i) => !i.reasons.length || i.reasons.includes(params.reason));
      const views = [];
      for (const item of items) views.push(itemView(item, await describe(item.model || params.model)));
      list.replaceChildren(...views);
      fill("review-status", items.length ? `${items.length} item${items.length === 1 ? "" : "s"} to review.` : "Queue empty: nothing flagged is waiting for review.");
      if (views.length) { current = 0; views[0].classList.add("current"); }
    }

    list.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT" || event.altKey || event.ctrlKey || event.metaKey) return;
      const li = event.target.closest(".queue > li");
      if (!li) return;
      const {item, keys, task} = li._review;
      const key = event.key.toLowerCase();
      const items = Array.from(list.children);
      if (key === "j" || event.key === "ArrowDown") { event.preventDefault(); focusItem(items.indexOf(li) + 1); }
      else if (key === "k" || event.key === "ArrowUp") { event.preventDefault(); focusItem(items.indexOf(li) - 1); }
      else if (task === "classification" && (key === "y" || (event.key === "Enter" && event.target === li))) {
        event.preventDefault(); review(li, item, {label: item.prediction.label});
      } else if (task === "classification" && keys[key] !== undefined) { event.preventDefault(); review(li, item, {label: keys[key]}); }
    });
    form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
    initTokenForm(load);
    load();
  }

  // -- start -----------------------------------------------------------------------------------

  const pages = {model: initModel, rollout: initRollout, monitoring: initMonitoring, review: initReview};
  const init = pages[document.body.dataset.page];
  if (init) init();
  initCurlCopy();
})();
