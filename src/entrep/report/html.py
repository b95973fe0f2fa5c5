"""Write the evaluation report: Markdown, a self-contained HTML page, PNG figures, JSON.

The HTML page inlines its CSS and every figure (base64 PNG data URIs), so it
opens from disk on an air-gapped machine and can be mailed as one file. The
report shows aggregates only; with ``hide_names`` (the default) paths are cut
to their last component and image file names are scrubbed from the JSON copy,
since ENT image names may encode patient ids.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from entrep.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from entrep.errors import UserError
from entrep.report import plots
from entrep.report.metrics import confusion_from_summary
from entrep.report.document import Block, report_blocks, report_markdown
from entrep.report.tables import (
    LEVEL_NAMES,
    Table,
    ordered_systems,
    summaries,
    system_label,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
HIDDEN = "[hidden]"


def write_report(
    out_dir: str | Path,
    evaluation: Mapping,
    *,
    confusions: Mapping[str, tuple[Sequence[str], Sequence[str], Sequence[str]]] | None = None,
    embeddings: Mapping[str, tuple[np.ndarray, Sequence[str], Sequence[str] | None]] | None = None,
    title: str = "entrep evaluation report",
    hide_names: bool = True,
    seed: int = 0,
    tsne_max_points: int = plots.TSNE_MAX_POINTS,
) -> dict:
    """Write ``report.md``, ``report.html``, ``figures/*.png`` and ``evaluation.json``.

    ``evaluation`` is the ``evaluate --json`` dict; every part of it is
    optional. Confusion matrices are drawn from the summaries' stored
    matrices; ``confusions`` (name -> (y_true, y_pred, labels)) adds more, or
    replaces one when its name is a summary key such as ``"hybrid-fine"``.
    ``embeddings`` (name -> (X, fine labels, coarse labels or None)) get a
    t-SNE figure each. Returns ``{"markdown", "html", "json": Path,
    "figures": {figure key: Path}}``. Every file is written atomically.
    """
    if not isinstance(evaluation, Mapping):
        raise UserError(f"the evaluation to report must be a mapping (the evaluate --json dict), got {type(evaluation).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: report folder path is an existing file; give a folder")
    evaluation = _jsonable(evaluation)
    if hide_names:
        evaluation = scrub_names(evaluation)

    pngs: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    files: dict[str, str] = {}

    def add(key: str, stem: str, png: bytes, caption: str) -> None:
        name = _unique(_slug(stem), files.values())
        pngs[key], captions[key], files[key] = png, caption, f"figures/{name}.png"

    rows = _comparison_rows(evaluation)
    if len(rows) >= 2:
        add("comparison", "comparison", plots.comparison_png(rows), "Accuracy, macro F1 and weighted F1 of each classifier on fine-grained labels.")

    supplied = dict(confusions or {})
    for key, model, level, summary in summaries(evaluation):
        stored = confusion_from_summary(summary)
        if key in supplied:
            y_true, y_pred, labels = supplied.pop(key)
            png = plots.confusion_png_from_predictions(y_true, y_pred, labels)
        elif stored is not None:
            png = plots.confusion_png(*stored)
        else:
            continue
        add(f"confusion:{key}", f"confusion-{key}", png, f"Confusion matrix, {model} on {LEVEL_NAMES[level]} (colour: row-normalised).")
    for name, (y_true, y_pred, labels) in supplied.items():
        add(f"confusion:{name}", f"confusion-{name}", plots.confusion_png_from_predictions(y_true, y_pred, labels),
            f"Confusion matrix, {name} (colour: row-normalised).")

    for name, item in (embeddings or {}).items():
        X, fine, *rest = item  # (X, fine) or (X, fine, coarse)
        coarse = rest[0] if rest else None
        n = len(fine)
        if n < plots.TSNE_MIN_POINTS:
            log.warning("t-SNE of %s skipped: %d embeddings, at least %d needed", name, n, plots.TSNE_MIN_POINTS)
            continue
        proj = plots.tsne_project(np.asarray(X), seed=seed, max_points=tsne_max_points)
        png = plots.tsne_png(X, fine, coarse, fine_order=_class_order(evaluation), seed=seed, projection=proj)
        caption = f"t-SNE of the {name} embeddings, coloured by " + (
            "coarse group (left) and fine label (right)." if coarse is not None else "label."
        )
        if proj.subsampled:
            caption += f" A seeded random subsample of {len(proj.index)} of {proj.n_total} images is shown."
        add(f"tsne:{name}", f"tsne-{name}", png, caption)

    written_figures = {}
    for key, rel in files.items():
        written_figures[key] = write_bytes_atomic(out / rel, pngs[key])
    json_path = write_json_atomic(out / "evaluation.json", evaluation)
    md = report_markdown(evaluation, title=title, figures={k: (files[k], captions[k]) for k in files}, hide_names=hide_names)
    md_path = write_text_atomic(out / "report.md", md)
    page = render_html(evaluation, title=title, pngs=pngs, captions=captions, hide_names=hide_names)
    html_path = write_text_atomic(out / "report.html", page)
    log.info("wrote report to %s (%d figures)", out, len(written_figures))
    return {"markdown": md_path, "html": html_path, "json": json_path, "figures": written_figures}


def render_html(
    evaluation: Mapping,
    *,
    title: str = "entrep evaluation report",
    pngs: Mapping[str, bytes] | None = None,
    captions: Mapping[str, str] | None = None,
    hide_names: bool = True,
) -> str:
    """The report as one self-contained HTML page (inline CSS, base64 PNGs)."""
    pngs, captions = dict(pngs or {}), dict(captions or {})
    blocks = report_blocks(evaluation, figures={k: captions.get(k, k) for k in pngs}, hide_names=hide_names)
    from entrep import __version__

    esc = html.escape
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_css()}</style></head><body>",
        '<header><div class="wrap">',
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">Generated {esc(stamp)} by entrep {esc(__version__)}</p>',
    ]
    body: list[str] = []
    nav: list[str] = []
    open_section = False
    i = 0
    while i < len(blocks):
        b = blocks[i]
        if b.kind == "facts":
            head.append('<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in b.value) + "</dl>")
        elif b.kind == "h2":
            sid = _slug(b.value)
            nav.append(f'<a href="#{sid}">{esc(b.value)}</a>')
            body.append(("</section>" if open_section else "") + f'<section id="{sid}"><h2>{esc(b.value)}</h2>')
            open_section = True
        elif b.kind == "notes":
            body.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in b.value) + "</ul>")
        elif b.kind == "table":
            run = [b]  # consecutive tables; a figure right after them sits beside them
            while i + 1 < len(blocks) and blocks[i + 1].kind == "table":
                i += 1
                run.append(blocks[i])
            tables = "".join(f'<div class="block">{_table_html(t.value)}</div>' for t in run)
            if i + 1 < len(blocks) and blocks[i + 1].kind == "figure":
                i += 1
                body.append(f'<div class="pair"><div class="tables">{tables}</div>{_figure_html(blocks[i], pngs)}</div>')
            else:
                body.append(tables)
        elif b.kind == "figure":
            body.append(_figure_html(b, pngs))
        else:
            body.append(f'<p class="empty">{esc(str(b.value))}</p>')
        i += 1
    if open_section:
        body.append("</section>")
    if nav:
        head.append("<nav>" + "".join(nav) + "</nav>")
    head.append("</div></header><main>")
    tail = [
        "</main><footer>Aggregate results only: no image names or images of patients are included. "
        "Self-contained page; figures are embedded.</footer>",
        "</body></html>",
    ]
    return "\n".join(head + body + tail) + "\n"


def _table_html(t: Table) -> str:
    esc = html.escape
    cls = ["num" if a == "r" else "" for a in t.align]
    th = "".join(f'<th class="{c}">{esc(h)}</th>' if c else f"<th>{esc(h)}</th>" for h, c in zip(t.header, cls))
    body = []
    first_avg = len(t.rows) - t.n_summary
    for r, row in enumerate(t.rows):
        klass = ""
        if r >= first_avg:
            klass = ' class="avg first"' if r == first_avg else ' class="avg"'
        tds = "".join(f'<td class="{c}">{esc(v)}</td>' if c else f"<td>{esc(v)}</td>" for v, c in zip(row, cls))
        body.append(f"<tr{klass}>{tds}</tr>")
    return (
        f'<div class="scroll"><table><caption>{esc(t.caption)}</caption>'
        f"<thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure_html(b: Block, pngs: Mapping[str, bytes]) -> str:
    data = base64.b64encode(pngs[b.value]).decode("ascii")
    cap = html.escape(b.caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _css() -> str:
    return resources.files("entrep.report").joinpath("report.css").read_text(encoding="utf-8")


def _comparison_rows(evaluation: Mapping) -> list[tuple[str, float, float, float]]:
    """(model, accuracy, macro F1, weighted F1) on fine labels for each system with all three."""
    systems = (evaluation.get("classification") or {}).get("systems") if isinstance(evaluation.get("classification"), Mapping) else None
    out = []
    for name in ordered_systems(systems):
        s = systems[name].get("fine")
        vals = [s.get(k) for k in ("accuracy", "macro_f1", "weighted_f1")] if isinstance(s, Mapping) else []
        if len(vals) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out.append((system_label(name), *(float(v) for v in vals)))
    return out


def _class_order(evaluation: Mapping) -> list[str]:
    """Fine classes in taxonomy order, as the first fine summary lists them."""
    for _, _, level, summary in summaries(evaluation):
        if level == "fine":
            return [str(c) for c in summary["per_class"]]
    return []


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-") or "x"


def _unique(name: str, taken) -> str:
    taken = {Path(t).stem for t in taken}
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


# ---- JSON hygiene ---------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, paths to strings."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _looks_like_image(s: str) -> bool:
    return s.lower().endswith(IMAGE_SUFFIXES)


def scrub_names(obj: Any) -> Any:
    """Remove image file names and directory paths from a JSON-like object.

    A string naming an image becomes ``"[hidden]"``; any other path keeps its
    last component; an entry keyed by an image name is dropped. Aggregates are
    untouched. Used on what the report writes, since image names may carry
    patient ids.
    """
    dropped = 0

    def walk(o: Any) -> Any:
        nonlocal dropped
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                if _looks_like_image(k):
                    dropped += 1
                    continue
                out[k] = walk(v)
            return out
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, str):
            if _looks_like_image(o):
                return HIDDEN
            if ("/" in o or "\\" in o) and not o.startswith(("hf-hub:", "http:", "https:")):
                return re.split(r"[\\/]+", o.rstrip("/\\"))[-1] or o
        return o

    out = walk(obj)
    if dropped:
        log.warning("report: left out %d entries keyed by image file names (hide_names=True)", dropped)
    return out
