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
- ``"ivfpq"``: ``IndexIVFPQ`` (inner product, native ids like IVF) holding only
  PQ codes: ``m`` sub-quantizers (the largest divisor of dim not above dim/4,
  so 128 at dim 512: 128 bytes a vector) of ``nbits`` = 8 bits (fewer below
  10k rows, so every code word gets >= 39 training points), ``nlist`` as for
  IVF, trained on a seeded sample of at most 64 points per list. A search
  fetches the top ``R = max(rerank_factor * k, rerank_min)`` candidates
  (20k and 200 to start, :data:`RERANK_FACTOR`, :data:`RERANK_MIN`; raised
  with nprobe until the build-time recall@10 reaches ``target_recall``) and re-ranks them exactly against the float
  vectors, which live once, in a memory-mapped ``vectors.npy`` (np.load
  mmap_mode="r"), not in the FAISS index. Scores are therefore exact cosines.
- ``"auto"``: flat below ``auto_threshold`` (:data:`AUTO_THRESHOLD`, 100,000)
  rows, IVF-Flat (:data:`AUTO_APPROX_KIND`) below ``auto_pq_threshold``
  (:data:`AUTO_PQ_THRESHOLD`, 2,000,000: where IVF-Flat's float vectors in
  RAM pass 4 GB at dim 512), IVF-PQ above (see docs/retrieval.md and
  docs/scale.md for the measurements behind these choices). Re-evaluated when
  additions cross a threshold.

Filtering (:meth:`GalleryIndex.search` ``allowed=`` / ``exclude_ids=``) never
returns a filtered-out or excluded row: FAISS searches with an ``IDSelector``.
Flat search is exact. Approximate indexes answer filters that allow at most
30% of the rows (:data:`EXACT_FILTER_FRACTION`) by an exact scan of the allowed
vectors (HNSW through its flat storage, IVF with every list probed, IVF-PQ
with every list probed before its exact re-ranking): graph and list search
lose most of their recall when the allowed rows lie away from the query.
IVF-PQ is the exception: it answers a filter allowing at most
:data:`EXACT_SCAN_ROWS` rows by an exact scan of those rows' float vectors,
and any wider one with nprobe widened by 1/fraction (never every list: at 1M
that would read every code per filtered query; the recall kept is measured
in each build report, which widens nprobe and R when it falls short). Wider filters widen efSearch by 1/fraction**2 and nprobe by
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

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
AUTO_THRESHOLD = 100_000
AUTO_APPROX_KIND = "ivf"
AUTO_PQ_THRESHOLD = 2_000_000  # "auto" builds IVF-PQ from this many rows (IVF-Flat below)
# m = dim / 4 sub-quantizers (128-byte codes at dim 512): more recall under filters than dim / 8 at the 1M
# benchmark's cluster density (docs/scale.md, tuning runs)
PQ_DIMS_PER_SUBQUANTIZER = 4
PQ_TRAIN_PER_LIST = 64  # IVF-PQ trains on a seeded sample of at most this many points per list
# IVF-PQ re-ranks the top R = max(RERANK_FACTOR * k, RERANK_MIN) PQ candidates exactly. With 128-byte codes at
# dim 512, R = 200 kept the recall of R = 500 and 1,000 to within 0.001 (docs/scale.md, tuning runs at 100k x 512),
# and touches fewer rows of the memory-mapped vectors per query.
RERANK_FACTOR = 20
RERANK_MIN = 200
RERANK_MAX = 8192  # widening stops raising the candidate count here
EXACT_SCAN_ROWS = 10_000  # IVF-PQ: filters allowing at most this many rows scan their float vectors exactly
IVF_MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below 39 training points per centroid
EXACT_FILTER_FRACTION = 0.3  # approximate indexes answer filters allowing <= this share of rows by exact scan
SINGLE_THREAD_BELOW = 20  # batches smaller than this search on one thread: OpenMP start-up costs more than it saves


def resolve_kind(requested: str, n: int, auto_threshold: int, auto_pq_threshold: int = AUTO_PQ_THRESHOLD, *,
                 quiet: bool = False) -> str:
    """The structure to build for ``n`` rows: "flat", "hnsw", "ivf" or "ivfpq"."""
    kind = requested
    if kind == "auto":
        kind = "flat" if n < auto_threshold else "ivfpq" if n >= auto_pq_threshold else AUTO_APPROX_KIND
    if kind in ("ivf", "ivfpq") and n // IVF_MIN_POINTS_PER_LIST < 2:
        if not quiet:
            log.info("%s needs at least %d rows to train 2 lists; the gallery has %d, so the index is exact (flat)",
                     kind.upper(), 2 * IVF_MIN_POINTS_PER_LIST, n)
        kind = "flat"
    return kind


def pq_shape(n: int, d: int) -> tuple[int, int]:
    """(m, nbits) of IVF-PQ codes: m the largest divisor of d not above d / PQ_DIMS_PER_SUBQUANTIZER; 8 bits,
    fewer below 39 * 256 rows."""
    m = max(x for x in range(1, max(1, d // PQ_DIMS_PER_SUBQUANTIZER) + 1) if d % x == 0)
    nbits = max(1, min(8, int(math.log2(max(2, n // IVF_MIN_POINTS_PER_LIST)))))
    return m, nbits


def rerank_count(k: int, params: dict) -> int:
    """How many IVF-PQ candidates are re-ranked exactly for a top-``k`` search."""
    return max(int(params.get("rerank_factor", RERANK_FACTOR)) * k, int(params.get("rerank_min", RERANK_MIN)), k)


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
    elif kind == "ivfpq":
        nlist = ivf_nlist(n)
        m, nbits = pq_shape(n, d)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = index.pq.cp.seed = seed
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, PQ_TRAIN_PER_LIST * nlist), replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        index.nprobe = min(nlist, nprobe if nprobe is not None else max(8, nlist // 16))
        params = {"nlist": nlist, "nprobe": int(index.nprobe), "m": m, "nbits": nbits, "trained_on": len(rows),
                  "rerank_factor": RERANK_FACTOR, "rerank_min": RERANK_MIN}
    else:  # pragma: no cover - guarded by KINDS
        raise UserError(f"unknown index kind {kind!r}")
    if n:
        for j in range(0, n, 262_144):  # blocks: a memory-mapped input is read once, without a whole copy
            index.add_with_ids(np.ascontiguousarray(vectors[j : j + 262_144], dtype=np.float32), ids[j : j + 262_144])
    return index, params


def widen(index: faiss.Index, kind: str, params: dict, n: int, target_recall: float) -> bool:
    """Double nprobe (IVF; IVF-PQ also its re-ranked candidates) or efSearch (HNSW) in place; False at the limit."""
    if kind == "ivfpq":
        nlist, nprobe, rmin = params["nlist"], params["nprobe"], params["rerank_min"]
        if nprobe >= nlist and rmin >= RERANK_MAX:
            return False
        index.nprobe = params["nprobe"] = min(nlist, 2 * nprobe)
        params["rerank_min"] = min(RERANK_MAX, 2 * rmin)
        params["rerank_factor"] = min(max(RERANK_FACTOR, RERANK_MAX // 10), 2 * params["rerank_factor"])
        log.info("IVF-PQ recall below %.2f: nprobe %d -> %d, re-ranked candidates max(%dk, %d)", target_recall,
                 nprobe, index.nprobe, params["rerank_factor"], params["rerank_min"])
        return True
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
    elif len(ids) == next_id and (not len(ids) or (ids[0] == 0 and ids[-1] == next_id - 1)):
        bits, size = mask, next_id  # ids are 0..n-1 in row order (increasing, none removed): ids == rows
    else:
        bits = np.zeros(next_id, dtype=bool)
        bits[ids[mask]] = True
        size = next_id
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(size, faiss.swig_ptr(packed))
    keep += [packed, sel]
    return sel


def faiss_search(index: faiss.Index, kind: str, params: dict, ids: np.ndarray, next_id: int, q: np.ndarray, k: int,
                 mask: np.ndarray | None, *, exact: bool, frac: float = 1.0, ef_search: int = 128,
                 vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) from FAISS, restricted to ``mask`` rows by an IDSelector; -1 ids pad short results.

    ``exact`` scans every allowed vector: flat as is, HNSW through its flat
    storage (rows = storage positions), IVF with every list probed (IVF-PQ:
    every list's codes, then the exact re-ranking). Filtered approximate
    searches widen efSearch by 1/frac**2, nprobe by 1/frac. IVF-PQ needs
    ``vectors`` (row order, float32) for its re-ranking.
    """
    keep: list = []  # bitmaps must outlive the search: the selectors point into them
    n = len(ids)
    if kind == "ivfpq":
        if mask is not None and int(mask.sum()) <= EXACT_SCAN_ROWS:
            return exact_scan(vectors, ids, q, k, np.flatnonzero(mask))
        sel = None if mask is None else id_bitmap(mask, ids, next_id, keep, by_row=False)
        nlist, base = int(index.nlist), int(params.get("nprobe", index.nprobe))
        nprobe = nlist if exact else min(nlist, int(math.ceil(base / frac)))
        _, cand = index.search(q, min(rerank_count(k, params), n), params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
        del keep
        return rerank(vectors, ids, q, cand, k)
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


def exact_scan(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, ids) over ``vectors[rows]`` (all rows when None); -1 ids pad short results."""
    sub = vectors if rows is None else take_rows(vectors, rows)
    sub_ids = ids if rows is None else ids[rows]
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    found = np.full((len(q), k), -1, dtype=np.int64)
    if len(sub):
        s, pos = faiss.knn(np.ascontiguousarray(q), np.ascontiguousarray(sub, dtype=np.float32), min(k, len(sub)),
                           metric=faiss.METRIC_INNER_PRODUCT)
        scores[:, : s.shape[1]], found[:, : s.shape[1]] = s, np.where(pos >= 0, sub_ids[np.maximum(pos, 0)], -1)
    return scores, found


def rerank(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, cand: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine re-ranking of candidate ids ``cand`` (Q, R; -1 = none) against ``vectors`` (row order of ``ids``).

    Returns the top ``k`` (scores, ids), -1 ids padding short lists. One query
    at a time, its candidate rows read in increasing order (kind to a memory
    map), so memory stays at R vectors whatever the batch size.
    """
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    found = np.full((len(q), k), -1, dtype=np.int64)
    for j in range(len(q)):
        c = cand[j][cand[j] >= 0]
        if not len(c):
            continue
        rows = np.searchsorted(ids, c)
        order = np.argsort(rows, kind="stable")
        sims = np.empty(len(c), dtype=np.float32)
        sims[order] = take_rows(vectors, rows[order]) @ q[j]
        top = np.argsort(-sims, kind="stable")[:k]
        scores[j, : len(top)], found[j, : len(top)] = sims[top], c[top]
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
                "ivf": isinstance(index, faiss.IndexIVFFlat), "ivfpq": isinstance(index, faiss.IndexIVFPQ)}[kind]
    if not expected:
        raise ModelError(f"{fpath}: FAISS index is a {type(index).__name__}, not the {kind} index the gallery "
                         "metadata names; rebuild it with `entrep index`")
    stored = stored_ids(index)
    if stored is not None and kind in ("ivf", "ivfpq"):  # IVF lists hold ids in list order; the others in row order
        stored, ids_in_order = np.sort(stored), np.sort(ids)
    else:
        ids_in_order = ids
    if index.d != dim or index.ntotal != len(ids) or stored is None or not np.array_equal(stored, ids_in_order):
        raise ModelError(f"{fpath}: FAISS index (dim {index.d}, {index.ntotal} rows) does not match the gallery "
                         f"metadata (dim {dim}, {len(ids)} rows); rebuild it with `entrep index`")
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(params.get("efSearch", ef_search))
    elif kind in ("ivf", "ivfpq") and "nprobe" in params:
        index.nprobe = int(params["nprobe"])
    return index


def read_vectors(fpath: Path, n: int, dim: int) -> np.ndarray:
    """The memory-mapped ``vectors.npy`` of an IVF-PQ gallery, checked to be float32 (n, dim); ModelError otherwise."""
    try:
        v = np.load(fpath, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ModelError(f"{fpath}: the IVF-PQ gallery's vector file is missing; rebuild it with `entrep index`") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{fpath}: unreadable vector file ({e}); rebuild it with `entrep index`") from None
    if v.dtype != np.float32 or v.shape != (n, dim):
        raise ModelError(f"{fpath}: vectors are {v.dtype} {v.shape}, the gallery metadata says float32 ({n}, {dim}); "
                         "rebuild it with `entrep index`")
    _attach_reader(v, fpath)
    return v


def _attach_reader(v: np.memmap, fpath: Path) -> None:
    """Open ``fpath`` once for :func:`take_rows` (closed when the memory map is garbage-collected)."""
    import os
    import weakref

    fd = os.open(fpath, os.O_RDONLY)
    v._entrep_reader = (fd, int(v.offset), v.shape[1] * v.itemsize)  # type: ignore[attr-defined]
    weakref.finalize(v, os.close, fd)


def take_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``vectors[rows]`` as float32; rows of a loaded (memory-mapped) vector file are read with ``pread``.

    Reading a few rows through the memory map faults in the kernel's fault-around window (64 KB, 32 rows
    at 512 dims) for each one, so a few hundred re-ranked queries map the whole file into the process
    (measured at 1M x 512: 1.98 GB resident). ``pread`` copies only the rows asked for; runs of consecutive
    rows are read in one call. ``rows`` should be sorted (re-ranking sorts them).
    """
    reader = getattr(vectors, "_entrep_reader", None)
    rows = np.asarray(rows, dtype=np.int64)
    if reader is None or not len(rows):
        return np.asarray(vectors[rows], dtype=np.float32)
    import os

    fd, offset, row_bytes = reader
    out = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
    starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # first position of each run
    ends = np.append(starts[1:], len(rows))
    for a, b in zip(starts.tolist(), ends.tolist()):
        buf = memoryview(out[a:b]).cast("B")
        got = os.preadv(fd, [buf], offset + int(rows[a]) * row_bytes)
        if got != len(buf):
            raise ModelError(f"vector file: short read at row {int(rows[a])} ({got} of {len(buf)} bytes); "
                             "rebuild it with `entrep index`")
    return out



