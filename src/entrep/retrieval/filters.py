"""Filters: the image->image filter names, and ``allowed=`` / ``exclude_ids=`` specs turned into row masks.

A spec is None (all rows), a bool mask aligned with the index's ids, a set of
labels, or a predicate ``f(GalleryItem) -> bool``; :meth:`GalleryIndex.search`
takes one spec for every query or one per query.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from entrep.errors import UserError

FILTERS = ("fine", "coarse", "none")  # image->image: the predicted class, its group, or everything

AllowedSpec = Any  # None | bool mask (N,) | set of labels | Callable[[GalleryItem], bool]


def per_query(spec, n_q: int, what: str) -> list:
    """One ``allowed`` spec per query: a (Q, N) mask or a list/tuple of Q specs, else the one spec repeated."""
    if isinstance(spec, np.ndarray) and spec.ndim == 2:
        if spec.shape[0] != n_q:
            raise UserError(f"{what} is a {spec.shape} mask but there are {n_q} queries")
        return list(spec)
    if isinstance(spec, (list, tuple)):
        if len(spec) != n_q:
            raise UserError(f"{what} has {len(spec)} entries but there are {n_q} queries; give one per query "
                            f"(labels for every query go in a set, e.g. {{'nose-left'}})")
        return list(spec)
    return [spec] * n_q


def per_query_ids(spec, n_q: int) -> list[frozenset]:
    """One frozenset of excluded ids per query, from one set for all or one iterable per query."""
    if spec is None:
        spec = [None] * n_q
    elif isinstance(spec, (set, frozenset)):
        spec = [spec] * n_q
    else:
        spec = list(spec)
        if len(spec) != n_q:
            raise UserError(f"exclude_ids has {len(spec)} entries but there are {n_q} queries; give one set of ids "
                            "per query, or one set for all")
        for j, e in enumerate(spec):
            if isinstance(e, (int, np.integer, str)):
                raise UserError(f"exclude_ids[{j}] is {e!r}; give an iterable of ids per query, e.g. [{{3}}, {{8}}]")
    return [frozenset(int(i) for i in e) if e is not None else frozenset() for e in spec]


def spec_key(spec) -> Any:
    """A key under which queries with the same spec share one mask (sets by value, others by identity)."""
    if spec is None:
        return None
    if isinstance(spec, (set, frozenset)):
        try:
            return ("labels", frozenset(spec))
        except TypeError:
            pass
    return ("obj", id(spec))


def spec_mask(spec, n: int, where: str, *, label_mask: Callable, predicate_mask: Callable) -> np.ndarray | None:
    """The bool row mask of one spec (None: every row); UserError naming ``where`` for a bad spec."""
    if spec is None:
        return None
    if isinstance(spec, np.ndarray):
        if spec.dtype != bool or spec.shape != (n,):
            raise UserError(f"{where}: a mask must be a bool array of shape ({n},) aligned with index.ids, "
                            f"got {spec.dtype} {spec.shape}")
        return spec
    if isinstance(spec, (set, frozenset)):
        return label_mask(spec)
    if callable(spec):
        return predicate_mask(spec)
    raise UserError(f"{where}: expected None, a bool mask, a set of labels or a predicate on GalleryItem, "
                    f"got {type(spec).__name__} {spec!r:.60}")


def group_by_mask(allowed, n_q: int, n: int, *, label_mask: Callable,
                  predicate_mask: Callable) -> list[tuple[np.ndarray | None, list[int]]]:
    """(row mask, query positions) for each distinct ``allowed`` spec among ``n_q`` queries over ``n`` rows."""
    masks: dict[Any, np.ndarray | None] = {}
    groups: dict[Any, list[int]] = {}
    for j, spec in enumerate(per_query(allowed, n_q, "allowed")):
        key = spec_key(spec)
        if key not in masks:
            where = f"allowed[{j}]" if isinstance(allowed, (list, tuple)) else "allowed"
            masks[key] = spec_mask(spec, n, where, label_mask=label_mask, predicate_mask=predicate_mask)
        groups.setdefault(key, []).append(j)
    return [(masks[key], members) for key, members in groups.items()]
