"""Gallery index: FAISS inner-product search over L2-normalised vectors with row-aligned metadata.

A :class:`GalleryIndex` holds, for every gallery image, one vector and one
:class:`GalleryItem` (stable id, path, name, label, group, caption, content
hash). Vectors are L2-normalised on the way in, so scores are cosine
similarities. Ids are assigned incrementally and never reused, so an id held by
a caller keeps meaning the same image after removals and additions.

Composed from :mod:`~entrep.retrieval.store` (rows, ids, metadata file),
:mod:`~entrep.retrieval.backend` (FAISS kinds "flat", "hnsw", "ivf", "auto",
building, filtered search), :mod:`~entrep.retrieval.filters` (``allowed=`` /
``exclude_ids=`` specs) and :mod:`~entrep.retrieval.approx` (recall@10 of an
approximate index against exact search, kept in
:attr:`GalleryIndex.build_report`). The vectors live once: in the FAISS index
(flat, HNSW, IVF), or for IVF-PQ, whose FAISS index holds only codes, in a
float32 array that a loaded gallery memory-maps from ``vectors.npy``.
See docs/scale.md for galleries of millions.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import faiss
import numpy as np

from entrep.errors import ModelError, UserError
from entrep.io import atomic_path
from entrep.retrieval import approx, backend, filters, store
from entrep.retrieval.approx import BuildReport
from entrep.retrieval.backend import (AUTO_APPROX_KIND, AUTO_PQ_THRESHOLD, AUTO_THRESHOLD, EXACT_FILTER_FRACTION, KINDS,
                                      SINGLE_THREAD_BELOW)
from entrep.retrieval.filters import AllowedSpec
from entrep.retrieval.store import GalleryItem, Hit

log = logging.getLogger(__name__)

__all__ = ["AUTO_APPROX_KIND", "AUTO_PQ_THRESHOLD", "AUTO_THRESHOLD", "BuildReport", "EXACT_FILTER_FRACTION", "GalleryIndex",
           "GalleryItem", "Hit", "KINDS", "SINGLE_THREAD_BELOW"]

FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"  # IVF-PQ only: the float vectors, memory-mapped on load
SETTINGS = ("auto_threshold", "auto_pq_threshold", "hnsw_m", "ef_construction", "ef_search", "nprobe", "report_queries",
            "target_recall", "seed")  # constructor settings saved in gallery.json


class GalleryIndex:
    """FAISS inner-product index over L2-normalised vectors with row-aligned metadata.

    Parameters: ``dim`` (vector length), ``kind`` (see module docs),
    ``auto_threshold`` (row count at which "auto" turns approximate),
    ``auto_pq_threshold`` (row count at which "auto" turns IVF-PQ),
    ``hnsw_m`` / ``ef_construction`` / ``ef_search`` (HNSW), ``nprobe`` (IVF lists
    probed per query; None: ``max(8, nlist // 16)``), ``report_queries`` (sample
    size for :attr:`build_report`), ``target_recall`` (after a build, nprobe /
    efSearch are doubled until the measured recall@10 reaches it; None: keep
    them as given), ``seed`` (sampling for training and reports).

    Rows are in insertion order; :attr:`ids`, :attr:`vectors` and :attr:`items`
    are aligned with each other (and with any boolean ``allowed`` mask). The
    vectors are held once, by the FAISS index. Searches and mutations are
    serialised by a lock, so one index can serve several threads.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        auto_threshold: int = AUTO_THRESHOLD,
        auto_pq_threshold: int = AUTO_PQ_THRESHOLD,
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
        if auto_pq_threshold < auto_threshold:
            raise UserError(f"auto_pq_threshold ({auto_pq_threshold}) must be >= auto_threshold ({auto_threshold})")
        self.auto_pq_threshold = int(auto_pq_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.report_queries = int(report_queries)
        if target_recall is not None and not 0 < target_recall <= 1:
            raise UserError(f"target_recall must be in (0, 1] or None, got {target_recall}")
        self.target_recall = target_recall
        self.seed = int(seed)
        self._store = store.RowStore()
        self._faiss: faiss.Index | None = None
        self._vecs: np.ndarray | None = None  # IVF-PQ only: row-ordered float vectors (memory-mapped once loaded)
        self._kind = "flat"
        self._params: dict = {}
        self._trained_on = 0
        self.build_report: BuildReport | None = None
        self._lock = threading.RLock()

    # ---- size, rows, metadata -----------------------------------------
    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"GalleryIndex(dim={self.dim}, kind={self.kind!r}, requested={self.requested_kind!r}, n={len(self)})"

    @property
    def kind(self) -> str:
        """The structure actually in use: "flat", "hnsw", "ivf" or "ivfpq"."""
        if self._faiss is not None:
            return self._kind
        return self._resolve(quiet=True)

    def _resolve(self, *, quiet: bool = False) -> str:
        return backend.resolve_kind(self.requested_kind, len(self), self.auto_threshold, self.auto_pq_threshold,
                                    quiet=quiet)

    @property
    def vector_storage(self) -> str:
        """Where the float vectors live: "faiss" (flat, HNSW, IVF), "memory-mapped" (a loaded IVF-PQ gallery's
        vectors.npy) or "memory" (IVF-PQ built or changed since loading)."""
        if self._kind != "ivfpq" or self._faiss is None:
            return "faiss"
        return "memory-mapped" if isinstance(self._vecs, np.memmap) else "memory"

    @property
    def approximation(self) -> dict | None:
        """The build report as a dict (what ``evaluate --json`` and ``/healthz`` carry); None for an exact index."""
        return self.build_report.to_dict() if self.build_report is not None and self._kind != "flat" else None

    @property
    def params(self) -> dict:
        """Parameters of the built structure (nlist/nprobe, M/efSearch, m/nbits/rerank); empty for flat."""
        return dict(self._params)

    @property
    def ids(self) -> np.ndarray:
        """Row-ordered ids (a copy)."""
        return self._store.ids.copy()

    @property
    def vectors(self) -> np.ndarray:
        """Row-ordered L2-normalised vectors, float32 (N, dim); a read-only copy of what the FAISS index holds."""
        with self._lock:
            v = np.array(self._rows(), dtype=np.float32)
        v.flags.writeable = False
        return v

    @property
    def items(self) -> list[GalleryItem]:
        """Row-ordered metadata of every row: builds one object per row, so large galleries should look up by id."""
        with self._lock:
            return list(self._store.iter_items())

    @property
    def next_id(self) -> int:
        return self._store.next_id

    def metadata_for(self, ids: Iterable[int]) -> list[GalleryItem]:
        """Metadata of the given ids, in the given order; UserError for an unknown id."""
        ids = [int(i) for i in ids]
        with self._lock:
            self._store.rows_of(ids)
            return self._store.items_for(ids)

    def ids_for_names(self, names: Iterable[str]) -> list[int]:
        """Ids of rows whose file name is one of ``names`` (all rows sharing a name)."""
        with self._lock:
            return self._store.ids_for_names(names)

    def ids_for_hashes(self, hashes: Iterable[str | None]) -> dict[str, set[int]]:
        """Ids of the rows holding each content hash (only hashes present), looked up without reading every row."""
        want = {h for h in hashes if h}
        with self._lock:
            ids = self._store.ids_where("content_hash", want)
            out: dict[str, set[int]] = {}
            for it in self._store.items_for(ids):
                out.setdefault(it.content_hash, set()).add(it.id)
            return out

    def mask(self, predicate: Callable[[GalleryItem], bool]) -> np.ndarray:
        """Boolean row mask (aligned with :attr:`ids`) of rows where ``predicate(item)`` holds."""
        return self._store.mask(predicate)

    def label_mask(self, labels: Iterable[str | None]) -> np.ndarray:
        """Boolean row mask of rows whose label is in ``labels``."""
        return self._store.label_mask(labels)

    def _rows(self) -> np.ndarray:
        """Row-ordered vectors; for flat/HNSW a view into FAISS, valid until the index next changes (hold the lock)."""
        if self._kind == "ivfpq" and self._faiss is not None:
            return self._vecs
        return backend.row_vectors(self._faiss, self._kind, self._store.ids, self.dim)

    # ---- adding and removing -------------------------------------------
    def add(self, vectors: np.ndarray, metadata: Sequence[Mapping | GalleryItem | Any]) -> list[int]:
        """Add rows; returns their new ids.

        ``metadata[i]`` describes ``vectors[i]``: a dict with any of
        path, name, label, group, caption, content_hash (path or name required;
        name defaults to the path's file name), a :class:`GalleryItem` (its id
        is replaced), an ``entrep.data.records.Record``, or a path.
        """
        vecs = store.as_matrix(vectors, self.dim, what="gallery vectors")
        if len(metadata) != len(vecs):
            raise UserError(f"{len(vecs)} gallery vectors but {len(metadata)} metadata entries; give one entry per vector")
        if len(vecs) == 0:
            return []
        vecs = store.normalise(vecs, what="gallery vector")
        with self._lock:
            saved = self._store.snapshot()
            try:
                new_ids, _ = self._store.append(metadata)
                target = self._resolve()
                if self._faiss is None or target != self._kind:
                    old = (self._vecs if self._kind == "ivfpq" and self._faiss is not None else
                           backend.row_vectors(self._faiss, self._kind, saved[0], self.dim))  # rows before this add
                    if self._faiss is not None:
                        log.info("gallery grew to %d rows: switching index from %s to %s", len(self), self._kind, target)
                    self._build(target, np.concatenate([old, vecs]) if len(old) else vecs)
                else:
                    if self._kind == "ivfpq":  # a loaded gallery's memory map becomes an in-memory copy until saved
                        self._vecs = np.concatenate([self._vecs, vecs])
                    self._faiss.add_with_ids(vecs, new_ids)
            except BaseException:  # leave the index as it was (a failed build never replaces self._faiss)
                self._store.restore(saved)
                raise
            if self._kind in ("ivf", "ivfpq") and len(self) > 4 * self._trained_on:
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
            drop, missing = self._store.ids_to_drop(ids_or_names)
            if missing and not missing_ok:
                raise UserError(f"cannot remove {missing[:5]}{' ...' if len(missing) > 5 else ''}: not in the gallery")
            if not drop:
                return []
            removed = np.array(sorted(drop), dtype=np.int64)
            keep = ~np.isin(self._store.ids, removed)
            if self._kind == "hnsw" and self._faiss is not None:
                kept = np.array(self._rows()[keep])  # a copy: the old graph is freed by the rebuild
                self._store.keep(keep)
                log.info("HNSW cannot delete in place: rebuilding the graph over %d rows", len(self))
                self._build("hnsw", kept)
            else:
                self._store.keep(keep)
                if self._kind == "ivfpq" and self._faiss is not None:
                    self._vecs = np.ascontiguousarray(self._vecs[keep])
                if self._faiss is not None:
                    n = self._faiss.remove_ids(removed)
                    if n != len(removed):  # pragma: no cover - would mean the FAISS index and rows disagree
                        raise ModelError(f"FAISS removed {n} of {len(removed)} rows; call rebuild()")
            return [int(i) for i in removed]

    def rebuild(self) -> "GalleryIndex":
        """Rebuild the FAISS structure from the stored vectors (re-choosing "auto"/"ivf" for the current size)."""
        with self._lock:
            vecs = np.array(self._rows(), dtype=np.float32)
            self._build(self._resolve(), vecs)
        return self

    # ---- building -------------------------------------------------------
    def _build(self, kind: str, vectors: np.ndarray) -> None:
        """Replace the FAISS structure by a ``kind`` index over ``vectors`` (row order); measure it if approximate."""
        t0 = time.perf_counter()
        index, params = backend.build_index(kind, vectors, self._store.ids, hnsw_m=self.hnsw_m,
                                            ef_construction=self.ef_construction, ef_search=self.ef_search,
                                            nprobe=self.nprobe, seed=self.seed)
        self._faiss, self._kind, self._params = index, kind, params
        if kind in ("ivf", "ivfpq"):
            self._trained_on = len(vectors)
        # IVF-PQ keeps the float vectors beside its codes; for the other kinds the FAISS index holds the only copy
        self._vecs = np.ascontiguousarray(vectors, dtype=np.float32) if kind == "ivfpq" else None
        build_s = time.perf_counter() - t0
        del vectors
        if kind == "flat":
            self.build_report = None
            log.debug("built exact flat index over %d rows in %.2fs", len(self), build_s)
            return
        truth = self._ground_truth()
        filters = self._filter_truth(truth[0])

        def measure() -> BuildReport:
            r = self.measure_approximation(build_s=build_s, _truth=truth)
            return dataclasses.replace(r, filtered=self._filtered_recall(truth[0], filters))

        def worst(r: BuildReport) -> float | None:  # IVF kinds widen for their filtered recall too; HNSW's
            # filtered walk already widens efSearch by 1/frac**2, and doubling it to n would take hours at 1M
            vals = [r.recall_at_10] + [f["recall_at_10"] for f in (r.filtered or {}).values() if kind != "hnsw"]
            vals = [v for v in vals if v is not None]
            return min(vals) if vals else None

        report = measure()
        while (self.target_recall is not None and worst(report) is not None and worst(report) < self.target_recall
               and backend.widen(self._faiss, self._kind, self._params, len(self), self.target_recall)):
            report = measure()
        self.build_report = report
        log.info("built %s index over %d rows (%s) in %.1fs: recall@10 vs exact %s, %.2f ms/query (exact %.2f)",
                 kind, len(self), self._params, build_s,
                 "n/a" if report.recall_at_10 is None else f"{report.recall_at_10:.3f}",
                 report.approx_ms_per_query, report.exact_ms_per_query)

    def _filter_truth(self, rows: np.ndarray, k: int = 10) -> dict:
        """The build report's two class filters (approx.label_filters) with the exact top k of ``rows`` under each."""
        chosen = approx.label_filters(self._store.codes, self._store.labels)
        if not len(rows):
            return {}
        return {name: (labels, mask, approx.ground_truth(self._rows(), self._store.ids, rows, k, allowed=mask))
                for name, (labels, mask) in chosen.items()}

    def _filtered_recall(self, rows: np.ndarray, filters: dict, k: int = 10) -> dict | None:
        """Recall@k under the build report's class filters, searched as filtered queries are (the same
        exact-scan rule and widening); None when the gallery has fewer than two labels."""
        if not filters:
            return None
        vecs, ids = self._rows(), self._store.ids
        q = np.ascontiguousarray(vecs[rows])
        out = {}
        for name, (labels, mask, truth) in filters.items():
            frac = float(mask.mean())
            with backend.faiss_threads(1):
                _, found = self._faiss_search(q, min(k + 1, len(self)), mask, exact=self._exact_for(mask, frac),
                                              frac=frac)
            recall = approx.recall_of(found, ids[rows], truth, k)
            out[name] = {"labels": labels, "fraction": round(frac, 4),
                         "recall_at_10": None if recall is None else round(recall, 4)}
        return out

    def _exact_for(self, mask: np.ndarray | None, frac: float) -> bool:
        """Whether a search under ``mask`` (allowing ``frac`` of the rows) scans exactly (see backend docs).

        IVF-PQ never probes every list for a filter (at 1M that reads every code): nprobe / frac, with its recall
        measured in the build report; its small filters scan their float vectors instead (EXACT_SCAN_ROWS).
        """
        return self._kind == "flat" or (mask is not None and frac <= EXACT_FILTER_FRACTION and self._kind != "ivfpq")

    def _ground_truth(self, n_queries: int | None = None, k: int = 10) -> tuple[np.ndarray, list[set[int]]]:
        rows = approx.sample_rows(len(self), self.report_queries if n_queries is None else n_queries, self.seed)
        return rows, approx.ground_truth(self._rows(), self._store.ids, rows, k)  # sampled rows, their exact top k

    def measure_approximation(self, n_queries: int | None = None, *, k: int = 10, build_s: float = 0.0,
                              _truth: tuple[np.ndarray, list[set[int]]] | None = None) -> BuildReport:
        """Recall@k of the current structure against exact search, on a seeded sample of gallery rows.

        Each sampled row is a query; its own row is left out of both the exact
        and the approximate neighbour lists. Also times single-query searches
        (approximate, and the exact scan this index falls back to).
        """
        with self._lock:
            rows, truth = _truth if _truth is not None else self._ground_truth(n_queries, k)
            q = np.ascontiguousarray(self._rows()[rows])
            recall, approx_ms, exact_ms = approx.measure_approximation(
                q, self._store.ids[rows], truth, len(self), k=k,
                approx=lambda x, kk: self._faiss_search(x, kk, None, exact=False),
                exact=lambda x, kk: self._faiss_search(x, kk, None, exact=True))
            return BuildReport(kind=self._kind, n=len(self), dim=self.dim, params=dict(self._params),
                               build_s=round(build_s, 4), n_sample=len(rows), recall_at_10=recall,
                               approx_ms_per_query=round(approx_ms, 4), exact_ms_per_query=round(exact_ms, 4))

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
        q = store.as_matrix(queries, self.dim, what="query vectors", allow_1d=True)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        n_q = len(q)
        if n_q == 0:
            return []
        q = store.normalise(q, what="query vector")
        with self._lock:
            if len(self) == 0:
                return [[] for _ in range(n_q)]
            groups = filters.group_by_mask(allowed, n_q, len(self), label_mask=self.label_mask, predicate_mask=self.mask)
            excl = filters.per_query_ids(exclude_ids, n_q)
            out: list[list[Hit]] = [[] for _ in range(n_q)]
            with backend.faiss_threads(1 if n_q < SINGLE_THREAD_BELOW else None):
                for mask, members in groups:
                    hits = self._search_group(q[members], mask, [excl[j] for j in members], k)
                    for j, h in zip(members, hits):
                        out[j] = h
            return out

    def _search_group(self, q: np.ndarray, mask: np.ndarray | None, excl: list[frozenset], k: int) -> list[list[Hit]]:
        """Search queries sharing one allowed-row mask; each query has its own excluded ids."""
        n = len(self)
        n_allowed = n if mask is None else int(mask.sum())
        if n_allowed == 0:
            return [[] for _ in q]
        frac = n_allowed / n
        exact = self._exact_for(mask, frac)
        k_fetch = min(k + max(len(e) for e in excl), n_allowed)
        scores, labels = self._faiss_search(q, k_fetch, mask, exact=exact, frac=frac)
        results = []
        for j in range(len(q)):
            e = excl[j]
            want = min(k, n_allowed - self._n_allowed_among(e, mask))
            hits = self._store.hits(scores[j], labels[j], mask, e, want)
            if len(hits) < want:
                log.debug("%s search returned %d of %d allowed hits; searching exactly", self._kind, len(hits), want)
                s1, l1 = self._faiss_search(q[j : j + 1], min(k + len(e), n_allowed), mask, exact=True, frac=frac)
                hits = self._store.hits(s1[0], l1[0], mask, e, want)
            results.append(hits)
        return results

    def _n_allowed_among(self, excluded: frozenset, mask: np.ndarray | None) -> int:
        """How many of the ``excluded`` ids are gallery rows that ``mask`` allows."""
        if not excluded:
            return 0
        rows, ok = self._store.present(np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
        return int((ok & mask[rows]).sum() if mask is not None else ok.sum())

    def _faiss_search(self, q: np.ndarray, k: int, mask: np.ndarray | None, *, exact: bool,
                      frac: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return backend.faiss_search(self._faiss, self._kind, self._params, self._store.ids, self._store.next_id,
                                    q, k, mask, exact=exact, frac=frac, ef_search=self.ef_search, vectors=self._vecs)

    # ---- saving and loading ---------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` atomically (format version 3, see :mod:`~entrep.retrieval.store`).

        gallery.json (settings, label vocabulary, build report), rows.npy and
        rows.sqlite (ids, label codes, metadata), index.faiss, and for IVF-PQ
        vectors.npy (the float vectors, once; the FAISS file holds only codes).
        """
        folder = Path(folder)
        with self._lock, atomic_path(folder) as tmp:
            tmp.mkdir()
            rows = self._store.write(tmp)
            meta = {
                "dim": self.dim,
                "requested_kind": self.requested_kind,
                "kind": self._kind if self._faiss is not None else None,
                "settings": {k: getattr(self, k) for k in SETTINGS},
                "params": self._params,
                "trained_on": self._trained_on,
                "build_report": self.build_report.to_dict() if self.build_report else None,
                **rows,
            }
            if self._faiss is not None:
                faiss.write_index(self._faiss, str(tmp / FAISS_FILE))
                if self._kind == "ivfpq":
                    with open(tmp / VECTORS_FILE, "wb") as f:
                        np.save(f, np.ascontiguousarray(self._vecs, dtype=np.float32))
            store.write_meta(tmp / store.META_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "GalleryIndex":
        """Read an index written by :meth:`save`: ids and label codes into memory, metadata left in SQLite, IVF-PQ
        vectors memory-mapped. Folders of versions 1-2 (metadata as one JSON list) are converted in memory.

        ModelError naming the folder if it is missing, corrupt or another version.
        """
        folder = Path(folder)
        meta = store.read_meta(folder)
        meta_path = folder / store.META_FILE
        try:
            s = meta["settings"]
            kwargs = {k: s[k] for k in SETTINGS if k in s}
            idx = cls(int(meta["dim"]), kind=meta["requested_kind"], **kwargs)
            next_id, n, kind = int(meta["next_id"]), int(meta["n"]), meta["kind"]
            report = BuildReport(**meta["build_report"]) if meta.get("build_report") else None
            if meta["version"] in store.JSON_ITEM_VERSIONS:
                items = store.parse_items(meta["items"], n, next_id, meta_path)
                if any(a.id >= b.id for a, b in zip(items, items[1:])):
                    raise ModelError(f"{meta_path}: gallery rows are not in id order; rebuild it with `entrep index`")
                log.info("%s: gallery format version %s keeps its metadata as one JSON list; converted in memory "
                         "(the next save, e.g. `entrep index`, writes the SQLite store)", folder, meta["version"])
                idx._store.set_rows(items, next_id)
            else:
                idx._store = store.RowStore.read(folder, meta)
        except (KeyError, TypeError, ValueError, UserError) as e:
            raise ModelError(f"{meta_path}: gallery index metadata is incomplete or invalid ({e}); "
                             "rebuild it with `entrep index`") from None
        idx._params, idx._trained_on, idx.build_report = dict(meta.get("params") or {}), int(meta.get("trained_on", 0)), report
        if kind is None:
            if n:
                raise ModelError(f"{meta_path}: {n} gallery rows but no FAISS index; rebuild it with `entrep index`")
        else:
            idx._faiss = backend.read_index(folder / FAISS_FILE, kind, idx._store.ids, idx.dim, idx._params,
                                            idx.ef_search)
            idx._kind = kind
            if kind == "ivfpq":
                idx._vecs = backend.read_vectors(folder / VECTORS_FILE, n, idx.dim)
        return idx
