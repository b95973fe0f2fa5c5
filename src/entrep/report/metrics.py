"""Classification metrics in the one schema every report, table and JSON uses.

A summary is a plain, JSON-serialisable dict (Python floats and ints only)::

    {"accuracy", "macro_f1", "weighted_f1",
     "per_class": {label: {"precision", "recall", "f1", "support"}},
     "macro_avg": {...}, "weighted_avg": {...},
     "confusion": {"labels": [...], "matrix": [[...]]}, "n"}

The numbers are scikit-learn's (``zero_division=0``). Every label in
``labels`` appears, also with zero support; like scikit-learn's
``classification_report(labels=...)`` such a label counts in the macro
average with zeros, so a class absent from a test split lowers macro F1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from entrep.errors import UserError
from entrep.taxonomy import Taxonomy


def classification_summary(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, per-class and averaged precision/recall/F1, and the confusion matrix.

    ``labels`` fixes the row order of the per-class table and the confusion
    matrix. Every true and predicted label must be one of ``labels``.
    """
    y_true = [str(y) for y in y_true]
    y_pred = [str(y) for y in y_pred]
    labels = [str(c) for c in labels]
    if len(y_true) != len(y_pred):
        raise UserError(f"cannot score {len(y_pred)} predictions against {len(y_true)} true labels; lengths must match")
    if not y_true:
        raise UserError("no predictions to score: the evaluated data set is empty")
    if not labels:
        raise UserError("no labels given to score predictions against")
    if len(set(labels)) != len(labels):
        raise UserError(f"duplicate labels in {labels}")
    known = set(labels)
    for what, ys in (("true", y_true), ("predicted", y_pred)):
        unknown = sorted(set(ys) - known)
        if unknown:
            raise UserError(f"{what} labels {unknown} are not among the scored labels {labels}")

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per_class = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(labels)
    }
    n = len(y_true)
    averages = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(s.sum())}
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion": {"labels": list(labels), "matrix": [[int(v) for v in row] for row in cm]},
        "n": int(n),
    }


def coarse_of(labels: Sequence[str], taxonomy: Taxonomy) -> list[str]:
    """Map fine class names to their coarse group names (``Taxonomy.group_of``)."""
    return [taxonomy.group_of(str(c)) for c in labels]


def fine_and_coarse_summary(y_true: Sequence[str], y_pred: Sequence[str], taxonomy: Taxonomy) -> dict:
    """``{"fine": summary}`` plus ``"coarse"`` where the taxonomy has real groups.

    The coarse summary scores the group of each prediction against the group
    of each true label, so a left/right confusion inside one group is right
    at the coarse level (the paper's Tables 5 and 7).
    """
    out = {"fine": classification_summary(y_true, y_pred, taxonomy.classes)}
    if taxonomy.hierarchical:
        out["coarse"] = classification_summary(
            coarse_of(y_true, taxonomy), coarse_of(y_pred, taxonomy), taxonomy.group_names
        )
    return out


def confusion_from_summary(summary: Mapping) -> tuple[np.ndarray, list[str]] | None:
    """The (matrix, labels) stored in a summary, or None when it has none."""
    conf = summary.get("confusion") if isinstance(summary, Mapping) else None
    if not isinstance(conf, Mapping):
        return None
    labels = [str(c) for c in conf.get("labels") or []]
    matrix = np.asarray(conf.get("matrix") or [], dtype=np.int64)
    if not labels or matrix.shape != (len(labels), len(labels)):
        return None
    return matrix, labels
