"""Report figures as PNG bytes: confusion matrices, t-SNE of embeddings, comparison bars.

Figures are drawn on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot, no
display, no global state), so they work on headless machines and in threads.
Returning bytes lets the HTML inline them and callers write files atomically.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib import colormaps
from sklearn.metrics import confusion_matrix

from entrep.errors import UserError

log = logging.getLogger(__name__)

TSNE_MAX_POINTS = 2000
TSNE_MIN_POINTS = 5
DPI = 110


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# ---- confusion matrix ------------------------------------------------------------
def confusion_png(matrix: np.ndarray | Sequence[Sequence[int]], labels: Sequence[str], *, title: str = "") -> bytes:
    """Counts in every cell; colour is the row-normalised fraction (recall per true class).

    Row normalisation keeps a small class (throat: 10 images) as readable as a
    big one (nose: 93).
    """
    m = np.asarray(matrix, dtype=np.int64)
    labels = [str(c) for c in labels]
    k = len(labels)
    if m.shape != (k, k) or k == 0:
        raise UserError(f"confusion matrix of shape {m.shape} does not fit {k} labels")
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)

    side = max(3.6, 1.2 + 0.72 * k)
    fig = Figure(figsize=(side + 1.1, side))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class")
    fontsize = 10 if k <= 8 else max(6, 10 - (k - 8) // 2)
    for i in range(k):
        for j in range(k):
            if m[i, j] == 0 and rows[i, 0] > 0:
                text = "0"
            elif rows[i, 0] == 0:
                text = "–"
            else:
                text = f"{m[i, j]}\n{100 * frac[i, j]:.0f}%"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=fontsize,
                color="white" if frac[i, j] > 0.55 else "#1f2933",
            )
    ax.set_xticks(range(k), labels, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), [f"{c} ({rows[i, 0]})" for i, c in enumerate(labels)])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True (support)")
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    if title:
        ax.set_title(title, fontsize=11, pad=10)
    return _png(fig)


def confusion_png_from_predictions(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], *, title: str = ""
) -> bytes:
    """:func:`confusion_png` of true against predicted labels."""
    if len(y_true) != len(y_pred):
        raise UserError(f"cannot compare {len(y_pred)} predictions with {len(y_true)} true labels")
    labels = [str(c) for c in labels]
    unknown = sorted({str(y) for y in (*y_true, *y_pred)} - set(labels))
    if unknown:
        raise UserError(f"labels {unknown} are not among the plotted labels {labels}")
    m = confusion_matrix([str(y) for y in y_true], [str(y) for y in y_pred], labels=labels)
    return confusion_png(m, labels, title=title)


# ---- t-SNE ------------------------------------------------------------------------
@dataclass(frozen=True)
class Projection:
    """2-D t-SNE coordinates of (a seeded subsample of) the rows of an embedding."""

    coords: np.ndarray  # (m, 2)
    index: np.ndarray  # rows of the input that were projected, ascending
    n_total: int
    perplexity: float

    @property
    def subsampled(self) -> bool:
        return len(self.index) < self.n_total


def tsne_project(X: np.ndarray, *, seed: int = 0, max_points: int = TSNE_MAX_POINTS) -> Projection:
    """Seeded t-SNE (PCA init; PCA to 50 dims first when wider; 500 iterations).

    Perplexity is min(30, (n-1)/3) so small sets work; more than ``max_points``
    rows are subsampled with a seeded generator to keep this to seconds.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise UserError(f"embeddings must be a 2-D array (images x dims), got shape {X.shape}")
    n = X.shape[0]
    if n < TSNE_MIN_POINTS:
        raise UserError(f"t-SNE needs at least {TSNE_MIN_POINTS} embeddings, got {n}")
    if not np.isfinite(X).all():
        raise UserError("embeddings contain NaN or infinite values; re-run the encoder")
    index = np.arange(n)
    if n > max_points:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        X = X[index]
    m = X.shape[0]
    if X.shape[1] > 50 and m > 50:
        X = PCA(n_components=50, random_state=seed).fit_transform(X).astype(np.float32)
    perplexity = float(max(1.0, min(30.0, (m - 1) / 3.0)))
    # exact gradients are quicker than Barnes-Hut's tree below a few hundred points;
    # 500 iterations settle a picture as well as the default 1000 at half the time.
    coords = TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
        max_iter=500, method="exact" if m <= 300 else "barnes_hut",
    ).fit_transform(X)
    return Projection(coords=np.asarray(coords, dtype=np.float32), index=index, n_total=n, perplexity=perplexity)


def label_colours(fine_order: Sequence[str], groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per fine label; with groups, members of a group share a hue pair
    (tab20 dark/light) so a left/right confusion reads as one colour family."""
    fine_order = list(dict.fromkeys(fine_order))
    tab20 = colormaps["tab20"].colors
    if groups:
        group_order = list(dict.fromkeys(groups[c] for c in fine_order))
        sizes = [sum(1 for c in fine_order if groups[c] == g) for g in group_order]
        if len(group_order) <= 10 and max(sizes) <= 2:
            out = {}
            for c in fine_order:
                gi = group_order.index(groups[c])
                rank = [x for x in fine_order if groups[x] == groups[c]].index(c)
                out[c] = to_hex(tab20[2 * gi + rank])
            return out
    return _palette(fine_order)


def _palette(names: Sequence[str]) -> dict[str, str]:
    names = list(dict.fromkeys(names))
    if len(names) <= 10:
        cols = colormaps["tab10"].colors
    elif len(names) <= 20:
        cols = colormaps["tab20"].colors
    else:
        cols = colormaps["turbo"](np.linspace(0.05, 0.95, len(names)))
    return {c: to_hex(cols[i]) for i, c in enumerate(names)}


def _scatter(ax, coords: np.ndarray, labels: np.ndarray, colours: Mapping[str, str], title: str) -> None:
    size = 28 if len(coords) <= 300 else 12 if len(coords) <= 1000 else 6
    for name, col in colours.items():
        sel = labels == name
        if sel.any():
            ax.scatter(coords[sel, 0], coords[sel, 1], s=size, c=col, alpha=0.85, linewidths=0,
                       label=f"{name} ({int(sel.sum())})")
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#c8cdd2")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(4, max(1, len(colours))),
              fontsize=8, frameon=False, markerscale=1.3, handletextpad=0.2, columnspacing=1.0)


def tsne_png(
    X: np.ndarray,
    fine_labels: Sequence[str],
    coarse_labels: Sequence[str] | None = None,
    *,
    fine_order: Sequence[str] | None = None,
    seed: int = 0,
    max_points: int = TSNE_MAX_POINTS,
    title: str = "",
    projection: Projection | None = None,
) -> bytes:
    """t-SNE of embeddings coloured by coarse group (left) and fine label (right),
    the paper's Figure 2; the fine panel alone when there are no groups."""
    fine = np.asarray([str(c) for c in fine_labels])
    X = np.asarray(X)
    if len(fine) != X.shape[0]:
        raise UserError(f"{len(fine)} labels for {X.shape[0]} embeddings; they must be row-aligned")
    coarse = None
    if coarse_labels is not None:
        coarse = np.asarray([str(c) for c in coarse_labels])
        if len(coarse) != len(fine):
            raise UserError(f"{len(coarse)} coarse labels for {len(fine)} fine labels; they must be row-aligned")
    proj = projection or tsne_project(X, seed=seed, max_points=max_points)
    fine, coarse = fine[proj.index], (coarse[proj.index] if coarse is not None else None)
    order = [c for c in (fine_order or []) if c in set(fine)] + sorted(set(fine) - set(fine_order or []))

    panels = 2 if coarse is not None else 1
    fig = Figure(figsize=(5.2 * panels, 5.4))
    if coarse is not None:
        groups = {f: g for f, g in zip(fine, coarse)}
        consistent = all(groups[f] == g for f, g in zip(fine, coarse))
        fine_cols = label_colours(order, groups if consistent else None)
        group_order = list(dict.fromkeys(groups[c] for c in order)) if consistent else sorted(set(coarse))
        if consistent:  # group colour = the darker colour of its pair
            coarse_cols = {g: fine_cols[next(c for c in order if groups[c] == g)] for g in group_order}
        else:
            coarse_cols = _palette(group_order)
        _scatter(fig.add_subplot(1, 2, 1), proj.coords, coarse, coarse_cols, "Coarse group")
        _scatter(fig.add_subplot(1, 2, 2), proj.coords, fine, fine_cols, "Fine label")
    else:
        _scatter(fig.add_subplot(1, 1, 1), proj.coords, fine, _palette(order), "Label")
    sub = f"t-SNE, perplexity {proj.perplexity:.0f}"
    sub += (f", {len(proj.index)} of {proj.n_total} points (seeded subsample)" if proj.subsampled
            else f", {proj.n_total} points")
    fig.suptitle(f"{title}\n{sub}" if title else sub, fontsize=11)
    return _png(fig)


# ---- comparison bars -----------------------------------------------------------------
def comparison_png(rows: Sequence[tuple[str, float, float, float]], *, title: str = "") -> bytes:
    """Grouped bars of (model, accuracy, macro F1, weighted F1), values in [0, 1]."""
    if not rows:
        raise UserError("no models to compare")
    metrics = ("Accuracy", "Macro F1", "Weighted F1")
    cols = ("#3b6ea5", "#e08a3c", "#5a9e6f")
    fig = Figure(figsize=(max(4.5, 1.9 * len(rows) + 1.5), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    w = 0.26
    for i, (metric, col) in enumerate(zip(metrics, cols)):
        vals = [float(r[1 + i]) for r in rows]
        bars = ax.bar(x + (i - 1) * w, vals, w, label=metric, color=col)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylim(0, 1.12)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", color="#e3e6ea")
    ax.set_axisbelow(True)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=11)
    return _png(fig)
