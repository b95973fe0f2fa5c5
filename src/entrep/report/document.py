"""The whole evaluation report as a sequence of blocks (headings, facts, tables, figures) and as Markdown."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from entrep.report.tables import (
    Table,
    as_number,
    class_counts_table,
    classification_tables,
    comparison_table,
    fmt_int,
    get_path,
    hybrid_notes,
    md_cell,
    retrieval_table,
    threshold_table,
)

def header_facts(evaluation: Mapping, *, hide_names: bool = True) -> list[tuple[str, str]]:
    """(field, value) lines describing the model and the data, for the report header.

    With ``hide_names`` a path is shown by its last component only, so a
    report passed around does not reveal folder layouts.
    """
    facts: list[tuple[str, str]] = []
    model = get_path(evaluation, "model")
    if isinstance(model, Mapping):
        for key, label in (("profile", "Profile"), ("encoders", "Encoders"), ("taxonomy", "Taxonomy"), ("trained_on", "Trained on")):
            if model.get(key) not in (None, "", [], {}):
                facts.append((label, describe(model[key], hide_names=hide_names)))
    data = get_path(evaluation, "data")
    if isinstance(data, Mapping) and data.get("source") not in (None, ""):
        facts.append(("Evaluated on", describe(data["source"], hide_names=hide_names)))
    n = get_path(evaluation, "n_images")
    if as_number(n) is None:
        n = get_path(data, "n_images")
    if as_number(n) is not None:
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
    parts = [f"# {md_cell(title)}\n"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"## {b.value}\n")
        elif b.kind == "facts":
            parts.append("\n".join(f"- **{k}:** {md_cell(v)}" for k, v in b.value) + "\n")
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
