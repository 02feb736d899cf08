// fastprod's review queue: flagged predictions from the prediction log, confirmed or corrected with a click or a key.
// Loaded after ui.js, whose shared helpers it takes from window.fastprod.
"use strict";

(function () {
  const {h, fill, pick, fmt, when, unavailable, isAbsent, badge, showError, api, query, enc, initTokenForm, bars, topProbabilities, oodVerdict} = window.fastprod;

  // The review queue's listing of flagged predictions (the prediction log, from the monitoring work).
  const REVIEW_QUEUE_PATH = "/v1/predictions";
  const PAGE_SIZE = 50;

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
    const older = document.getElementById("review-older");
    const newer = document.getElementById("review-newer");
    let current = 0;
    // Keyset pages: the cursors of the pages before this one (the first page has none), this page's, the next's.
    let before = [];
    let cursor = null;
    let next = null;
    let total = 0;

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
      const body = Object.assign({request_id: item.id, source: "review"}, item.item ? {item: item.item} : {}, answer);
      const result = await api("POST", "/v1/feedback", {auth: true, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      const error = li.querySelector(".item-error");
      if (!result.ok) {
        error.textContent = result.message;
        error.hidden = false;
        return;
      }
      const index = Array.from(list.children).indexOf(li);
      li.remove();
      total = Math.max(0, total - 1);
      fill("review-status", `Feedback recorded for ${item.id}: ${fmt(answer.label !== undefined ? answer.label : answer.value)}. ${counted(total)} left in the queue.`);
      if (!list.children.length) {
        if (total) load(cursor); // this page is done: the items after it move up
        else fill("review-status", "Queue empty: every flagged prediction here is reviewed.");
      } else focusItem(index);
    }

    function counted(n) {
      return `${n} item${n === 1 ? "" : "s"}`;
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

    async function load(at) {
      const params = {};
      for (const el of form.elements) if (el.name && el.value.trim()) params[el.name] = el.value.trim();
      if (at) params.cursor = at;
      fill("review-status", "Loading…");
      const result = await api("GET", REVIEW_QUEUE_PATH + query(Object.assign({flagged: "true", reviewed: "false", limit: PAGE_SIZE}, params)), {auth: true});
      older.hidden = newer.hidden = true;
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
      // The queue's real size, from the listing; this page shows PAGE_SIZE of it at most.
      cursor = at || null;
      next = result.data && typeof result.data.next === "string" ? result.data.next : null;
      total = result.data && Number.isInteger(result.data.total) ? result.data.total : items.length;
      const first = before.length * PAGE_SIZE + 1;
      const shown = items.length ? ` Showing ${first}–${first + items.length - 1}.` : "";
      fill("review-status", total ? `${counted(total)} to review.${shown}` : "Queue empty: nothing flagged is waiting for review.");
      older.hidden = !next;
      newer.hidden = !before.length;
      if (views.length) { current = 0; views[0].classList.add("current"); }
    }

    older.addEventListener("click", () => { before.push(cursor); load(next); });
    newer.addEventListener("click", () => load(before.pop()));

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
    const fromTheStart = () => { before = []; load(null); };
    form.addEventListener("submit", (event) => { event.preventDefault(); fromTheStart(); });
    initTokenForm(fromTheStart);
    fromTheStart();
  }

  initReview();
})();
