"""Gallery index: FAISS inner-product search over L2-normalised vectors with row-aligned metadata.

A :class:`GalleryIndex` holds, for every gallery image, one vector and one
:class:`GalleryItem` (stable id, path, name, label, group, caption, content
hash). Vectors are L2-normalised on the way in, so scores are cosine
similarities. Ids are assigned incrementally and never reused, so an id held by
a caller keeps meaning the same image after removals and additions.

Index kinds (``kind=``):

- ``"flat"``: exact ``IndexFlatIP`` inside ``IndexIDMap2``. The default at ENT
  sizes (a few thousand images): exact and a few ms per query.
- ``"hnsw"``: ``IndexHNSWFlat`` (inner product) inside ``IndexIDMap2``. FAISS
  cannot delete from an HNSW graph, so :meth:`GalleryIndex.remove` rebuilds the
  graph from the kept vectors (logged).
- ``"ivf"``: ``IndexIVFFlat`` (inner product) with its own native ids, not
  wrapped in ``IndexIDMap2``: IVF stores external ids in its inverted lists, and
  wrapping it in an id map returns wrong ids after ``remove_ids`` (the map is
  compacted but the lists' sequential ids are not). ``nlist ~ 4 sqrt(n)``, capped
  so every list gets at least 39 training points; below 78 rows there is
  nothing to partition and the index is exact (flat) instead, with a log line.
- ``"auto"``: flat below ``auto_threshold`` (100,000) rows, else
  :data:`AUTO_APPROX_KIND` (IVF; see docs/retrieval.md for the measurements
  behind that choice). Re-evaluated when additions cross the threshold.

Whenever an approximate index is built its recall@10 against exact search is
measured on a seeded sample of the gallery's own vectors and kept in
:attr:`GalleryIndex.build_report` (and logged).

Filtering (:meth:`GalleryIndex.search` ``allowed=`` / ``exclude_ids=``) never
returns a filtered-out or excluded row: FAISS searches with an ``IDSelector``.
Flat search is exact. Approximate indexes answer filters that allow at most
30% of the rows (:data:`EXACT_FILTER_FRACTION`) by an exact scan of the allowed
vectors (HNSW through its flat storage, IVF with every list probed): graph and
list search lose most of their recall when the allowed rows lie away from the
query. Wider filters widen efSearch by 1/fraction**2 and nprobe by
1/fraction, and any approximate search that comes back short is redone
exactly. Batches under 20 queries run FAISS on one thread: on a small shared
machine OpenMP start-up and spinning cost more than a second core saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import faiss
import numpy as np

from entrep.errors import ModelError, UserError
from entrep.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_NAME = "entrep-gallery-index"
FORMAT_VERSION = 1
KINDS = ("auto", "flat", "hnsw", "ivf")
AUTO_THRESHOLD = 100_000
AUTO_APPROX_KIND = "ivf"
IVF_MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below 39 training points per centroid
EXACT_FILTER_FRACTION = 0.3  # approximate indexes answer filters allowing <= this share of rows by exact scan
SINGLE_THREAD_BELOW = 20  # batches smaller than this search on one thread: OpenMP start-up costs more than it saves

_META_FILE = "gallery.json"
_VECTORS_FILE = "vectors.npy"
_FAISS_FILE = "index.faiss"


@dataclass(frozen=True)
class GalleryItem:
    """What is known about one gallery row. ``id`` is stable and never reused."""

    id: int
    path: str
    name: str
    label: str | None = None
    group: str | None = None
    caption: str | None = None
    content_hash: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GalleryItem":
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


_ITEM_KEYS = tuple(f.name for f in fields(GalleryItem) if f.name != "id")
_ALLOWED_KEYS = frozenset(_ITEM_KEYS) | {"id"}


class Hit(NamedTuple):
    """One search result: gallery id, cosine score, and the row's metadata."""

    id: int
    score: float
    metadata: GalleryItem

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def label(self) -> str | None:
        return self.metadata.label


@dataclass(frozen=True)
class BuildReport:
    """How an approximate index compares with exact search on its own gallery.

    ``recall_at_10``: mean fraction of each sampled query's exact 10 nearest
    neighbours that the approximate index also returns in its top 10 (the query
    row itself is left out of both lists). None when the gallery has fewer than
    two rows. Timings are single-query searches on this machine.
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

    def to_dict(self) -> dict:
        return asdict(self)


AllowedSpec = Any  # None | bool mask (N,) | set of labels | Callable[[GalleryItem], bool]


class GalleryIndex:
    """FAISS inner-product index over L2-normalised vectors with row-aligned metadata.

    Parameters: ``dim`` (vector length), ``kind`` (see module docs),
    ``auto_threshold`` (row count at which "auto" turns approximate),
    ``hnsw_m`` / ``ef_construction`` / ``ef_search`` (HNSW), ``nprobe`` (IVF lists
    probed per query; None: ``max(8, nlist // 16)``), ``report_queries`` (sample
    size for :attr:`build_report`), ``target_recall`` (after a build, nprobe /
    efSearch are doubled until the measured recall@10 reaches it; None: keep
    them as given), ``seed`` (sampling for training and reports).

    Rows are in insertion order; :attr:`ids`, :attr:`vectors` and :attr:`items`
    are aligned with each other (and with any boolean ``allowed`` mask).
    Searches and mutations are serialised by a lock, so one index can serve
    several threads.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        auto_threshold: int = AUTO_THRESHOLD,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nprobe: int | None = None,
        report_queries: int = 200,
        target_recall: float | None = 0.95,
        seed: int = 0,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise UserError(f"gallery index dim must be a positive integer, got {dim!r}")
        if kind not in KINDS:
            raise UserError(f"unknown index kind {kind!r}; choose one of {list(KINDS)}")
        if auto_threshold < 1:
            raise UserError(f"auto_threshold must be >= 1, got {auto_threshold}")
        self.dim = int(dim)
        self.requested_kind = kind
        self.auto_threshold = int(auto_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.report_queries = int(report_queries)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise UserError(f"target_recall must be in (0, 1] or None, got {target_recall}")
        self.target_recall = target_recall
        self.seed = int(seed)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._items: list[GalleryItem] = []
        self._codes = np.zeros(0, dtype=np.int32)  # per-row label code, for fast label masks
        self._label_code: dict[str | None, int] = {}
        self._row: dict[int, int] = {}
        self._next_id = 0
        self._faiss: faiss.Index | None = None
        self._kind = "flat"
        self._params: dict = {}
        self._trained_on = 0
        self.build_report: BuildReport | None = None
        self._lock = threading.RLock()

    # ---- size, rows, metadata -----------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"GalleryIndex(dim={self.dim}, kind={self.kind!r}, requested={self.requested_kind!r}, n={len(self)})"

    @property
    def kind(self) -> str:
        """The structure actually in use: "flat", "hnsw" or "ivf"."""
        return self._kind if self._faiss is not None else self._resolve_kind(len(self), quiet=True)

    @property
    def params(self) -> dict:
        """Parameters of the built structure (nlist/nprobe, M/efSearch); empty for flat."""
        return dict(self._params)

    @property
    def ids(self) -> np.ndarray:
        """Row-ordered ids (a copy)."""
        return self._ids.copy()

    @property
    def vectors(self) -> np.ndarray:
        """Row-ordered L2-normalised vectors, float32 (N, dim); read-only view."""
        v = self._vectors.view()
        v.flags.writeable = False
        return v

    @property
    def items(self) -> list[GalleryItem]:
        """Row-ordered metadata."""
        return list(self._items)

    @property
    def next_id(self) -> int:
        return self._next_id

    def metadata_for(self, ids: Iterable[int]) -> list[GalleryItem]:
        """Metadata of the given ids, in the given order; UserError for an unknown id."""
        rows = self._rows_of(ids)
        return [self._items[r] for r in rows]

    def ids_for_names(self, names: Iterable[str]) -> list[int]:
        """Ids of rows whose file name is one of ``names`` (all rows sharing a name)."""
        want = set(names)
        return [it.id for it in self._items if it.name in want]

    def mask(self, predicate: Callable[[GalleryItem], bool]) -> np.ndarray:
        """Boolean row mask (aligned with :attr:`ids`) of rows where ``predicate(item)`` holds."""
        return np.fromiter((bool(predicate(it)) for it in self._items), dtype=bool, count=len(self._items))

    def label_mask(self, labels: Iterable[str | None]) -> np.ndarray:
        """Boolean row mask of rows whose label is in ``labels``."""
        want = [self._label_code[lab] for lab in set(labels) if lab in self._label_code]
        return np.isin(self._codes, np.array(want, dtype=np.int32))

    def _encode_labels(self, items: Sequence[GalleryItem]) -> np.ndarray:
        return np.array([self._label_code.setdefault(it.label, len(self._label_code)) for it in items], dtype=np.int32)

    def _rows_of(self, ids: Iterable[int]) -> list[int]:
        rows, unknown = [], []
        for i in ids:
            r = self._row.get(int(i))
            if r is None:
                unknown.append(int(i))
            else:
                rows.append(r)
        if unknown:
            raise UserError(f"unknown gallery ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''} (the gallery has {len(self)} rows)")
        return rows

    # ---- adding and removing -------------------------------------------
    def add(self, vectors: np.ndarray, metadata: Sequence[Mapping | GalleryItem | Any]) -> list[int]:
        """Add rows; returns their new ids.

        ``metadata[i]`` describes ``vectors[i]``: a dict with any of
        path, name, label, group, caption, content_hash (path or name required;
        name defaults to the path's file name), a :class:`GalleryItem` (its id
        is replaced), an ``entrep.data.records.Record``, or a path.
        """
        vecs = _as_matrix(vectors, self.dim, what="gallery vectors")
        if len(metadata) != len(vecs):
            raise UserError(f"{len(vecs)} gallery vectors but {len(metadata)} metadata entries; give one entry per vector")
        if len(vecs) == 0:
            return []
        vecs = _normalise(vecs, what="gallery vector")
        with self._lock:
            new_ids = np.arange(self._next_id, self._next_id + len(vecs), dtype=np.int64)
            items = [_make_item(int(i), m, row) for row, (i, m) in enumerate(zip(new_ids, metadata))]
            seen = {it.name for it in self._items}
            dup = sorted({it.name for it in items if it.name in seen} | _repeated(it.name for it in items))
            if dup:
                log.warning("gallery now holds several rows named %s; name-based lookups return all of them", dup[:5])
            saved = (self._vectors, self._ids, self._items, self._codes, self._row, self._next_id)
            try:
                start = len(self._ids)
                self._vectors = np.concatenate([self._vectors, vecs]) if start else vecs
                self._ids = np.concatenate([self._ids, new_ids])
                self._items = self._items + items
                self._codes = np.concatenate([self._codes, self._encode_labels(items)])
                self._row = {**self._row, **{int(i): start + r for r, i in enumerate(new_ids)}}
                self._next_id += len(vecs)
                target = self._resolve_kind(len(self._ids))
                if self._faiss is None or target != self._kind:
                    if self._faiss is not None:
                        log.info("gallery grew to %d rows: switching index from %s to %s", len(self), self._kind, target)
                    self._build(target)
                else:
                    self._faiss.add_with_ids(vecs, new_ids)
            except BaseException:  # leave the index as it was (a failed build never replaces self._faiss)
                self._vectors, self._ids, self._items, self._codes, self._row, self._next_id = saved
                raise
            if self._kind == "ivf" and len(self) > 4 * self._trained_on:
                log.info("IVF lists were trained on %d rows and the gallery now has %d; call rebuild() to retrain",
                         self._trained_on, len(self))
            return [int(i) for i in new_ids]

    def remove(self, ids_or_names: int | str | Iterable[int | str], *, missing_ok: bool = False) -> list[int]:
        """Remove rows by id (int) or file name (str; every row with that name). Returns removed ids.

        Unknown ids/names raise UserError unless ``missing_ok``. Flat and IVF
        indexes delete in place; HNSW cannot, so its graph is rebuilt.
        """
        if isinstance(ids_or_names, (str, int, np.integer)):
            ids_or_names = [ids_or_names]
        with self._lock:
            drop: set[int] = set()
            missing: list = []
            by_name: dict[str, list[int]] | None = None
            for x in ids_or_names:
                if isinstance(x, str):
                    if by_name is None:
                        by_name = {}
                        for it in self._items:
                            by_name.setdefault(it.name, []).append(it.id)
                    found = by_name.get(x)
                    if found:
                        drop.update(found)
                    else:
                        missing.append(x)
                elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                    if int(x) in self._row:
                        drop.add(int(x))
                    else:
                        missing.append(int(x))
                else:
                    raise UserError(f"remove() takes gallery ids (int) or file names (str), got {x!r}")
            if missing and not missing_ok:
                raise UserError(f"cannot remove {missing[:5]}{' ...' if len(missing) > 5 else ''}: not in the gallery")
            if not drop:
                return []
            removed = np.array(sorted(drop), dtype=np.int64)
            keep = ~np.isin(self._ids, removed)
            self._vectors = np.ascontiguousarray(self._vectors[keep])
            self._ids = self._ids[keep]
            self._items = [it for it, k in zip(self._items, keep) if k]
            self._codes = self._codes[keep]
            self._row = {int(i): r for r, i in enumerate(self._ids)}
            if self._faiss is not None:
                if self._kind == "hnsw":
                    log.info("HNSW cannot delete in place: rebuilding the graph over %d rows", len(self))
                    self._build("hnsw")
                else:
                    n = self._faiss.remove_ids(removed)
                    if n != len(removed):  # pragma: no cover - would mean the FAISS index and rows disagree
                        raise ModelError(f"FAISS removed {n} of {len(removed)} rows; call rebuild()")
            return [int(i) for i in removed]

    def rebuild(self) -> "GalleryIndex":
        """Rebuild the FAISS structure from the stored vectors (re-choosing "auto"/"ivf" for the current size)."""
        with self._lock:
            self._build(self._resolve_kind(len(self)))
        return self

    # ---- building -------------------------------------------------------
    def _resolve_kind(self, n: int, *, quiet: bool = False) -> str:
        kind = self.requested_kind
        if kind == "auto":
            kind = AUTO_APPROX_KIND if n >= self.auto_threshold else "flat"
        if kind == "ivf" and n // IVF_MIN_POINTS_PER_LIST < 2:
            if not quiet:
                log.info("IVF needs at least %d rows to train 2 lists; the gallery has %d, so the index is exact (flat)",
                         2 * IVF_MIN_POINTS_PER_LIST, n)
            kind = "flat"
        return kind

    def _ivf_nlist(self, n: int) -> int:
        want = max(2, int(round(4 * math.sqrt(n))))
        cap = n // IVF_MIN_POINTS_PER_LIST
        if want > cap:
            log.info("IVF over %d rows: nlist reduced from %d to %d (>= %d training points per list)",
                     n, want, cap, IVF_MIN_POINTS_PER_LIST)
        return min(want, cap)

    def _build(self, kind: str) -> None:
        t0 = time.perf_counter()
        n, d = len(self), self.dim
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.ef_construction
            base.hnsw.efSearch = self.ef_search
            index = faiss.IndexIDMap2(base)
            params = {"M": self.hnsw_m, "efConstruction": self.ef_construction, "efSearch": self.ef_search}
        elif kind == "ivf":
            nlist = self._ivf_nlist(n)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = self.seed
            index.train(self._vectors)
            index.nprobe = min(nlist, self.nprobe if self.nprobe is not None else max(8, nlist // 16))
            params = {"nlist": nlist, "nprobe": int(index.nprobe)}
            self._trained_on = n
        else:  # pragma: no cover - guarded by KINDS
            raise UserError(f"unknown index kind {kind!r}")
        if n:
            index.add_with_ids(self._vectors, self._ids)
        self._faiss, self._kind, self._params = index, kind, params
        build_s = time.perf_counter() - t0
        if kind == "flat":
            self.build_report = None
            log.debug("built exact flat index over %d rows in %.2fs", n, build_s)
            return
        truth = self._ground_truth()
        report = self.measure_approximation(build_s=build_s, _truth=truth)
        while (self.target_recall is not None and report.recall_at_10 is not None
               and report.recall_at_10 < self.target_recall and self._widen()):
            report = self.measure_approximation(build_s=build_s, _truth=truth)
        self.build_report = report
        log.info("built %s index over %d rows (%s) in %.1fs: recall@10 vs exact %s, %.2f ms/query (exact %.2f)",
                 kind, n, self._params, build_s, "n/a" if report.recall_at_10 is None else f"{report.recall_at_10:.3f}",
                 report.approx_ms_per_query, report.exact_ms_per_query)

    def _widen(self) -> bool:
        """Double nprobe (IVF) or efSearch (HNSW) without rebuilding; False when already at the limit."""
        n = len(self)
        if self._kind == "ivf":
            nlist, nprobe = self._params["nlist"], self._params["nprobe"]
            if nprobe >= nlist:
                return False
            self._faiss.nprobe = self._params["nprobe"] = min(nlist, 2 * nprobe)
            log.info("IVF recall below %.2f: nprobe %d -> %d", self.target_recall, nprobe, self._faiss.nprobe)
            return True
        ef = self._params["efSearch"]
        if ef >= n:
            return False
        new = min(n, 2 * ef)
        faiss.downcast_index(self._faiss.index).hnsw.efSearch = self._params["efSearch"] = new
        log.info("HNSW recall below %.2f: efSearch %d -> %d", self.target_recall, ef, new)
        return True

    def _sample_rows(self, n_queries: int | None) -> np.ndarray:
        n = len(self)
        m = min(n, self.report_queries if n_queries is None else n_queries)
        return np.sort(np.random.default_rng(self.seed).choice(n, size=m, replace=False)) if m else np.zeros(0, np.int64)

    def _ground_truth(self, n_queries: int | None = None, k: int = 10) -> tuple[np.ndarray, list[set[int]]]:
        """(sampled rows, exact k nearest ids of each sampled row, itself left out)."""
        rows = self._sample_rows(n_queries)
        kk = min(k, len(self) - 1)
        truth: list[set[int]] = []
        if kk >= 1:
            for j in range(0, len(rows), 256):  # blocks bound memory
                block = self._vectors[rows[j : j + 256]] @ self._vectors.T
                block[np.arange(len(block)), rows[j : j + 256]] = -np.inf
                top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
                truth += [set(self._ids[t].tolist()) for t in top]
        return rows, truth

    def measure_approximation(self, n_queries: int | None = None, *, k: int = 10, build_s: float = 0.0,
                              _truth: tuple[np.ndarray, list[set[int]]] | None = None) -> BuildReport:
        """Recall@k of the current structure against exact search, on a seeded sample of gallery rows.

        Each sampled row is a query; its own row is left out of both the exact
        and the approximate neighbour lists. Also times single-query searches
        (approximate, and the exact scan this index falls back to).
        """
        with self._lock:
            n = len(self)
            rows, truth = _truth if _truth is not None else self._ground_truth(n_queries, k)
            m = len(rows)
            q = self._vectors[rows]
            kk = min(k, n - 1)
            recall = None
            approx_ms = exact_ms = 0.0
            if m:
                with _faiss_threads(1):
                    t0 = time.perf_counter()
                    for j in range(m):
                        self._faiss.search(q[j : j + 1], min(kk + 1, n))
                    approx_ms = (time.perf_counter() - t0) * 1000 / m
                    n_time = min(m, 20)
                    t0 = time.perf_counter()
                    for j in range(n_time):
                        self._faiss_search(q[j : j + 1], min(kk + 1, n), None, exact=True)
                    exact_ms = (time.perf_counter() - t0) * 1000 / n_time
            if m and kk >= 1:
                _, approx_ids = self._faiss.search(q, kk + 1)
                hits = 0
                for j, exact in enumerate(truth):
                    own = int(self._ids[rows[j]])
                    got = [int(i) for i in approx_ids[j] if i >= 0 and i != own][:kk]
                    hits += len(exact & set(got))
                recall = hits / (m * kk)
            return BuildReport(kind=self._kind, n=n, dim=self.dim, params=dict(self._params), build_s=round(build_s, 4),
                               n_sample=m, recall_at_10=recall, approx_ms_per_query=round(approx_ms, 4),
                               exact_ms_per_query=round(exact_ms, 4))

    # ---- searching ------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: AllowedSpec | Sequence[AllowedSpec] | np.ndarray | None = None,
        exclude_ids: Iterable[int] | Sequence[Iterable[int] | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` gallery rows for each query, best first: ``result[q] = [Hit(id, score, metadata), ...]``.

        ``queries``: (Q, dim) (or one (dim,) vector); normalised here.
        ``allowed`` restricts which rows may be returned, either one spec for
        every query or a list/tuple with one spec per query (or a (Q, N) bool
        array). A spec is None (all rows), a bool mask aligned with :attr:`ids`,
        a set of labels, or a predicate ``f(GalleryItem) -> bool``.
        ``exclude_ids``: one set of ids for every query, or a list with one
        iterable per query (e.g. each query's own id for leave-one-out).

        Fewer than ``k`` hits come back only when fewer rows are allowed.
        """
        q = _as_matrix(queries, self.dim, what="query vectors", allow_1d=True)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        n_q = len(q)
        if n_q == 0:
            return []
        q = _normalise(q, what="query vector")
        with self._lock:
            if len(self) == 0:
                return [[] for _ in range(n_q)]
            specs = self._per_query(allowed, n_q, "allowed")
            excl = [frozenset(int(i) for i in e) if e is not None else frozenset()
                    for e in self._per_query_ids(exclude_ids, n_q)]
            masks: dict[Any, np.ndarray | None] = {}
            groups: dict[Any, list[int]] = {}
            for j, spec in enumerate(specs):
                key = _spec_key(spec)
                if key not in masks:
                    masks[key] = self._spec_mask(spec, f"allowed[{j}]" if isinstance(allowed, (list, tuple)) else "allowed")
                groups.setdefault(key, []).append(j)
            out: list[list[Hit]] = [[] for _ in range(n_q)]
            with _faiss_threads(1 if n_q < SINGLE_THREAD_BELOW else None):
                for key, members in groups.items():
                    hits = self._search_group(q[members], masks[key], [excl[j] for j in members], k)
                    for j, h in zip(members, hits):
                        out[j] = h
            return out

    def _per_query(self, spec, n_q: int, what: str) -> list:
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

    def _per_query_ids(self, spec, n_q: int) -> list:
        if spec is None:
            return [None] * n_q
        if isinstance(spec, (set, frozenset)):
            return [spec] * n_q
        spec = list(spec)
        if len(spec) != n_q:
            raise UserError(f"exclude_ids has {len(spec)} entries but there are {n_q} queries; give one set of ids "
                            "per query, or one set for all")
        for j, e in enumerate(spec):
            if isinstance(e, (int, np.integer, str)):
                raise UserError(f"exclude_ids[{j}] is {e!r}; give an iterable of ids per query, e.g. [{{3}}, {{8}}]")
        return spec

    def _spec_mask(self, spec, where: str) -> np.ndarray | None:
        n = len(self)
        if spec is None:
            return None
        if isinstance(spec, np.ndarray):
            if spec.dtype != bool or spec.shape != (n,):
                raise UserError(f"{where}: a mask must be a bool array of shape ({n},) aligned with index.ids, "
                                f"got {spec.dtype} {spec.shape}")
            return spec
        if isinstance(spec, (set, frozenset)):
            return self.label_mask(spec)
        if callable(spec):
            return self.mask(spec)
        raise UserError(f"{where}: expected None, a bool mask, a set of labels or a predicate on GalleryItem, "
                        f"got {type(spec).__name__} {spec!r:.60}")

    def _search_group(self, q: np.ndarray, mask: np.ndarray | None, excl: list[frozenset], k: int) -> list[list[Hit]]:
        """Search queries sharing one allowed-row mask; each query has its own excluded ids."""
        n = len(self)
        n_allowed = n if mask is None else int(mask.sum())
        if n_allowed == 0:
            return [[] for _ in q]
        frac = n_allowed / n
        exact = self._kind == "flat" or (mask is not None and frac <= EXACT_FILTER_FRACTION)
        k_fetch = min(k + max(len(e) for e in excl), n_allowed)
        scores, labels = self._faiss_search(q, k_fetch, mask, exact=exact, frac=frac)
        results = []
        for j in range(len(q)):
            e = excl[j]
            want = min(k, n_allowed - sum(1 for i in e if i in self._row and (mask is None or mask[self._row[i]])))
            hits = self._collect(scores[j], labels[j], mask, e, want)
            if len(hits) < want:
                log.debug("%s search returned %d of %d allowed hits; searching exactly", self._kind, len(hits), want)
                s1, l1 = self._faiss_search(q[j : j + 1], min(k + len(e), n_allowed), mask, exact=True, frac=frac)
                hits = self._collect(s1[0], l1[0], mask, e, want)
            results.append(hits)
        return results

    def _collect(self, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, excl: frozenset,
                 want: int) -> list[Hit]:
        hits: list[Hit] = []
        for i, s in zip(labels.tolist(), scores.tolist()):
            if len(hits) == want:
                break
            if i < 0 or i in excl:
                continue
            r = self._row.get(i)
            if r is None or (mask is not None and not mask[r]):
                continue  # defensive: FAISS returned a row the filter forbids
            hits.append(Hit(i, float(s), self._items[r]))
        return hits

    def _faiss_search(self, q: np.ndarray, k: int, mask: np.ndarray | None, *, exact: bool,
                      frac: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) from FAISS, restricted to ``mask`` rows by an IDSelector; -1 ids pad short results.

        ``exact`` scans every allowed vector: flat as is, HNSW through its flat
        storage (rows = storage positions), IVF with every list probed. Filtered
        approximate searches widen efSearch by 1/frac**2, nprobe by 1/frac.
        """
        keep = []  # bitmaps must outlive the search: the selectors point into them
        if self._kind == "hnsw" and exact:
            storage = self._hnsw_storage()
            params = None if mask is None else faiss.SearchParameters(sel=self._bitmap(mask, keep, by_row=True))
            scores, rows = storage.search(q, k, params=params)
            return scores, np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        sel = None if mask is None else self._bitmap(mask, keep, by_row=False)
        if self._kind == "hnsw":
            base = int(self._params.get("efSearch", self.ef_search))
            # a filtered graph walk must pass through disallowed nodes: 1/frac**2 keeps recall@10 near 0.97
            # where 1/frac gave 0.93 (benchmarks, filter allowing 57% of rows away from the query)
            ef = base if mask is None else max(base, min(int(math.ceil(base / frac**2)), len(self)))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, k))
        elif self._kind == "ivf":
            nlist, base = int(self._faiss.nlist), int(self._params.get("nprobe", self._faiss.nprobe))
            nprobe = nlist if exact else min(nlist, int(math.ceil(base / frac)))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        else:
            params = None if sel is None else faiss.SearchParameters(sel=sel)
        scores, ids = self._faiss.search(q, k, params=params)
        del keep
        return scores, ids

    def _bitmap(self, mask: np.ndarray, keep: list, *, by_row: bool) -> faiss.IDSelector:
        """IDSelectorBitmap over storage positions (``by_row``) or gallery ids for the rows in ``mask``."""
        if by_row:
            bits, size = mask, len(mask)
        else:
            bits = np.zeros(self._next_id, dtype=bool)
            bits[self._ids[mask]] = True
            size = self._next_id
        packed = np.packbits(bits, bitorder="little")
        sel = faiss.IDSelectorBitmap(size, faiss.swig_ptr(packed))
        keep += [packed, sel]
        return sel

    def _hnsw_storage(self) -> faiss.Index:
        """The flat vectors inside the HNSW index, in row order (the graph is rebuilt on every removal)."""
        return faiss.downcast_index(faiss.downcast_index(self._faiss.index).storage)

    # ---- saving and loading ---------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` atomically: gallery.json, vectors.npy, index.faiss."""
        folder = Path(folder)
        with self._lock, atomic_path(folder) as tmp:
            tmp.mkdir()
            meta = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "dim": self.dim,
                "requested_kind": self.requested_kind,
                "kind": self._kind if self._faiss is not None else None,
                "settings": {"auto_threshold": self.auto_threshold, "hnsw_m": self.hnsw_m,
                             "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                             "nprobe": self.nprobe, "report_queries": self.report_queries,
                             "target_recall": self.target_recall, "seed": self.seed},
                "params": self._params,
                "trained_on": self._trained_on,
                "next_id": self._next_id,
                "n": len(self),
                "build_report": self.build_report.to_dict() if self.build_report else None,
                "items": [it.to_json() for it in self._items],
            }
            np.save(tmp / _VECTORS_FILE, self._vectors, allow_pickle=False)
            if self._faiss is not None:
                faiss.write_index(self._faiss, str(tmp / _FAISS_FILE))
            (tmp / _META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "GalleryIndex":
        """Read an index written by :meth:`save`; ModelError naming the folder if it is missing, corrupt or another version."""
        folder = Path(folder)
        meta_path = folder / _META_FILE
        if not folder.is_dir():
            raise ModelError(f"{folder}: no gallery index folder here; build one with `entrep index`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{folder}: not a gallery index folder ({_META_FILE} is missing); rebuild it with `entrep index`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{meta_path}: unreadable gallery index metadata ({e}); rebuild it with `entrep index`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ModelError(f"{meta_path}: not an entrep gallery index; rebuild it with `entrep index`")
        if meta.get("version") != FORMAT_VERSION:
            raise ModelError(f"{folder}: gallery index format version {meta.get('version')!r}, but this entrep reads "
                             f"version {FORMAT_VERSION}; rebuild it with `entrep index`")
        try:
            s = meta["settings"]
            idx = cls(int(meta["dim"]), kind=meta["requested_kind"], auto_threshold=s["auto_threshold"],
                      hnsw_m=s["hnsw_m"], ef_construction=s["ef_construction"], ef_search=s["ef_search"],
                      nprobe=s["nprobe"], report_queries=s["report_queries"], target_recall=s["target_recall"],
                      seed=s["seed"])
            items = [GalleryItem.from_json(d) for d in meta["items"]]
            if not all(isinstance(it.id, int) and isinstance(it.path, str) and isinstance(it.name, str) for it in items):
                raise ValueError("every item needs an integer id, a path and a name")
            next_id, n, kind = int(meta["next_id"]), int(meta["n"]), meta["kind"]
            report = BuildReport(**meta["build_report"]) if meta.get("build_report") else None
        except (KeyError, TypeError, ValueError, UserError) as e:
            raise ModelError(f"{meta_path}: gallery index metadata is incomplete or invalid ({e}); rebuild it with `entrep index`") from None
        try:
            vecs = np.load(folder / _VECTORS_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelError(f"{folder / _VECTORS_FILE}: cannot read gallery vectors ({e}); rebuild it with `entrep index`") from None
        ids = np.array([it.id for it in items], dtype=np.int64)
        if vecs.dtype != np.float32 or vecs.shape != (n, idx.dim) or len(items) != n:
            raise ModelError(f"{folder}: gallery vectors {vecs.dtype} {vecs.shape} do not match {len(items)} items of dim "
                             f"{idx.dim}; rebuild it with `entrep index`")
        if n and (len(set(ids.tolist())) != n or ids.min() < 0 or ids.max() >= next_id):
            raise ModelError(f"{meta_path}: gallery ids are duplicated or out of range; rebuild it with `entrep index`")
        idx._vectors, idx._ids, idx._items, idx._next_id = vecs, ids, items, next_id
        idx._row = {int(i): r for r, i in enumerate(ids)}
        idx._codes = idx._encode_labels(items)
        idx._params, idx._trained_on, idx.build_report = dict(meta.get("params") or {}), int(meta.get("trained_on", 0)), report
        if kind is not None:
            if kind not in KINDS[1:]:
                raise ModelError(f"{meta_path}: unknown index kind {kind!r}; rebuild it with `entrep index`")
            fpath = folder / _FAISS_FILE
            if not fpath.is_file():
                raise ModelError(f"{fpath}: FAISS index file is missing; rebuild it with `entrep index`")
            try:
                index = faiss.read_index(str(fpath))
            except RuntimeError as e:
                raise ModelError(f"{fpath}: cannot read FAISS index ({str(e).splitlines()[0][:200]}); rebuild it with `entrep index`") from None
            stored = _faiss_ids(index)
            if stored is not None and kind == "ivf":  # IVF lists hold ids in list order; the others in row order
                stored, ids_in_order = np.sort(stored), np.sort(ids)
            else:
                ids_in_order = ids
            if index.d != idx.dim or index.ntotal != n or stored is None or not np.array_equal(stored, ids_in_order):
                raise ModelError(f"{fpath}: FAISS index (dim {index.d}, {index.ntotal} rows) does not match the gallery "
                                 f"metadata (dim {idx.dim}, {n} rows); rebuild it with `entrep index`")
            if kind == "hnsw":
                faiss.downcast_index(index.index).hnsw.efSearch = int(idx._params.get("efSearch", idx.ef_search))
            elif kind == "ivf" and "nprobe" in idx._params:
                index.nprobe = int(idx._params["nprobe"])
            idx._faiss, idx._kind = index, kind
        return idx


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    """Run FAISS with ``n`` OpenMP threads in this thread (None: unchanged), restoring the setting after.

    OpenMP's thread count is a per-thread setting, so other threads are not affected.
    """
    if n is None:
        yield
        return
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def _faiss_ids(index: faiss.Index) -> np.ndarray | None:
    """External ids stored in a FAISS index we wrote (IDMap2 or native IVF), else None."""
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if isinstance(index, faiss.IndexIVF):
        inv = index.invlists
        parts = [faiss.rev_swig_ptr(inv.get_ids(l), inv.list_size(l)).copy() for l in range(index.nlist) if inv.list_size(l)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return None


def _as_matrix(x, dim: int, *, what: str, allow_1d: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 (N, dim) array; UserError naming the shape otherwise."""
    a = np.asarray(x)
    if a.size == 0 and a.ndim <= 2:
        return np.zeros((0, dim), dtype=np.float32)
    if allow_1d and a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim:
        raise UserError(f"{what} have shape {a.shape} but this gallery index holds dimension {dim} vectors; "
                        "use the encoder (and joint space) the gallery was built with")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UserError(f"{what} must be real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _normalise(a: np.ndarray, *, what: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise UserError(f"{what} {int(bad[0])} holds NaN or infinity; check the encoder output")
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))[:, None]
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise UserError(f"{what} {int(zero[0])} is all zeros and cannot be L2-normalised")
    return np.ascontiguousarray(a / norms, dtype=np.float32)


def _make_item(id_: int, m, row: int) -> GalleryItem:
    if type(m) is dict or isinstance(m, Mapping):
        unknown = m.keys() - _ALLOWED_KEYS
        if unknown:
            raise UserError(f"metadata entry {row} has unknown keys {sorted(unknown)}; valid keys: {list(_ITEM_KEYS)}")
        d = m
    elif isinstance(m, GalleryItem):
        d = m.to_json()
    elif isinstance(m, (str, Path)):
        d = {"path": str(m)}
    elif hasattr(m, "image") and hasattr(m, "label"):  # entrep.data.records.Record
        d = {"path": str(m.image), "name": Path(m.image).name, "label": m.label,
             "group": None, "caption": getattr(m, "text", None)}
    else:
        raise UserError(f"metadata entry {row} is a {type(m).__name__}; give a dict, GalleryItem, Record or path")
    path, name = d.get("path"), d.get("name")
    if not path and not name:
        raise UserError(f"metadata entry {row} needs a path or a name")
    path = str(path) if path else str(name)
    name = str(name) if name else Path(path).name
    opt = [d.get(k) for k in ("label", "group", "caption", "content_hash")]
    return GalleryItem(id_, path, name, *(None if v is None else str(v) for v in opt))


def _repeated(names: Iterable[str]) -> set[str]:
    seen, rep = set(), set()
    for n in names:
        (rep if n in seen else seen).add(n)
    return rep


def _spec_key(spec) -> Any:
    if spec is None:
        return None
    if isinstance(spec, (set, frozenset)):
        try:
            return ("labels", frozenset(spec))
        except TypeError:
            pass
    return ("obj", id(spec))
