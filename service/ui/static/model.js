// fastprod's model card: the "try it" form (an image, a row or a CSV) and the same request as a curl command.
// Loaded after ui.js, whose shared helpers it takes from window.fastprod.
"use strict";

(function () {
  const {ROOT, PAGE_DATA, h, fill, fmt, pct, showError, api, enc, bars, topProbabilities, oodVerdict} = window.fastprod;

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

  initModel();
  initCurlCopy();
})();
