// entrep search page: talks to the local HTTP API only (same origin), no libraries.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    maxUpload: 20 * 1024 * 1024,
    groups: [],          // group names, for colours
    groupOf: {},         // class name -> group name
    last: null,          // {kind: "image", file} | {kind: "text", text}
    previewUrl: null,
    busy: 0,
    hierarchical: false, // groups first, then the class within the group
    seq: 0,              // query counter: only the latest query's answer is shown
  };
  const PALETTE = ["#2563eb", "#b45309", "#047857", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#a21caf"];

  // ---- messages ---------------------------------------------------------
  function showError(text) {
    $("message-text").textContent = text;
    $("message").hidden = false;
  }
  function clearError() {
    $("message").hidden = true;
    $("message-text").textContent = "";
  }
  function setStatus(text) { $("status").textContent = text || ""; }

  async function api(url, options) {
    let resp;
    try {
      resp = await fetch(url, options);
    } catch (e) {
      throw new Error("Cannot reach the entrep server. Is `entrep serve` still running?");
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      let detail = body && body.detail;
      if (Array.isArray(detail)) {  // FastAPI validation errors
        detail = detail.map((d) => (d.loc ? d.loc.slice(1).join(".") + ": " : "") + d.msg).join("; ");
      }
      throw new Error(detail || `The server answered ${resp.status} ${resp.statusText}`);
    }
    return body;
  }

  // shared with review.js (loaded after this file): one way to call the API and report its errors
  window.entrepApi = api;

  async function busy(label, fn) {
    state.busy += 1;
    setStatus(label);
    document.body.classList.add("busy");
    try {
      return await fn();
    } finally {
      state.busy -= 1;
      if (state.busy === 0) { document.body.classList.remove("busy"); setStatus(""); }
    }
  }

  // ---- helpers -----------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function groupColour(group) {
    const i = state.groups.indexOf(group);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }
  function pct(x) { return (100 * x).toFixed(x >= 0.995 || x < 0.1 ? 1 : 0) + "%"; }
  function labelChip(label, group) {
    const chip = el("span", "label-chip", label);
    chip.style.setProperty("--chip", groupColour(group || label));
    return chip;
  }
  function params() {
    return { filter: $("filter-select").value, k: $("k-select").value };
  }

  // ---- set-up ------------------------------------------------------------
  async function init() {
    try {
      const [health, classes] = await Promise.all([api("/healthz"), api("/api/classes")]);
      state.maxUpload = health.max_upload_bytes || state.maxUpload;
      state.hierarchical = Boolean(health.hierarchical);
      const parts = [];
      if (health.model) parts.push(health.model);
      parts.push(`${health.classes.length} classes`);
      parts.push(`${health.gallery_size} gallery images`);
      $("model-info").textContent = parts.join(" · ");
      $("report-link").hidden = !health.report;
      if (!health.gallery_size) {
        showError("This model has no gallery, so search is off (classification still works). " +
                  "Build one with: entrep index --model MODEL --gallery DATA");
      }
      fillFilters(classes);
    } catch (e) {
      $("model-info").textContent = "model unavailable";
      showError(e.message);
    }
  }

  function fillFilters(info) {
    const select = $("filter-select");
    // colours follow groups (or classes when the taxonomy has none)
    state.groups = info.groups.length ? info.groups.map((g) => g.name) : info.classes.map((c) => c.name);
    for (const c of info.classes) state.groupOf[c.name] = c.group;
    if (info.groups.length) {
      for (const g of info.groups) {
        const og = document.createElement("optgroup");
        og.label = g.name;
        if (g.classes.length > 1) {
          const opt = el("option", null, `${g.name} (any)`);
          opt.value = g.name;
          og.appendChild(opt);
        }
        for (const c of g.classes) {
          const opt = el("option", null, c);
          opt.value = c;
          og.appendChild(opt);
        }
        select.appendChild(og);
      }
    } else {
      for (const c of info.classes) {
        const opt = el("option", null, c.name);
        opt.value = c.name;
        select.appendChild(opt);
      }
    }
  }

  // ---- image query -------------------------------------------------------
  async function handleFile(file) {
    clearError();
    if (!file) return;
    if (file.size === 0) { showError(`${file.name}: the file is empty.`); return; }
    if (file.size > state.maxUpload) {
      showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ` +
                `${(state.maxUpload / 1048576).toFixed(1)} MB per image.`);
      return;
    }
    state.last = { kind: "image", file };
    const seq = ++state.seq;
    resetResults();
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    $("query-preview").src = state.previewUrl;
    try {
      await busy("Classifying…", async () => {
        const fd = new FormData();
        fd.append("file", file, file.name);
        const pred = await api("/api/classify", { method: "POST", body: fd });
        if (seq === state.seq) showPrediction(pred);
      });
    } catch (e) {
      $("prediction").hidden = true;
      showError(e.message);
      return;
    }
    try {
      await searchImage();
    } catch (e) {
      $("empty").textContent = "No search results.";
      showError(e.message);  // the prediction above stays useful
    }
  }

  async function searchImage() {
    const file = state.last.file;
    const seq = state.seq;
    const { filter, k } = params();
    const fd = new FormData();
    fd.append("file", file, file.name);
    fd.append("k", k);
    if (filter) fd.append("filter", filter);
    const res = await busy("Searching…", () => api("/api/search", { method: "POST", body: fd }));
    if (seq === state.seq) showResults(res, `Gallery images like your image`);
  }

  // Which part of the hybrid decided, in words (see docs/server.md).
  function describeSource(p) {
    const within = p.side ? "side" : (p.state ? "state" : null);
    if (!state.hierarchical) {
      return p.source === "prototype"
        ? "Decided by the prototypes: the image was close enough to one class's typical images."
        : "Decided by the trained head: the prototypes were not confident enough on their own.";
    }
    const group = p.source === "prototype"
      ? `The prototypes were confident about the group (${p.group})`
      : `The prototypes were not confident enough, so the trained head chose the group (${p.group})`;
    return within ? `${group}; the ${p.group} head chose the ${within}.` : `${group}, which has one class.`;
  }

  function showPrediction(p) {
    $("prediction").hidden = false;
    const label = $("pred-label");
    label.replaceChildren(labelChip(p.label, p.group));
    const meta = [`group ${p.group}`];
    if (p.side) meta.push(`side ${p.side}`);
    if (p.state) meta.push(`state ${p.state}`);
    meta.push(`confidence ${pct(p.confidence)}`);
    $("pred-meta").textContent = meta.join(" · ");
    $("pred-source").textContent = describeSource(p);
    const bars = $("prob-bars");
    bars.replaceChildren();
    const probs = Object.entries(p.probabilities || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, value] of probs) {
      const row = el("div", "prob-row");
      row.appendChild(el("span", "prob-name", name));
      const track = el("span", "prob-track");
      const fill = el("span", "prob-fill");
      fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
      fill.style.background = groupColour(state.groupOf[name] || name);
      track.appendChild(fill);
      row.appendChild(track);
      row.appendChild(el("span", "prob-value", pct(value)));
      bars.appendChild(row);
    }
  }

  // ---- text query --------------------------------------------------------
  async function searchText(text) {
    clearError();
    text = (text || "").trim();
    if (!text) { showError("Type a finding first, e.g. “a spur on the septum”."); return; }
    state.last = { kind: "text", text };
    const seq = ++state.seq;
    resetResults();
    $("prediction").hidden = true;
    const { filter, k } = params();
    const q = new URLSearchParams({ q: text, k, filter: filter || "auto" });
    try {
      const res = await busy("Searching…", () => api(`/api/search?${q}`));
      if (seq === state.seq) showResults(res, `Gallery images matching “${text}”`);
    } catch (e) {
      $("empty").textContent = "No search results.";
      showError(e.message);
    }
  }

  // ---- results -----------------------------------------------------------
  function resetResults() {
    $("results-title").textContent = "Results";
    $("results").replaceChildren();
    $("empty").textContent = "Searching…";
    $("empty").hidden = false;
  }

  function showResults(res, title) {
    $("results-title").textContent = title;
    const grid = $("results");
    grid.replaceChildren();
    const results = res.results || [];
    $("empty").hidden = results.length > 0;
    if (!results.length) {
      $("empty").textContent = "No gallery image matches with this filter. Try “All classes”.";
    }
    results.forEach((r, i) => {
      const card = el("figure", "result-card");
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.src = r.thumb;
      img.alt = `${r.label || "gallery image"} ${r.id}`;
      img.addEventListener("error", () => { img.classList.add("thumb-missing"); img.alt = "thumbnail unavailable"; });
      card.appendChild(img);
      const cap = el("figcaption");
      const top = el("div", "card-top");
      top.appendChild(el("span", "rank", `#${i + 1}`));
      if (r.label) top.appendChild(labelChip(r.label, r.group));
      top.appendChild(el("span", "score", r.score.toFixed(3)));
      cap.appendChild(top);
      if (r.caption) {
        const c = el("p", "caption", r.caption);
        c.title = r.caption;
        cap.appendChild(c);
      }
      if (r.name) {
        const n = el("p", "name", r.name);
        n.title = r.name;
        cap.appendChild(n);
      }
      card.appendChild(cap);
      grid.appendChild(card);
    });
  }

  function rerun() {
    if (!state.last) return;
    if (state.last.kind === "image") {
      clearError();
      state.seq += 1;
      searchImage().catch((e) => showError(e.message));
    } else {
      searchText(state.last.text);
    }
  }

  // ---- wiring ------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    const input = $("file-input");
    const zone = $("drop-zone");
    input.addEventListener("change", () => { handleFile(input.files[0]); input.value = ""; });
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault(); zone.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault(); zone.classList.remove("dragging");
    }));
    zone.addEventListener("drop", (e) => handleFile(e.dataTransfer.files[0]));
    // A file dropped outside the zone would make the browser navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("text-form").addEventListener("submit", (e) => { e.preventDefault(); searchText($("text-input").value); });
    document.querySelectorAll(".example").forEach((b) => b.addEventListener("click", () => {
      $("text-input").value = b.textContent;
      searchText(b.textContent);
    }));
    $("filter-select").addEventListener("change", rerun);
    $("k-select").addEventListener("change", rerun);
    $("message-close").addEventListener("click", clearError);
    init();
  });
})();
