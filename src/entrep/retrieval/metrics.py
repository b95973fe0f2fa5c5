"""Retrieval metrics: Recall@K and MRR as the ENTRep challenge scores them. Pure numpy.

A query's *rank* is the 1-based position of its first relevant item; 0 means
no relevant item was found. Recall@K is the fraction of queries whose rank is
in 1..K (at least one relevant item in the top K); MRR is the mean of 1/rank
(0 for rank 0). Queries with no relevant item anywhere in the gallery stay in
the denominator and score 0; :func:`scores_from_ranks` reports how many there
were (``n_without_relevant``) so a low score can be told apart from a gallery
that cannot answer.

Raw scores over the whole gallery plus a relevance mask go through
:func:`rank_with_ties` (ties broken pessimistically), then :func:`scores_from_ranks`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from entrep.errors import UserError

DEFAULT_KS = (1, 5, 10)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _recall_from_ranks(ranks: np.ndarray, k: int) -> float:
    return float(np.mean((ranks >= 1) & (ranks <= k))) if len(ranks) else 0.0


def _mrr_from_ranks(ranks: np.ndarray) -> float:
    if not len(ranks):
        return 0.0
    rr = np.where(ranks >= 1, 1.0 / np.maximum(ranks, 1), 0.0)
    return float(rr.mean())


def scores_from_ranks(
    ranks: Sequence[int] | np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    has_relevant: Sequence[bool] | np.ndarray | None = None,
) -> dict:
    """``{"recall@K": .., "mrr": .., "n_queries": .., "n_without_relevant": ..}`` from first-relevant ranks.

    ``ranks`` are 1-based, 0 = no relevant item found. ``has_relevant[q]``
    says whether query q has any relevant item in the gallery; when omitted,
    queries with rank 0 are counted as having none (right when the ranks come
    from :func:`rank_with_ties` over the whole gallery, an undercount of
    misses when they come from truncated top-K lists: pass it then).
    """
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    if (r < 0).any():
        raise UserError("ranks must be >= 0 (0 means no relevant item found)")
    if has_relevant is None:
        n_without = int((r == 0).sum())
    else:
        hr = np.asarray(has_relevant, dtype=bool).reshape(-1)
        if hr.shape != r.shape:
            raise UserError(f"has_relevant has {hr.size} entries but there are {r.size} queries")
        if ((r > 0) & ~hr).any():
            raise UserError("a query marked has_relevant=False has a relevant item in its ranking")
        n_without = int((~hr).sum())
    out = {f"recall@{k}": _recall_from_ranks(r, k) for k in (_check_k(k) for k in ks)}
    out["mrr"] = _mrr_from_ranks(r)
    out["n_queries"] = int(r.size)
    out["n_without_relevant"] = n_without
    return out


def rank_with_ties(scores, relevant, *, exclude=None) -> int | np.ndarray:
    """Rank of the first relevant item from raw scores over the whole gallery, ties broken pessimistically.

    ``scores``: (N,) for one query or (Q, N); higher is better. ``relevant``:
    bool mask of the same shape. ``exclude``: optional bool mask of items to
    leave out of the ranking (e.g. the query image itself in leave-one-out
    image->image search).

    With s* the best score among relevant items, the rank is
    ``1 + #(items scoring > s*) + #(irrelevant items scoring == s*)``: a
    relevant item tied with irrelevant ones is ranked after all of them, so
    constant or degenerate scores never look good. Other relevant items tied
    at s* do not push it down. Returns 0 where no (non-excluded) item is
    relevant. NaN scores raise UserError.
    """
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    single = s.ndim == 1
    if single:
        s, rel = s[None, :], rel[None, :] if rel.ndim == 1 else rel
    if s.ndim != 2 or rel.shape != s.shape:
        raise UserError(f"scores {np.shape(scores)} and relevant {np.shape(relevant)} must have the same 1-D or 2-D shape")
    if np.isnan(s).any():
        raise UserError("scores hold NaN; cannot rank")
    keep = np.ones_like(rel)
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        ex = ex[None, :] if ex.ndim == 1 and single else ex
        if ex.shape != s.shape:
            raise UserError(f"exclude {np.shape(exclude)} must have the shape of scores {np.shape(scores)}")
        keep = ~ex
    rel = rel & keep
    has = rel.any(axis=1)
    best = np.where(rel, s, -np.inf).max(axis=1, initial=-np.inf)[:, None]
    above = ((s > best) & keep).sum(axis=1)
    tied_irrelevant = ((s == best) & keep & ~rel).sum(axis=1)
    ranks = np.where(has, 1 + above + tied_irrelevant, 0).astype(np.int64)
    return int(ranks[0]) if single else ranks
