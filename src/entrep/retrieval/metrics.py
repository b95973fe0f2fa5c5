"""Retrieval metrics: Recall@K and MRR as the ENTRep challenge scores them. Pure numpy.

A query's *rank* is the 1-based position of its first relevant item; 0 means
no relevant item was found. Recall@K is the fraction of queries whose rank is
in 1..K (at least one relevant item in the top K); MRR is the mean of 1/rank
(0 for rank 0). Queries with no relevant item anywhere in the gallery stay in
the denominator and score 0; :func:`retrieval_scores` reports how many there
were (``n_without_relevant``) so a low score can be told apart from a gallery
that cannot answer.

Two ways in:

- ranked relevance lists (what a search returned, best first, True where
  relevant): :func:`rank_of_first_relevant`, :func:`recall_at_k`, :func:`mrr`,
  :func:`retrieval_scores`;
- raw scores over the whole gallery plus a relevance mask:
  :func:`rank_with_ties` (ties broken pessimistically), then
  :func:`scores_from_ranks`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from entrep.errors import UserError

DEFAULT_KS = (1, 5, 10)


def _lists(ranked_relevance) -> list[np.ndarray]:
    """Normalise one list or many (possibly ragged) lists to a list of 1-D bool arrays."""
    if isinstance(ranked_relevance, np.ndarray):
        if ranked_relevance.ndim == 1:
            return [ranked_relevance.astype(bool)]
        if ranked_relevance.ndim == 2:
            return [row.astype(bool) for row in ranked_relevance]
        raise UserError(f"ranked relevance must be 1-D or 2-D, got shape {ranked_relevance.shape}")
    rows = list(ranked_relevance)
    if rows and all(np.ndim(r) == 0 for r in rows):
        return [np.asarray(rows, dtype=bool)]
    out = []
    for r in rows:
        a = np.asarray(r, dtype=bool)
        if a.ndim != 1:
            raise UserError(f"each ranked relevance list must be 1-D, got shape {a.shape}")
        out.append(a)
    return out


def _is_single(ranked_relevance) -> bool:
    if isinstance(ranked_relevance, np.ndarray):
        return ranked_relevance.ndim == 1
    rows = list(ranked_relevance)
    return bool(rows) and all(np.ndim(r) == 0 for r in rows)


def rank_of_first_relevant(ranked_relevance) -> int | np.ndarray:
    """1-based rank of the first True in a ranked list (0 when none).

    One list (``[False, True, ...]``) gives an int; many lists (a 2-D array or
    a list of lists, ragged allowed) give an int array with one rank per list.
    """
    single = _is_single(ranked_relevance)
    ranks = np.array([int(np.argmax(r)) + 1 if r.any() else 0 for r in _lists(ranked_relevance)], dtype=np.int64)
    return int(ranks[0]) if single else ranks


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _ranks(ranked_relevance_lists) -> np.ndarray:
    return np.atleast_1d(rank_of_first_relevant(ranked_relevance_lists))


def recall_at_k(ranked_relevance_lists, k: int) -> float:
    """Fraction of queries with at least one relevant item in the top ``k`` (0.0 for no queries)."""
    k = _check_k(k)
    ranks = _ranks(ranked_relevance_lists) if len(ranked_relevance_lists) else np.zeros(0, dtype=np.int64)
    return _recall_from_ranks(ranks, k)


def mrr(ranked_relevance_lists) -> float:
    """Mean reciprocal rank of the first relevant item; a query without one scores 0 (0.0 for no queries)."""
    ranks = _ranks(ranked_relevance_lists) if len(ranked_relevance_lists) else np.zeros(0, dtype=np.int64)
    return _mrr_from_ranks(ranks)


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


def retrieval_scores(
    ranked_relevance_lists,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    has_relevant: Sequence[bool] | np.ndarray | None = None,
) -> dict:
    """Recall@K for each K, MRR, ``n_queries`` and ``n_without_relevant`` from ranked relevance lists.

    One list per query, best first, True where relevant (a single flat list
    is one query). See
    :func:`scores_from_ranks` for ``has_relevant`` (pass it when the lists are
    truncated top-K results, so queries whose gallery holds no relevant item
    are counted correctly).
    """
    ranks = _ranks(ranked_relevance_lists) if len(ranked_relevance_lists) else np.zeros(0, dtype=np.int64)
    return scores_from_ranks(ranks, ks, has_relevant=has_relevant)


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
