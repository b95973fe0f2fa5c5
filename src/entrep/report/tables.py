"""Evaluation tables in the paper's layout (Tables 4-10), as data and as Markdown.

Each builder takes (part of) the ``evaluate --json`` dict and returns a
:class:`Table`, or ``None`` when the part it shows is absent: a flat taxonomy
has no coarse level, a data set without pairs no pair retrieval, a model
without an index no retrieval at all. Builders never raise on a missing
optional part. :mod:`entrep.report.document` strings them into the whole report.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

DASH = "–"
SYSTEM_NAMES = {"prototype": "Prototype", "baseline": "Baseline head", "hybrid": "Hybrid model",
                "policy": "Chosen policy"}
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
        lines.append("| " + " | ".join(md_cell(h) for h in self.header) + " |")
        lines.append("| " + " | ".join(rule[a] for a in self.align) + " |")
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


# ---- number formatting -------------------------------------------------------
def as_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def fmt4(v: Any) -> str:
    """0.57557 -> '0.5756'; missing -> '–'."""
    x = as_number(v)
    return DASH if x is None else f"{x:.4f}"


def fmt_pct(v: Any) -> str:
    """0.55914 -> '55.91%'; missing -> '–'."""
    x = as_number(v)
    return DASH if x is None else f"{100 * x:.2f}%"


def fmt_int(v: Any) -> str:
    x = as_number(v)
    return DASH if x is None else str(int(round(x)))


def get_path(d: Any, *keys: str) -> Any:
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
    per_class = get_path(summary, "per_class")
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
    if as_number(acc) is not None:
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
    systems = get_path(evaluation, "classification", "systems")
    rows = []
    for name in ordered_systems(systems):
        s = systems[name].get(level)
        if not isinstance(s, Mapping) or as_number(s.get("accuracy")) is None:
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
            if hit and as_number(m[key]) is not None:
                ks.add(int(hit.group(1)))
    return sorted(ks)


def retrieval_table(evaluation: Mapping) -> Table | None:
    """Task | Relevance | Recall@k ... | MRR | Queries (Table 10, extended).

    Rows for image-to-image and text-to-image search under "class" relevance
    (any result of the query's class counts) and "pair" relevance (only the
    known matching image counts), each where present.
    """
    retrieval = get_path(evaluation, "retrieval")
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
            if isinstance(m, Mapping) and any(as_number(v) is not None for v in m.values()):
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
    hybrid = get_path(evaluation, "hybrid")
    at = get_path(hybrid, "results_at_thresholds")
    if not isinstance(at, Mapping) or not at:
        return None
    used, tuned = as_number(hybrid.get("threshold")), as_number(hybrid.get("tuned_threshold"))

    def key(t: str) -> float:
        x = _safe_float(t)
        return -x if x is not None else math.inf

    has_coarse = any(isinstance(get_path(v, "coarse"), Mapping) for v in at.values())
    has_deferred = any(as_number(get_path(v, "deferred_fraction")) is not None for v in at.values())
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
        row = (str(t), fmt_pct(get_path(res, "fine", "accuracy")), fmt4(get_path(res, "fine", "macro_f1")))
        if has_coarse:
            row += (fmt_pct(get_path(res, "coarse", "accuracy")), fmt4(get_path(res, "coarse", "macro_f1")))
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
    counts = get_path(evaluation, "data", "class_counts")
    if not isinstance(counts, Mapping) or not counts:
        return None
    rows = [(str(c), fmt_int(n)) for c, n in counts.items()]
    total = sum(int(n) for n in counts.values() if as_number(n) is not None)
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
    h = get_path(evaluation, "hybrid")
    if not isinstance(h, Mapping):
        return []
    out = []
    if as_number(h.get("threshold")) is not None:
        out.append(f"Prototype-confidence threshold used: {h['threshold']:g}.")
    if as_number(h.get("tuned_threshold")) is not None:
        out.append(f"Threshold tuned on held-out data: {h['tuned_threshold']:g}.")
    if as_number(h.get("deferred_fraction")) is not None:
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
    cls = get_path(evaluation, "classification")
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
