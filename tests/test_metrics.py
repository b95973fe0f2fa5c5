"""Recall@K / MRR against rankings computed by hand, ties and queries without any relevant item included."""

from __future__ import annotations

import numpy as np
import pytest

from entrep.errors import UserError
from entrep.retrieval.metrics import rank_with_ties, scores_from_ranks


def test_recall_and_mrr_from_hand_computed_ranks():
    # first relevant item at rank 2, rank 1, nowhere
    s = scores_from_ranks([2, 1, 0], ks=(1, 2, 10))
    assert s["recall@1"] == pytest.approx(1 / 3)
    assert s["recall@2"] == pytest.approx(2 / 3)
    assert s["recall@10"] == pytest.approx(2 / 3)  # the third query never hits
    assert s["mrr"] == pytest.approx(0.5)
    assert s["n_queries"] == 3
    assert scores_from_ranks([], ks=(5,)) == {"recall@5": 0.0, "mrr": 0.0, "n_queries": 0, "n_without_relevant": 0}
    with pytest.raises(UserError):
        scores_from_ranks([1], ks=(0,))


def test_truncated_rankings_need_has_relevant_to_count_unanswerable_queries():
    s = scores_from_ranks([1, 0, 0], ks=(1,), has_relevant=[True, True, False])
    assert s["n_without_relevant"] == 1 and s["recall@1"] == pytest.approx(1 / 3)
    with pytest.raises(UserError):
        scores_from_ranks([0, 1, 1], has_relevant=[False, False, True])  # query 1 found a relevant item
    with pytest.raises(UserError):
        scores_from_ranks([1, 1], has_relevant=[True])


def test_rank_with_ties_is_pessimistic():
    # item:      0    1    2    3    4
    scores = [0.9, 0.7, 0.7, 0.7, 0.1]
    # relevant item 2 ties with irrelevant 1 and 3 at 0.7: it goes after both -> rank 4 (0 ranks first)
    assert rank_with_ties(scores, [False, False, True, False, False]) == 4
    # two relevant items tied with one irrelevant: the first relevant comes after item 0 and item 3 -> 3
    assert rank_with_ties(scores, [False, True, True, False, False]) == 3
    # best relevant strictly on top
    assert rank_with_ties(scores, [True, False, True, False, False]) == 1
    # constant scores never look good: relevant item last among 4 equal scores
    assert rank_with_ties([1.0, 1.0, 1.0, 1.0], [False, True, False, False]) == 4
    # no relevant item anywhere
    assert rank_with_ties(scores, [False] * 5) == 0


def test_rank_with_ties_batch_and_exclude():
    scores = np.array([[0.5, 0.9, 0.9, 0.1],
                       [0.2, 0.2, 0.3, 0.9]])
    relevant = np.array([[True, True, False, False],
                         [True, False, False, True]])
    assert rank_with_ties(scores, relevant).tolist() == [2, 1]
    # leave-one-out: query 1's own image (item 3) is excluded; then relevant item 0 ties with item 1 -> rank 3
    exclude = np.array([[False, False, True, False],
                        [False, False, False, True]])
    assert rank_with_ties(scores, relevant, exclude=exclude).tolist() == [1, 3]
    # excluding the only relevant item leaves none: rank 0
    only = np.array([[False, False, False, False], [False, False, False, True]])
    assert rank_with_ties(scores, np.array([[False] * 4, [False, False, False, True]]), exclude=only).tolist() == [0, 0]
    ranks = rank_with_ties(scores, relevant, exclude=exclude)
    s = scores_from_ranks(ranks, ks=(1, 2))
    assert s == pytest.approx({"recall@1": 0.5, "recall@2": 0.5, "mrr": (1 + 1 / 3) / 2,
                               "n_queries": 2, "n_without_relevant": 0})


def test_rank_with_ties_rejects_bad_input():
    with pytest.raises(UserError, match="NaN"):
        rank_with_ties([0.1, float("nan")], [True, False])
    with pytest.raises(UserError, match="shape"):
        rank_with_ties([0.1, 0.2], [True])


def test_scores_from_ranks_counts_rank_zero_as_without_relevant():
    s = scores_from_ranks([1, 0, 3, 0], ks=(1, 3))
    assert s == pytest.approx({"recall@1": 0.25, "recall@3": 0.5, "mrr": (1 + 1 / 3) / 4,
                               "n_queries": 4, "n_without_relevant": 2})
    with pytest.raises(UserError):
        scores_from_ranks([-1])


def test_side_diversified_scores_keep_cosine_scores_and_tie_handling():
    from entrep.retrieval.search import side_diversified_scores
    from entrep.taxonomy import Taxonomy

    tax = Taxonomy.ent()
    labels = np.array(["ear-left", "ear-left", "throat", "ear-right", "throat"], dtype=object)
    s = np.array([0.9, 0.8, 0.8, 0.5, 0.1], dtype=np.float32)
    out = side_diversified_scores(s, labels, tax)
    # only the mirror hit (ear-right) moves, to just above the old second place; every other score stays cosine
    assert np.array_equal(np.delete(out, 3), np.delete(s, 3)) and 0.8 < out[3] <= 0.9
    assert list(np.argsort(-out, kind="stable")) == [0, 3, 1, 2, 4]
    # items 1 and 2 stay tied, so a relevant item among them still ranks pessimistically (behind the irrelevant one)
    assert rank_with_ties(out, labels == "throat") == 4
    # nothing to move: the scores come back unchanged
    same = np.array(["ear-left", "ear-right", "throat"], dtype=object)
    assert np.array_equal(side_diversified_scores(s[:3], same, tax), s[:3])
