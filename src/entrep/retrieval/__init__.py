"""Retrieval: the FAISS gallery index (filtered search, save/load) and Recall@K / MRR metrics.

See docs/retrieval.md for the index kinds, the filtering guarantees and measured speed.
"""

from entrep.retrieval.index import AUTO_THRESHOLD, BuildReport, GalleryIndex, GalleryItem, Hit
from entrep.retrieval.metrics import (
    mrr,
    rank_of_first_relevant,
    rank_with_ties,
    recall_at_k,
    retrieval_scores,
    scores_from_ranks,
)

__all__ = [
    "AUTO_THRESHOLD",
    "BuildReport",
    "GalleryIndex",
    "GalleryItem",
    "Hit",
    "mrr",
    "rank_of_first_relevant",
    "rank_with_ties",
    "recall_at_k",
    "retrieval_scores",
    "scores_from_ranks",
]
