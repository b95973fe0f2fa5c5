"""Evaluation tables in the paper's layout (Tables 4-10), as data and as Markdown.

Each builder takes (part of) the ``evaluate --json`` dict and returns a
:class:`Table`, or ``None`` when the part it shows is absent: a flat taxonomy
has no coarse level, a data set without pairs no pair retrieval, a model
without an index no retrieval at all. Builders never raise on a missing
optional part. :func:`report_markdown` strings them into the whole report.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

DASH = "–"
SYSTEM_NAMES = {"prototype": "Prototype", "baseline": "Baseline head", "hybrid": "Hybrid model"}
SYSTEM_ORDER = ("prototype", "baseline", "hybrid")
LEVEL_NAMES = {"fine": "fine-grained labels", "coarse": "coarse labels"}
TASK_NAMES = {"i2i": "Image-to-Image", "t2i": "Text-to-Image"}
RELEVANCE_NAMES = {"class": "class", "pair": "pair"}


@dataclass(frozen=True)
class Table:
    """A captioned table. ``n_summary`` trailing rows are averages (styled apart)."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[str, ...]  # "l" or "r" per column
    n_summary: int = 0

    def markdown(self) -> str:
        rule = {"l": ":---", "r": "---:"}
        lines = [self.caption, ""] if self.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in self.header) + " |")
        lines.append("| " + " | ".join(rule[a] for a in self.align) + " |")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


# ---- number formatting -------------------------------------------------------
def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def fmt4(v: Any) -> str:
    """0.57557 -> '0.5756'; missing -> '–'."""
    x = _num(v)
    return DASH if x is None else f"{x:.4f}"


def fmt_pct(v: Any) -> str:
    """0.55914 -> '55.91%'; missing -> '–'."""
    x = _num(v)
    return DASH if x is None else f"{100 * x:.2f}%"


def fmt_int(v: Any) -> str:
    x = _num(v)
    return DASH if x is None else str(int(round(x)))


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def system_label(name: str) -> str:
    return SYSTEM_NAMES.get(name, name)


def ordered_systems(systems: Mapping | None) -> list[str]:
    """Known systems in paper order (prototype, baseline, hybrid), then any others."""
    if not isinstance(systems, Mapping):
        return []
    names = [s for s in SYSTEM_ORDER if isinstance(systems.get(s), Mapping)]
    return names + [s for s in systems if s not in SYSTEM_ORDER and isinstance(systems[s], Mapping)]


# ---- builders ----------------------------------------------------------------------
def classification_table(summary: Mapping | None, caption: str = "Classification report") -> Table | None:
    """Class | Precision | Recall | F1-score | Support, then Macro Avg and Weighted Avg.

    ``caption`` gets the accuracy appended the paper's way:
    ``"<caption> (accuracy: 55.91%)."``.
    """
    per_class = _get(summary, "per_class")
    if not isinstance(per_class, Mapping) or not per_class:
        return None
    rows = [
        (str(c), fmt4(m.get("precision")), fmt4(m.get("recall")), fmt4(m.get("f1")), fmt_int(m.get("support")))
        for c, m in per_class.items()
        if isinstance(m, Mapping)
    ]
    n_summary = 0
    for key, name in (("macro_avg", "Macro Avg"), ("weighted_avg", "Weighted Avg")):
        avg = summary.get(key)
        if not isinstance(avg, Mapping):
            continue
        support = avg.get("support", summary.get("n"))
        rows.append((name, fmt4(avg.get("precision")), fmt4(avg.get("recall")), fmt4(avg.get("f1")), fmt_int(support)))
        n_summary += 1
    acc = summary.get("accuracy")
    full = caption.rstrip(". ")
    if _num(acc) is not None:
        full += f" (accuracy: {fmt_pct(acc)})"
    return Table(
        caption=full + ".",
        header=("Class", "Precision", "Recall", "F1-score", "Support"),
        rows=tuple(rows),
        align=("l", "r", "r", "r", "r"),
        n_summary=n_summary,
    )


def comparison_table(evaluation: Mapping, level: str = "fine") -> Table | None:
    """Model | Accuracy | Macro F1 | Weighted F1, one row per system (Table 9)."""
    systems = _get(evaluation, "classification", "systems")
    rows = []
    for name in ordered_systems(systems):
        s = systems[name].get(level)
        if not isinstance(s, Mapping) or _num(s.get("accuracy")) is None:
            continue
        rows.append((system_label(name), fmt_pct(s.get("accuracy")), fmt4(s.get("macro_f1")), fmt4(s.get("weighted_f1"))))
    if not rows:
        return None
    return Table(
        caption=f"Comparison of the classifiers on {LEVEL_NAMES.get(level, level)}.",
        header=("Model", "Accuracy", "Macro F1", "Weighted F1"),
        rows=tuple(rows),
        align=("l", "r", "r", "r"),
    )


def _recall_ks(entries: Iterable[Mapping]) -> list[int]:
    ks = set()
    for m in entries:
        for key in m:
            hit = re.fullmatch(r"recall@(\d+)", str(key))
            if hit and _num(m[key]) is not None:
                ks.add(int(hit.group(1)))
    return sorted(ks)


def retrieval_table(evaluation: Mapping) -> Table | None:
    """Task | Relevance | Recall@k ... | MRR | Queries (Table 10, extended).

    Rows for image-to-image and text-to-image search under "class" relevance
    (any result of the query's class counts) and "pair" relevance (only the
    known matching image counts), each where present.
    """
    retrieval = _get(evaluation, "retrieval")
    if not isinstance(retrieval, Mapping):
        return None
    found: list[tuple[str, str, Mapping]] = []
    tasks = [t for t in TASK_NAMES if t in retrieval] + [t for t in retrieval if t not in TASK_NAMES]
    for task in tasks:
        by_rel = retrieval.get(task)
        if not isinstance(by_rel, Mapping):
            continue
        rels = [r for r in RELEVANCE_NAMES if r in by_rel] + [r for r in by_rel if r not in RELEVANCE_NAMES]
        for rel in rels:
            m = by_rel.get(rel)
            if isinstance(m, Mapping) and any(_num(v) is not None for v in m.values()):
                found.append((task, rel, m))
    if not found:
        return None
    ks = _recall_ks(m for _, _, m in found)
    rows = []
    for task, rel, m in found:
        rows.append(
            (TASK_NAMES.get(task, task), RELEVANCE_NAMES.get(rel, rel))
            + tuple(fmt4(m.get(f"recall@{k}")) for k in ks)
            + (fmt4(m.get("mrr")), fmt_int(m.get("n_queries")))
        )
    return Table(
        caption="Retrieval performance (class: any image of the query's class is relevant; "
        "pair: only the query's known matching image is).",
        header=("Task", "Relevance") + tuple(f"Recall@{k}" for k in ks) + ("MRR", "Queries"),
        rows=tuple(rows),
        align=("l", "l") + ("r",) * (len(ks) + 2),
    )


def threshold_table(evaluation: Mapping) -> Table | None:
    """Hybrid results at each confidence threshold tried, marking the one used."""
    hybrid = _get(evaluation, "hybrid")
    at = _get(hybrid, "results_at_thresholds")
    if not isinstance(at, Mapping) or not at:
        return None
    used, tuned = _num(hybrid.get("threshold")), _num(hybrid.get("tuned_threshold"))

    def key(t: str) -> float:
        x = _safe_float(t)
        return -x if x is not None else math.inf

    has_coarse = any(isinstance(_get(v, "coarse"), Mapping) for v in at.values())
    has_deferred = any(_num(_get(v, "deferred_fraction")) is not None for v in at.values())
    rows = []
    for t in sorted(at, key=key):
        res = at[t]
        if not isinstance(res, Mapping):
            continue
        x = _safe_float(t)
        notes = []
        if x is not None and used is not None and math.isclose(x, used, abs_tol=1e-9):
            notes.append("used")
        if x is not None and tuned is not None and math.isclose(x, tuned, abs_tol=1e-9):
            notes.append("tuned")
        row = (str(t), fmt_pct(_get(res, "fine", "accuracy")), fmt4(_get(res, "fine", "macro_f1")))
        if has_coarse:
            row += (fmt_pct(_get(res, "coarse", "accuracy")), fmt4(_get(res, "coarse", "macro_f1")))
        if has_deferred:
            row += (fmt_pct(res.get("deferred_fraction")),)
        rows.append(row + (", ".join(notes),))
    if not rows:
        return None
    header = ("Threshold", "Fine accuracy", "Fine macro F1")
    if has_coarse:
        header += ("Coarse accuracy", "Coarse macro F1")
    if has_deferred:
        header += ("Deferred to head",)
    header += ("Note",)
    return Table(
        caption="Hybrid classifier at each prototype-confidence threshold "
        "(below the threshold an image is deferred to the head).",
        header=header,
        rows=tuple(rows),
        align=("l",) + ("r",) * (len(header) - 2) + ("l",),
    )


def class_counts_table(evaluation: Mapping) -> Table | None:
    """Class | Images, from ``data.class_counts``."""
    counts = _get(evaluation, "data", "class_counts")
    if not isinstance(counts, Mapping) or not counts:
        return None
    rows = [(str(c), fmt_int(n)) for c, n in counts.items()]
    total = sum(int(n) for n in counts.values() if _num(n) is not None)
    rows.append(("Total", str(total)))
    return Table(
        caption="Images per class in the evaluated data.",
        header=("Class", "Images"),
        rows=tuple(rows),
        align=("l", "r"),
        n_summary=1,
    )


def _safe_float(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def hybrid_notes(evaluation: Mapping) -> list[str]:
    """One-line facts about the hybrid rule: threshold used, tuned, deferral, flip TTA."""
    h = _get(evaluation, "hybrid")
    if not isinstance(h, Mapping):
        return []
    out = []
    if _num(h.get("threshold")) is not None:
        out.append(f"Prototype-confidence threshold used: {h['threshold']:g}.")
    if _num(h.get("tuned_threshold")) is not None:
        out.append(f"Threshold tuned on held-out data: {h['tuned_threshold']:g}.")
    if _num(h.get("deferred_fraction")) is not None:
        out.append(f"Images deferred from the prototypes to the head: {fmt_pct(h['deferred_fraction'])}.")
    if isinstance(h.get("flip_tta"), bool):
        out.append(
            "Flip test-time augmentation (mirror-aware: a flipped view's left/right scores are swapped back): "
            + ("on." if h["flip_tta"] else "off.")
        )
    return out


# ---- the classification section -------------------------------------------------
def summaries(evaluation: Mapping) -> list[tuple[str, str, str, Mapping]]:
    """(key, model name, level, summary) for every classification summary, paper order.

    Systems come from ``classification.systems`` (key ``"<system>-<level>"``);
    the headline ``classification.fine/coarse`` is added as "Final model"
    (key ``"final-<level>"``) only when it is not one of the systems' results.
    """
    cls = _get(evaluation, "classification")
    if not isinstance(cls, Mapping):
        return []
    out: list[tuple[str, str, str, Mapping]] = []
    systems = cls.get("systems")
    for name in ordered_systems(systems):
        for level in ("fine", "coarse"):
            s = systems[name].get(level)
            if isinstance(s, Mapping) and isinstance(s.get("per_class"), Mapping):
                out.append((f"{name}-{level}", system_label(name), level, s))
    shown = [s for *_, s in out]
    for level in ("fine", "coarse"):
        s = cls.get(level)
        if isinstance(s, Mapping) and isinstance(s.get("per_class"), Mapping) and not any(s == o for o in shown):
            out.append((f"final-{level}", "Final model", level, s))
    return out


def classification_tables(evaluation: Mapping) -> list[tuple[str, Table]]:
    """(summary key, per-class table) for every summary of :func:`summaries`."""
    out = []
    for key, model, level, s in summaries(evaluation):
        t = classification_table(s, f"{model} classification report over {LEVEL_NAMES[level]}")
        if t is not None:
            out.append((key, t))
    return out


def header_facts(evaluation: Mapping, *, hide_names: bool = True) -> list[tuple[str, str]]:
    """(field, value) lines describing the model and the data, for the report header.

    With ``hide_names`` a path is shown by its last component only, so a
    report passed around does not reveal folder layouts.
    """
    facts: list[tuple[str, str]] = []
    model = _get(evaluation, "model")
    if isinstance(model, Mapping):
        for key, label in (("profile", "Profile"), ("encoders", "Encoders"), ("taxonomy", "Taxonomy"), ("trained_on", "Trained on")):
            if model.get(key) not in (None, "", [], {}):
                facts.append((label, describe(model[key], hide_names=hide_names)))
    data = _get(evaluation, "data")
    if isinstance(data, Mapping) and data.get("source") not in (None, ""):
        facts.append(("Evaluated on", describe(data["source"], hide_names=hide_names)))
    n = _get(evaluation, "n_images")
    if _num(n) is None:
        n = _get(data, "n_images")
    if _num(n) is not None:
        facts.append(("Images", fmt_int(n)))
    return facts


def describe(value: Any, *, hide_names: bool = True) -> str:
    """A short human description of a scalar, list or mapping (e.g. encoder names)."""
    if isinstance(value, Mapping):
        if "classes" in value and isinstance(value.get("classes"), (list, tuple)):  # a taxonomy dict
            name = value.get("name", "custom")
            n_groups = len(set((value.get("groups") or {}).values()))
            return f"{name} ({len(value['classes'])} classes" + (f", {n_groups} groups)" if n_groups else ")")
        return ", ".join(f"{k}: {describe(v, hide_names=hide_names)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(describe(v, hide_names=hide_names) for v in value)
    s = str(value)
    if hide_names and ("/" in s or "\\" in s) and not s.startswith(("hf-hub:", "http:", "https:")):
        s = re.split(r"[\\/]+", s.rstrip("/\\"))[-1] or s
    return s


# ---- whole report ---------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One piece of the report, in order: a heading, facts, notes, a table or a figure.

    ``kind`` is "h2", "facts" (list of (field, value)), "notes" (list of str),
    "table" (:class:`Table`, numbered), "figure" (figure key + numbered caption)
    or "text". Markdown and HTML render the same blocks, so both number alike.
    """

    kind: str
    value: Any
    caption: str = ""


def report_blocks(
    evaluation: Mapping,
    *,
    figures: Mapping[str, str] | None = None,
    hide_names: bool = True,
) -> list[Block]:
    """The report's layout: comparison first, then hybrid rule, per-system tables
    (each followed by its confusion matrix), embeddings, retrieval, data.

    ``figures`` maps a figure key (``"comparison"``, ``"confusion:<summary key>"``
    with keys as in :func:`summaries`, ``"tsne:<name>"``) to its caption; only
    figures named there appear.
    """
    figures = dict(figures or {})
    blocks: list[Block] = []
    n_table = n_figure = 0

    def table(t: Table) -> None:
        nonlocal n_table
        n_table += 1
        blocks.append(Block("table", Table(f"Table {n_table}: {t.caption}", t.header, t.rows, t.align, t.n_summary)))

    def figure(key: str) -> None:
        nonlocal n_figure
        n_figure += 1
        blocks.append(Block("figure", key, f"Figure {n_figure}: {figures[key]}"))

    facts = header_facts(evaluation, hide_names=hide_names)
    if facts:
        blocks.append(Block("facts", facts))
    n_header = len(blocks)

    comp = [t for t in (comparison_table(evaluation, "fine"), comparison_table(evaluation, "coarse")) if t]
    if comp or "comparison" in figures:
        blocks.append(Block("h2", "Comparison"))
        for t in comp:
            table(t)
        if "comparison" in figures:
            figure("comparison")

    notes, thr = hybrid_notes(evaluation), threshold_table(evaluation)
    if notes or thr:
        blocks.append(Block("h2", "Hybrid rule"))
        if notes:
            blocks.append(Block("notes", notes))
        if thr:
            table(thr)

    tables = classification_tables(evaluation)
    if tables:
        blocks.append(Block("h2", "Classification reports"))
        for key, t in tables:
            table(t)
            if f"confusion:{key}" in figures:
                figure(f"confusion:{key}")
    shown = {f"confusion:{k}" for k, _ in tables}
    extra = [k for k in figures if k.startswith("confusion:") and k not in shown]
    if extra:
        blocks.append(Block("h2", "Confusion matrices"))
        for k in extra:
            figure(k)

    tsne = [k for k in figures if k.startswith("tsne:")]
    if tsne:
        blocks.append(Block("h2", "Embeddings"))
        for k in tsne:
            figure(k)

    ret = retrieval_table(evaluation)
    if ret:
        blocks.append(Block("h2", "Retrieval"))
        table(ret)

    counts = class_counts_table(evaluation)
    if counts:
        blocks.append(Block("h2", "Data"))
        table(counts)
    if len(blocks) == n_header:
        blocks.append(Block("text", "The evaluation holds no classification or retrieval results."))
    return blocks


def report_markdown(
    evaluation: Mapping,
    *,
    title: str = "entrep evaluation report",
    figures: Mapping[str, tuple[str, str]] | None = None,
    hide_names: bool = True,
) -> str:
    """The whole report as Markdown; ``figures`` maps key -> (relative path, caption)."""
    figures = dict(figures or {})
    blocks = report_blocks(evaluation, figures={k: c for k, (_, c) in figures.items()}, hide_names=hide_names)
    parts = [f"# {_md_cell(title)}\n"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"## {b.value}\n")
        elif b.kind == "facts":
            parts.append("\n".join(f"- **{k}:** {_md_cell(v)}" for k, v in b.value) + "\n")
        elif b.kind == "notes":
            parts.append("\n".join(f"- {n}" for n in b.value) + "\n")
        elif b.kind == "table":
            parts.append(b.value.markdown())
        elif b.kind == "figure":
            path = figures[b.value][0]
            parts.append(f"![{_md_alt(b.caption)}]({path})\n\n*{b.caption}*\n")
        else:
            parts.append(f"_{b.value}_\n")
    return "\n".join(parts)


def _md_alt(s: str) -> str:
    return s.replace("[", "(").replace("]", ")")
