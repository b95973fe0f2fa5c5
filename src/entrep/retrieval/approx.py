"""How close an approximate index comes to exact search: ground truth, recall@10 and ms/query."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from entrep.retrieval.backend import faiss_threads


@dataclass(frozen=True)
class BuildReport:
    """How an approximate index compares with exact search on its own gallery.

    ``recall_at_10``: mean fraction of each sampled query's exact 10 nearest
    neighbours that the approximate index also returns in its top 10 (the query
    row itself is left out of both lists). None when the gallery has fewer than
    two rows. Timings are single-query searches on this machine.
    ``filtered``: the same recall under two class filters chosen from the
    gallery's labels (:func:`label_filters`: one allowing about 1/7 of the
    rows, one about 4/7), searched as filtered queries are; None with fewer
    than two labels.
    """

    kind: str
    n: int
    dim: int
    params: dict
    build_s: float
    n_sample: int
    recall_at_10: float | None
    approx_ms_per_query: float
    exact_ms_per_query: float
    filtered: dict | None = None  # {"narrow"|"wide": {"labels", "fraction", "recall_at_10"}}: class filters

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:  # what `entrep index` prints
        recall = "n/a" if self.recall_at_10 is None else f"{self.recall_at_10:.3f}"
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "-"
        return (f"{self.kind} over {self.n} rows ({params}): recall@10 vs exact {recall} on {self.n_sample} sampled "
                f"queries, {self.approx_ms_per_query:.2f} ms/query (exact {self.exact_ms_per_query:.2f}), "
                f"built in {self.build_s:.1f}s" + "".join(
                    f"; under the {name} filter ({f['fraction']:.0%} of rows) {f['recall_at_10']:.3f}"
                    for name, f in (self.filtered or {}).items() if f.get("recall_at_10") is not None))


def sample_rows(n: int, m: int, seed: int) -> np.ndarray:
    """``min(n, m)`` distinct rows of ``n``, seeded, sorted."""
    m = min(n, m)
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)) if m else np.zeros(0, np.int64)


def label_filters(codes: np.ndarray, labels: list) -> dict[str, tuple[list, np.ndarray]]:
    """Two class filters for the build report: "narrow" (the one label whose share is nearest 1/7) and "wide"
    (labels by decreasing share until about 4/7 of the rows); {} with fewer than two labels."""
    counts = np.bincount(codes, minlength=len(labels)) if len(codes) else np.zeros(0, int)
    present = [c for c in range(len(counts)) if counts[c]]
    if len(present) < 2:
        return {}
    share = counts / counts.sum()
    narrow = [min(present, key=lambda c: abs(share[c] - 1 / 7))]
    wide: list[int] = []
    for c in sorted(present, key=lambda c: -share[c]):
        if wide and share[wide].sum() + share[c] / 2 > 4 / 7:
            break
        wide.append(c)
    if len(wide) == len(present):
        wide = wide[:-1]
    return {name: ([labels[c] for c in cs], np.isin(codes, cs)) for name, cs in (("narrow", narrow), ("wide", wide))}


def recall_of(found: np.ndarray, own_ids: np.ndarray, truth: list[set[int]], k: int = 10) -> float | None:
    """Share of the exact neighbours ``truth`` found in each row of ``found`` (own id and -1 left out, first k)."""
    hits = total = 0
    for j, want in enumerate(truth):
        own = int(own_ids[j])
        got = [int(i) for i in found[j] if i >= 0 and i != own][:k]
        hits += len(want & set(got))
        total += len(want)
    return hits / total if total else None


def ground_truth(vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int = 10,
                 allowed: np.ndarray | None = None) -> list[set[int]]:
    """Exact ``k`` nearest ids of each of ``rows`` (the row itself left out), by blocks of queries.

    Blocks hold at most 2**25 scores (128 MB), and the gallery is read in
    slices of 262,144 rows, so a memory-mapped gallery of millions is never
    copied whole.
    """
    n = len(vectors)
    kk = min(k, n - 1)
    truth: list[set[int]] = []
    if kk >= 1:
        step = max(1, min(256, 2**25 // max(n, 1)))
        for j in range(0, len(rows), step):  # blocks bound memory
            qb = np.asarray(vectors[rows[j : j + step]], dtype=np.float32)
            block = np.empty((len(qb), n), dtype=np.float32)
            for c in range(0, n, 262_144):
                block[:, c : c + 262_144] = qb @ np.asarray(vectors[c : c + 262_144], dtype=np.float32).T
            if allowed is not None:
                block[:, ~allowed] = -np.inf
            block[np.arange(len(block)), rows[j : j + step]] = -np.inf
            top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
            truth += [set(ids[t[np.isfinite(b[t])]].tolist()) for t, b in zip(top, block)]
    return truth


def measure_approximation(queries: np.ndarray, own_ids: np.ndarray, truth: list[set[int]], n: int, *,
                          approx: Callable, exact: Callable, k: int = 10) -> tuple[float | None, float, float]:
    """(recall@k, approximate ms/query, exact ms/query) for sampled gallery rows used as queries.

    ``queries[j]`` is the vector of the row whose id is ``own_ids[j]``; its
    exact neighbours (itself left out) are ``truth[j]``. ``approx(q, k)`` and
    ``exact(q, k)`` return (scores, ids); single-query searches are timed on
    one FAISS thread (exact on at most 20 queries).
    """
    m = len(queries)
    kk = min(k, n - 1)
    recall = None
    approx_ms = exact_ms = 0.0
    if m:
        with faiss_threads(1):
            t0 = time.perf_counter()
            for j in range(m):
                approx(queries[j : j + 1], min(kk + 1, n))
            approx_ms = (time.perf_counter() - t0) * 1000 / m
            n_time = min(m, 20)
            t0 = time.perf_counter()
            for j in range(n_time):
                exact(queries[j : j + 1], min(kk + 1, n))
            exact_ms = (time.perf_counter() - t0) * 1000 / n_time
    if m and kk >= 1:
        _, approx_ids = approx(queries, kk + 1)
        hits = 0
        for j, want in enumerate(truth):
            own = int(own_ids[j])
            got = [int(i) for i in approx_ids[j] if i >= 0 and i != own][:kk]
            hits += len(want & set(got))
        recall = hits / (m * kk)
    return recall, approx_ms, exact_ms
