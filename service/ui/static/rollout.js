// fastprod's rollout page: a model's rollout state, plan, shares, guardrails and history, refreshed; promote and roll back.
// Loaded after ui.js, whose shared helpers it takes from window.fastprod.
"use strict";

(function () {
  const {ROOT, PAGE_DATA, h, fill, pick, fmt, pct, when, notice, unavailable, isAbsent, badge, showError, stamp, every, api, enc, initTokenForm, ensureToken, bars} = window.fastprod;

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
    last_step: "on the last step, until someone promotes", step: "walking the plan", final: "over"};
  const FINAL = {rolled_back: "rolled back: the candidate gets no traffic", promoted: "promoted: the candidate takes all traffic"};

  // A version and, when the nightly run that made it left a report, a link to it (GET .../versions/{v}/report).
  function withReport(version) {
    const report = (PAGE_DATA.reports || {})[version];
    return report ? [fmt(version), " · ", h("a", {href: ROOT + report}, "nightly report")] : fmt(version);
  }

  function renderState(state) {
    const stage = pick(state, "stage") || "off";
    const step = stepOf(state);
    const total = pick(step, "of") || stepsOf(state).length;
    const rows = [["Stage", badge(stage, "stage-" + stage)], ["Stable", withReport(pick(state, "stable"))],
      ["Candidate", withReport(pick(state, "candidate"))]];
    if (Number.isInteger(step.index)) rows.push(["Current step", `${step.index + 1} of ${total || "?"}`]);
    const final = pick(state, "final");
    if (final) {
      rows.push(["Plan", `over, ${FINAL[final.stage] || final.stage}`]);
      const who = final.actor ? ` by ${fmt(final.actor)}` : "";
      rows.push(["Decision", final.at ? `${fmt(final.action)} ${when(final.at)}${who}${final.reason ? ` (${final.reason})` : ""}` : fmt(final.action)]);
    } else {
      if (step.phase) rows.push(["Plan", PHASES[step.phase] || step.phase]);
      if (step.started_at) rows.push(["Step started", when(step.started_at)]);
    }
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
      const breach = pick(guard, "breach");
      const kind = status === "ok" ? "verdict-ok" : status === "breach" || breach ? "verdict-breach" : status === "decided" ? "" : "verdict-waiting";
      parts.push(h("p", {"data-testid": "guardrail-status"}, badge(status.replace(/_/g, " "), kind), " ", fmt(pick(guard, "message") || "")));
    }
    const window = pick(pick(guard, "readings") || {}, "window_s");
    if (window) parts.push(h("p", {class: "meta"}, `Both arms over the last ${fmt(window)} s.`));
    const copies = (pick(guard, "readings") || {}).candidate || {};
    if (copies.compared || copies.shadow_shed) {
      parts.push(h("p", {class: "meta", "data-testid": "shadow-copies"},
        `Shadow copies: ${fmt(copies.compared || 0)} compared, ${fmt(copies.shadow_shed || 0)} shed (the candidate was saturated or the budget spent).`));
    }
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

  initRollout();
})();
