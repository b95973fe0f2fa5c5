"""Retrieval: the FAISS gallery index (store, backend, filters, approx-vs-exact), search, galleries,
and Recall@K / MRR metrics. See docs/retrieval.md for the index kinds, filtering and measured speed.

Names are imported lazily so that ``entrep.retrieval.filters`` (imported by the config) does not load FAISS.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AUTO_THRESHOLD": "index", "BuildReport": "index", "GalleryIndex": "index", "GalleryItem": "index",
    "Hit": "index", "FILTERS": "filters", "rank_with_ties": "metrics", "scores_from_ranks": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
