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

  initMonitoring();
})();
