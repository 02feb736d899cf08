// fastprod's monitoring page: drift per feature, out-of-domain rate and accuracy, traffic; refreshed.
// Loaded after ui.js, whose shared helpers it takes from window.fastprod.
"use strict";

(function () {
  const {PAGE_DATA, h, fill, pick, fmt, pct, notice, unavailable, isAbsent, badge, stamp, every, api, query, enc, bars} = window.fastprod;

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

  // GET /v1/models/{name}/drift -> {model, region, thresholds {warn, drift}, versions: [{version, window {size,
  // capacity, min_items}, reference_size, drift_score, verdict, features: [{feature, psi, noise_psi, verdict, unseen}],
  // predictions: [...], ood {items, flagged, flagged_share, score, threshold, fallback}, performance
  // {estimated_accuracy, estimated_accuracy_interval, estimated_accuracy_status, estimated_accuracy_problem,
  // live_accuracy, live_accuracy_interval, disagreement, feedback}}]}, read tolerantly.

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
        noise: pick(f, "noise_psi"), unseen: pick(f, "unseen", "unseen_count", "unseen_levels")};
    });
  }

  function sizeOf(value) {
    return value && typeof value === "object" ? pick(value, "size", "n", "count") : value;
  }

  // A feature's note: its verdict, and the noise level its PSI had to pass (none while the window collects).
  function verdictNote(f) {
    const noise = Number.isFinite(Number(f.noise)) && f.noise !== null ? `, noise ${fmt(Number(f.noise))}` : "";
    return `${f.verdict.replace(/_/g, " ")}${noise}`;
  }

  function driftBars(features, t, label) {
    const max = Math.max(t.drift * 1.5, ...features.map((f) => (Number.isFinite(f.score) ? f.score : 0)));
    return [bars(features.map((f) => [f.name, f.score, {kind: "verdict-" + f.verdict, mark: t.drift, note: verdictNote(f)}]),
      {max, label, format: (v) => fmt(v)}),
    h("p", {class: "meta"}, features.map((f) => `${f.name}: ${verdictNote(f)}` + (f.unseen ? ` (${fmt(f.unseen)} unseen)` : "")).join(" · "))];
  }

  function verdictBadge(report) {
    const verdict = pick(report, "verdict");
    if (!verdict) return null;
    const win = pick(report, "window") || {};
    const text = verdict === "collecting" && win.min_items !== undefined
      ? `collecting (${fmt(win.size)} of ${fmt(win.min_items)} items)` : String(verdict).replace(/_/g, " ");
    return [" ", badge(text, "verdict-" + verdict)];
  }

  function oodLine(report) {
    const ood = pick(report, "ood") || {};
    if (!ood.score) return null;
    const fallback = ood.fallback ? " (a fallback: this service cannot compute the bundle's own score)" : "";
    return h("p", {class: "meta"}, `Out-of-domain flags: the ${ood.score} score over ${fmt(ood.threshold)}${fallback}, calibrated on validation data to flag a set share of in-domain items.`);
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
      const win = pick(report, "window") || {};
      const minimum = win.min_items !== undefined ? `; verdicts once it holds ${fmt(win.min_items)} items (collecting until then)` : "";
      return h("article", {class: "card", "data-testid": "drift-report"},
        h("h3", {}, title, verdictBadge(report)),
        h("p", {class: "meta"}, `Window ${fmt(sizeOf(pick(report, "window_size", "window")))} items${minimum}, reference ${fmt(sizeOf(pick(report, "reference_size", "reference")))}. A feature reads warn from PSI ${t.warn} and drift from ${t.drift} (the mark on each bar), and only above its noise: the PSI in-domain windows of this size reach once in a thousand.`),
        features.length ? driftBars(features, t, "PSI per input feature") : notice("No input features in this report yet."),
        predictions.length ? [h("h4", {}, "Predictions"), driftBars(predictions, t, "PSI of the predicted classes and confidences")] : null,
        oodLine(report));
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
      r.liveInterval = pick(perf, "live_accuracy_interval");
      r.estimated = value(pick(perf, "estimated_accuracy"));
      r.estimatedInterval = pick(perf, "estimated_accuracy_interval");
      r.estimatedStatus = pick(perf, "estimated_accuracy_status");
      r.estimatedProblem = pick(perf, "estimated_accuracy_problem");
      r.disagreement = pick(perf, "disagreement");
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
    const headings = ["Version", "Region", "OOD rate", "Estimated accuracy", "Live accuracy", "Estimate vs live", "Validation accuracy", "Feedback"];
    const interval = (i) => (Array.isArray(i) && i.length === 2 ? h("span", {class: "hint"}, ` (${pct(Number(i[0]))}–${pct(Number(i[1]))})`) : null);
    const estimated = (r) => {
      if (r.estimatedStatus === "unknown") return [h("span", {class: "warn"}, "unknown"), r.estimatedProblem ? h("span", {class: "hint"}, ` (${r.estimatedProblem})`) : null];
      if (r.estimatedStatus === "collecting") return "collecting";
      return [pct(Number(r.estimated)), interval(r.estimatedInterval)];
    };
    const mark = (r) => {
      if (r.disagreement === true) return badge("disagree", "verdict-drift");
      if (r.disagreement === false) return badge("agree", "verdict-ok");
      return "—";
    };
    return [h("div", {class: "table-scroll"}, h("table", {"data-testid": "quality"},
      h("thead", {}, h("tr", {}, headings.map((t, i) => h("th", {scope: "col", class: i > 1 ? "num" : ""}, t)))),
      h("tbody", {}, list.map((r) => h("tr", {}, h("td", {}, r.version), h("td", {}, r.region),
        h("td", {class: "num"}, pct(Number(r.ood)), known(r.oodItems) ? h("span", {class: "hint"}, ` of ${fmt(r.oodItems)}`) : null),
        h("td", {class: "num", "data-testid": "estimated-accuracy"}, estimated(r)),
        h("td", {class: "num", "data-testid": "live-accuracy"}, known(r.live) ? [pct(Number(r.live)), interval(r.liveInterval)] : "no feedback yet"),
        h("td", {class: "num", "data-testid": "disagreement"}, mark(r)),
        h("td", {class: "num"}, pct(Number(r.validation))),
        h("td", {class: "num"}, fmt(r.feedback))))))),
    h("p", {class: "meta"}, "Intervals are 95 %: the estimate's from the size of the validation set it was calibrated on and of the window, live accuracy's from the answers received. \"disagree\" marks a difference beyond both; an estimate is unknown where validation had too few wrong items to calibrate on.")];
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

  initMonitoring();
})();
