// entrep exam review panel: upload one short video or several frames, show sites, best frames, what is missing.
// Same origin only, no libraries; every name from the server is inserted as text, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function showError(text) {
    const box = $("message"), msg = $("message-text");
    if (box && msg) { msg.textContent = text; box.hidden = false; } else { window.alert(text); }
  }

  async function postReview(files, fps, require) {
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("fps", String(fps));
    if (require) form.append("require", require);
    return window.entrepApi("/api/review", { method: "POST", body: form });
  }

  function render(doc) {
    const panel = $("review");
    panel.hidden = false;
    const kept = `${doc.n_frames} frames, ${doc.n_kept} kept`;
    $("review-summary").textContent = `${kept}; exam ${doc.complete ? "complete" : "incomplete"}.`;
    $("review-missing").textContent = "Missing: " + (doc.missing.length ? doc.missing.join(", ") : "none") +
      ". Low confidence: " + (doc.low_confidence.length ? doc.low_confidence.join(", ") : "none") + ".";
    $("review-error").textContent = doc.decode_error || "";
    const drops = Object.entries(doc.dropped).filter(([, n]) => n > 0).map(([r, n]) => `${n} ${r.replace(/_/g, " ")}`);
    $("review-dropped").textContent = "Dropped: " + (drops.length ? drops.join(", ") : "none");
    const grid = $("review-sites");
    grid.replaceChildren();
    const order = doc.required.concat(Object.keys(doc.sites).filter((s) => !doc.required.includes(s)));
    for (const site of order) {
      const s = doc.sites[site];
      const card = el("div", "review-site" + (s ? (doc.low_confidence.includes(site) ? " weak" : "") : " missing"));
      card.appendChild(el("h3", null, site));
      if (!s) {
        card.appendChild(el("p", null, "missing"));
      } else {
        const uri = doc.best_frames && doc.best_frames[site];
        if (uri && uri.startsWith("data:image/jpeg;base64,")) {
          const img = el("img");
          img.alt = `best frame of ${site}`;
          img.src = uri;
          card.appendChild(img);
        }
        card.appendChild(el("p", null, `${s.best_frame} at ${s.time_s.toFixed(2)} s`));
        card.appendChild(el("p", "hint", `confidence ${s.confidence.toFixed(2)}, ${s.frames} frames`));
      }
      grid.appendChild(card);
    }
  }

  function start() {
    const input = $("review-input");
    if (!input) return;
    input.addEventListener("change", async () => {
      const files = Array.from(input.files || []);
      if (!files.length) return;
      const fps = parseFloat($("review-fps").value) || 2;
      const require = ($("review-require").value || "").trim();
      $("review-status").textContent = `reviewing ${files.length === 1 ? files[0].name : files.length + " frames"}…`;
      document.body.classList.add("busy");
      try {
        render(await postReview(files, fps, require));
        $("review-status").textContent = "";
      } catch (e) {
        $("review-status").textContent = "";
        showError(e.message);
      } finally {
        document.body.classList.remove("busy");
        input.value = "";
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
