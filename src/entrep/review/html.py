"""The review as one self-contained HTML page: timeline plot, best frames, drops by reason, missing sites.

Every image is a data URI and every name is escaped, so the page can be mailed
or archived alone.
"""

from __future__ import annotations

import base64
import io
import re
from html import escape
from typing import Mapping

import numpy as np

_REASON_COLOURS = {"dark": "#333333", "overexposed": "#e6c200", "out_of_field": "#7f7f7f",
                   "blurred": "#1f77b4", "duplicate": "#9467bd"}


def site_file_name(site: str) -> str:
    """A safe file name for a site's best frame."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", site).strip("._") or "site") + ".jpg"


def timeline_png(doc: Mapping) -> bytes:
    """Site against time: raw per-frame labels (dots), smoothed labels (line), dropped frames (ticks by reason)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    classes = list(doc["classes"])
    y = {c: i for i, c in enumerate(classes)}
    kept = [r for r in doc["frames"] if r["kept"]]
    fig = Figure(figsize=(10, 0.45 * len(classes) + 1.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if kept:
        t = np.array([r["time_s"] for r in kept])
        ax.scatter(t, [y.get(r["raw_label"], -1) for r in kept], s=10, c="#bbbbbb", label="per frame", zorder=2)
        ax.step(t, [y.get(r["label"], -1) for r in kept], where="post", c="#d62728", lw=1.5,
                label=f"smoothed ({doc['smoothing']})", zorder=3)
    for reason, colour in _REASON_COLOURS.items():
        ts = [r["time_s"] for r in doc["frames"] if r["reason"] == reason]
        if ts:
            ax.scatter(ts, [-1] * len(ts), marker="|", s=80, c=colour, label=f"dropped: {reason}")
    ax.set_yticks(range(-1, len(classes)), ["dropped"] + classes)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def render_review_html(doc: Mapping, thumbnails: Mapping[str, bytes]) -> str:
    """The page for one review document (see docs/review.md) and its best-frame JPEGs by site."""
    e = escape
    sites = doc["sites"]
    cards = []
    for site in doc["required"] + [s for s in sites if s not in doc["required"]]:
        s = sites.get(site)
        if s is None:
            cards.append(f'<div class="card missing"><h3>{e(site)}</h3><p>missing: not seen in any kept frame</p></div>')
            continue
        weak = " weak" if site in doc["low_confidence"] else ""
        img = (f'<img alt="{e(site)}" src="{_uri(thumbnails[site], "image/jpeg")}">' if site in thumbnails else "")
        segs = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in s["segments"])
        cards.append(f'<div class="card{weak}"><h3>{e(site)}</h3>{img}<p>{e(str(s["best_frame"]))} at '
                     f'{s["time_s"]:.2f} s, confidence {s["confidence"]:.2f}{" (low)" if weak else ""}</p>'
                     f'<p class="small">{s["frames"]} frames; seen {e(segs)}</p></div>')
    drops = "".join(f"<tr><td>{e(r)}</td><td>{n}</td></tr>" for r, n in doc["dropped"].items())
    missing = ", ".join(e(s) for s in doc["missing"]) or "none"
    weak = ", ".join(e(s) for s in doc["low_confidence"]) or "none"
    err = f'<p class="warn">{e(doc["decode_error"])}</p>' if doc.get("decode_error") else ""
    verdict = "complete" if doc["complete"] else "incomplete"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Exam review: {e(str(doc["exam"]))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 330px; }}
.card img {{ max-width: 320px; display: block; }}
.card.missing {{ border-color: #d62728; background: #fff0f0; }}
.card.weak {{ border-color: #e6a200; background: #fffbe8; }}
.small {{ font-size: 0.85em; color: #555; }} .warn {{ color: #b00; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
</style></head><body>
<h1>Exam review: {e(str(doc["exam"]))}</h1>
<p>{doc["n_frames"]} frames, {doc["n_kept"]} kept; exam {verdict}. Missing: {missing}. Low confidence: {weak}.</p>
{err}
<h2>Timeline</h2>
<img alt="timeline" src="{_uri(timeline_png(doc), "image/png")}">
<h2>Best frame per site</h2>
<div class="cards">{"".join(cards)}</div>
<h2>Dropped frames by reason</h2>
<table><tr><th>reason</th><th>frames</th></tr>{drops}</table>
</body></html>
"""
