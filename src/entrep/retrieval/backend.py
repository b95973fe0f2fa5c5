"""FAISS side of the gallery index: index kinds, building, kind selection, filtered search, thread settings.

The FAISS index is the one place a gallery's vectors live (in memory and, as
``index.faiss``, on disk): :func:`row_vectors` reads them back in row order
(flat and HNSW storage directly, IVF gathered from its inverted lists).

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
import logging
import math
from pathlib import Path

import faiss
import numpy as np

from entrep.errors import ModelError, UserError

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf")
AUTO_THRESHOLD = 100_000
AUTO_APPROX_KIND = "ivf"
IVF_MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below 39 training points per centroid
EXACT_FILTER_FRACTION = 0.3  # approximate indexes answer filters allowing <= this share of rows by exact scan
SINGLE_THREAD_BELOW = 20  # batches smaller than this search on one thread: OpenMP start-up costs more than it saves


def resolve_kind(requested: str, n: int, auto_threshold: int, *, quiet: bool = False) -> str:
    """The structure to build for ``n`` rows: "flat", "hnsw" or "ivf"."""
    kind = requested
    if kind == "auto":
        kind = AUTO_APPROX_KIND if n >= auto_threshold else "flat"
    if kind == "ivf" and n // IVF_MIN_POINTS_PER_LIST < 2:
        if not quiet:
            log.info("IVF needs at least %d rows to train 2 lists; the gallery has %d, so the index is exact (flat)",
                     2 * IVF_MIN_POINTS_PER_LIST, n)
        kind = "flat"
    return kind


def ivf_nlist(n: int) -> int:
    """``~4 sqrt(n)`` lists, capped so every list gets at least IVF_MIN_POINTS_PER_LIST training points."""
    want = max(2, int(round(4 * math.sqrt(n))))
    cap = n // IVF_MIN_POINTS_PER_LIST
    if want > cap:
        log.info("IVF over %d rows: nlist reduced from %d to %d (>= %d training points per list)",
                 n, want, cap, IVF_MIN_POINTS_PER_LIST)
    return min(want, cap)


def build_index(kind: str, vectors: np.ndarray, ids: np.ndarray, *, hnsw_m: int, ef_construction: int,
                ef_search: int, nprobe: int | None, seed: int) -> tuple[faiss.Index, dict]:
    """A new FAISS index of ``kind`` holding ``vectors`` under ``ids``; returns (index, params)."""
    n, d = vectors.shape
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = ef_construction
        base.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap2(base)
        params = {"M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}
    elif kind == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
        index.nprobe = min(nlist, nprobe if nprobe is not None else max(8, nlist // 16))
        params = {"nlist": nlist, "nprobe": int(index.nprobe)}
    else:  # pragma: no cover - guarded by KINDS
        raise UserError(f"unknown index kind {kind!r}")
    if n:
        index.add_with_ids(vectors, ids)
    return index, params


def widen(index: faiss.Index, kind: str, params: dict, n: int, target_recall: float) -> bool:
    """Double nprobe (IVF) or efSearch (HNSW) in place (index and ``params``); False when already at the limit."""
    if kind == "ivf":
        nlist, nprobe = params["nlist"], params["nprobe"]
        if nprobe >= nlist:
            return False
        index.nprobe = params["nprobe"] = min(nlist, 2 * nprobe)
        log.info("IVF recall below %.2f: nprobe %d -> %d", target_recall, nprobe, index.nprobe)
        return True
    ef = params["efSearch"]
    if ef >= n:
        return False
    new = min(n, 2 * ef)
    faiss.downcast_index(index.index).hnsw.efSearch = params["efSearch"] = new
    log.info("HNSW recall below %.2f: efSearch %d -> %d", target_recall, ef, new)
    return True


def hnsw_storage(index: faiss.Index) -> faiss.Index:
    """The flat vectors inside an (id-mapped) HNSW index, in row order (the graph is rebuilt on every removal)."""
    return faiss.downcast_index(faiss.downcast_index(index.index).storage)


def row_vectors(index: faiss.Index | None, kind: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """The vectors stored in ``index``, float32 (N, dim), in the row order of ``ids``.

    Flat and HNSW: a view of FAISS's own storage, valid only until the index
    is next changed or freed (callers copy before handing it out). IVF: a
    copy gathered from the inverted lists.
    """
    n = len(ids)
    if index is None or n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if kind in ("flat", "hnsw"):
        flat = faiss.downcast_index(index.index) if kind == "flat" else hnsw_storage(index)
        return faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
    out = np.empty((n, dim), dtype=np.float32)
    pos = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    pos[ids] = np.arange(n)
    inv = index.invlists
    for lst in range(index.nlist):
        size = inv.list_size(lst)
        if size:
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), size * index.code_size).view(np.float32).reshape(size, dim)
            out[pos[faiss.rev_swig_ptr(inv.get_ids(lst), size)]] = codes
    return out


def id_bitmap(mask: np.ndarray, ids: np.ndarray, next_id: int, keep: list, *, by_row: bool) -> faiss.IDSelector:
    """IDSelectorBitmap over storage positions (``by_row``) or gallery ids for the rows in ``mask``.

    The packed bitmap and the selector are appended to ``keep``, which must
    outlive the search: the selector points into the bitmap.
    """
    if by_row:
        bits, size = mask, len(mask)
    else:
        bits = np.zeros(next_id, dtype=bool)
        bits[ids[mask]] = True
        size = next_id
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(size, faiss.swig_ptr(packed))
    keep += [packed, sel]
    return sel


def faiss_search(index: faiss.Index, kind: str, params: dict, ids: np.ndarray, next_id: int, q: np.ndarray, k: int,
                 mask: np.ndarray | None, *, exact: bool, frac: float = 1.0,
                 ef_search: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) from FAISS, restricted to ``mask`` rows by an IDSelector; -1 ids pad short results.

    ``exact`` scans every allowed vector: flat as is, HNSW through its flat
    storage (rows = storage positions), IVF with every list probed. Filtered
    approximate searches widen efSearch by 1/frac**2, nprobe by 1/frac.
    """
    keep: list = []  # bitmaps must outlive the search: the selectors point into them
    n = len(ids)
    if kind == "hnsw" and exact:
        storage = hnsw_storage(index)
        sp = None if mask is None else faiss.SearchParameters(sel=id_bitmap(mask, ids, next_id, keep, by_row=True))
        scores, rows = storage.search(q, k, params=sp)
        return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
    sel = None if mask is None else id_bitmap(mask, ids, next_id, keep, by_row=False)
    if kind == "hnsw":
        base = int(params.get("efSearch", ef_search))
        # a filtered graph walk must pass through disallowed nodes: 1/frac**2 keeps recall@10 near 0.97
        # where 1/frac gave 0.93 (benchmarks, filter allowing 57% of rows away from the query)
        ef = base if mask is None else max(base, min(int(math.ceil(base / frac**2)), n))
        sp = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, k))
    elif kind == "ivf":
        nlist, base = int(index.nlist), int(params.get("nprobe", index.nprobe))
        nprobe = nlist if exact else min(nlist, int(math.ceil(base / frac)))
        sp = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
    else:
        sp = None if sel is None else faiss.SearchParameters(sel=sel)
    scores, found = index.search(q, k, params=sp)
    del keep
    return scores, found


@contextlib.contextmanager
def faiss_threads(n: int | None):
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


def stored_ids(index: faiss.Index) -> np.ndarray | None:
    """External ids stored in a FAISS index we wrote (IDMap2 or native IVF), else None."""
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if isinstance(index, faiss.IndexIVF):
        inv = index.invlists
        parts = [faiss.rev_swig_ptr(inv.get_ids(l), inv.list_size(l)).copy() for l in range(index.nlist) if inv.list_size(l)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return None


def read_index(fpath: Path, kind: str, ids: np.ndarray, dim: int, params: dict, ef_search: int) -> faiss.Index:
    """Read ``index.faiss`` and check it holds exactly ``ids`` at ``dim``; ModelError naming the file otherwise."""
    if kind not in KINDS[1:]:
        raise ModelError(f"{fpath.parent}: unknown index kind {kind!r}; rebuild it with `entrep index`")
    if not fpath.is_file():
        raise ModelError(f"{fpath}: FAISS index file is missing; rebuild it with `entrep index`")
    try:
        index = faiss.read_index(str(fpath))
    except RuntimeError as e:
        raise ModelError(f"{fpath}: cannot read FAISS index ({str(e).splitlines()[0][:200]}); rebuild it with `entrep index`") from None
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
    expected = {"flat": isinstance(inner, faiss.IndexFlat), "hnsw": isinstance(inner, faiss.IndexHNSWFlat),
                "ivf": isinstance(index, faiss.IndexIVFFlat)}[kind]
    if not expected:
        raise ModelError(f"{fpath}: FAISS index is a {type(index).__name__}, not the {kind} index the gallery "
                         "metadata names; rebuild it with `entrep index`")
    stored = stored_ids(index)
    if stored is not None and kind == "ivf":  # IVF lists hold ids in list order; the others in row order
        stored, ids_in_order = np.sort(stored), np.sort(ids)
    else:
        ids_in_order = ids
    if index.d != dim or index.ntotal != len(ids) or stored is None or not np.array_equal(stored, ids_in_order):
        raise ModelError(f"{fpath}: FAISS index (dim {index.d}, {index.ntotal} rows) does not match the gallery "
                         f"metadata (dim {dim}, {len(ids)} rows); rebuild it with `entrep index`")
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(params.get("efSearch", ef_search))
    elif kind == "ivf" and "nprobe" in params:
        index.nprobe = int(params["nprobe"])
    return index
