"""Search latency, memory and recall of GalleryIndex kinds on a large synthetic gallery (not run by CI).

    python benchmarks/bench_search.py --n 1000000 --dims 512 --json OUT [--kinds flat ivf ivfpq [hnsw]]
    python benchmarks/bench_search.py --store-bench 1000000 --json OUT     # SQLite vs Parquet metadata

For each dimension: ``--n`` seeded clustered unit vectors (around ``--clusters``
centres, labels following clusters as classes do) plus ``--queries`` held-out
queries, generated in chunks straight into a memory-mapped ``.npy`` under
``--workdir`` (never the whole array plus copies in RAM). Exact ground truth
(numpy, chunked over the memory map) for three filters: none, "narrow" (1 of 7
labels, ~1/7 of the gallery) and "wide" (4 of 7, ~4/7).

Each kind is built in a subprocess (``GalleryIndex(kind=...).add`` then
``save``), and served in a *fresh* subprocess that only loads the saved gallery
and answers the queries, so ``rss_mb`` (that process's resident memory after
loading and answering, interpreter and libraries included; ``rss_base_mb`` is
the same process before loading) counts what serving needs, not generation or
build. Per kind and filter: recall@10 of the returned ids against exact search,
ms per query one query per ``search`` call (mean; median and p95 too), and ms
per query for the whole batch in one call. A filtered search returning a
disallowed row is counted in ``violations`` (always 0).

``--store-bench N`` measures the metadata store choice instead: N rows written
as SQLite (what entrep uses) and as Parquet, then in fresh subprocesses the
time and memory to open each and to look up 1,000 random rows by id.
Figures go to stdout (JSON lines and a Markdown table) and to ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ["nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat"]
FILTERS = {"none": None, "narrow": ["throat"], "wide": LABELS[:4]}
CHUNK = 65_536


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile (memory-mapped file pages) of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    st = proc_status()
    return st["VmRSS"], st["VmHWM"]


# ---- data -------------------------------------------------------------------
def generate(path: Path, n_total: int, d: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """Write ``n_total`` clustered unit vectors to the .npy at ``path`` in chunks; returns the cluster of each row."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    assign = rng.integers(0, n_clusters, n_total).astype(np.int32)
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=(n_total, d))
    for j in range(0, n_total, CHUNK):
        x = centres[assign[j : j + CHUNK]]
        x += spread * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[j : j + CHUNK] = x
    out.flush()
    del out
    return assign


def exact_truth(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None) -> np.ndarray:
    """Exact top-``k`` row ids (Q, k) of each query over the (memory-mapped) gallery ``x``, chunk by chunk."""
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for j in range(0, len(x), CHUNK):
        s = q @ np.asarray(x[j : j + CHUNK]).T
        if allowed is not None:
            s[:, ~allowed[j : j + CHUNK]] = -np.inf
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        ci = np.concatenate([best_i, top + j], axis=1)
        pick = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, pick, axis=1), np.take_along_axis(ci, pick, axis=1)
    return best_i


def labels_of(assign: np.ndarray) -> np.ndarray:
    return np.array(LABELS)[assign % 7]


# ---- children: build one kind, serve one saved gallery --------------------------
def child_build(a) -> dict:
    import entrep.retrieval.backend as backend
    from entrep.retrieval.index import GalleryIndex

    if a.rerank_min:  # IVF-PQ tuning: R = max(rerank_min / 10 * k, rerank_min)
        backend.RERANK_MIN, backend.RERANK_FACTOR = int(a.rerank_min), max(1, int(a.rerank_min) // 10)
    if a.pq_dims:
        backend.PQ_DIMS_PER_SUBQUANTIZER = int(a.pq_dims)

    x = np.load(a.data, mmap_mode="r")[: a.n]
    lab = labels_of(np.load(a.assign)[: a.n])
    meta = [{"name": f"img{i:07d}.png", "path": f"imgs/img{i:07d}.png", "label": str(lab[i]),
             "content_hash": f"{i:016x}"} for i in range(a.n)]
    index = GalleryIndex(x.shape[1], kind=a.kind)
    t0 = time.perf_counter()
    index.add(x, meta)
    add_s = time.perf_counter() - t0
    del meta
    t0 = time.perf_counter()
    index.save(a.out)
    save_s = time.perf_counter() - t0
    report = index.build_report
    return {"kind": index.kind, "params": index.params, "build_s": round(add_s, 2), "save_s": round(save_s, 2),
            "faiss_build_s": None if report is None else report.build_s,
            "build_report_recall_at_10": None if report is None else report.recall_at_10,
            "build_report_filtered": None if report is None else report.filtered,
            "build_peak_rss_mb": rss_mb()[1]}


def child_serve(a) -> dict:
    import faiss  # noqa: F401 - imported before the baseline so that libraries count in rss_base_mb

    from entrep.retrieval.index import GalleryIndex

    q = np.ascontiguousarray(np.load(a.data, mmap_mode="r")[a.n : a.n + a.queries])
    base = rss_mb()[0]
    t0 = time.perf_counter()
    index = GalleryIndex.load(a.out)
    load_s = time.perf_counter() - t0
    loaded = rss_mb()[0]
    out = {"load_s": round(load_s, 3), "rss_base_mb": base, "rss_loaded_mb": loaded}
    for name, labels in FILTERS.items():
        allowed = None if labels is None else set(labels)
        for j in range(min(5, len(q))):  # warm-up
            index.search(q[j : j + 1], a.k, allowed=allowed)
        ms, found = [], []
        for j in range(len(q)):
            t0 = time.perf_counter()
            hits = index.search(q[j : j + 1], a.k, allowed=allowed)[0]
            ms.append((time.perf_counter() - t0) * 1000)
            found.append([h.id for h in hits])
            if allowed is not None:
                out[f"{name}_violations"] = out.get(f"{name}_violations", 0) + sum(h.label not in allowed for h in hits)
        t0 = time.perf_counter()
        batch = index.search(q, a.k, allowed=allowed)
        batched = (time.perf_counter() - t0) * 1000 / len(q)
        out[name] = {"ms_per_query": round(float(np.mean(ms)), 3), "ms_median": round(float(np.median(ms)), 3),
                     "ms_p95": round(float(np.percentile(ms, 95)), 3), "ms_per_query_batched": round(batched, 3),
                     "found": found, "found_batched": [[h.id for h in r] for r in batch]}
    st = proc_status()
    out.update(rss_mb=st["VmRSS"], rss_peak_mb=st["VmHWM"], rss_anon_mb=st.get("RssAnon"), rss_file_mb=st.get("RssFile"))
    return out


def run_child(role: str, a, kind: str, out: Path, tmp: Path) -> dict:
    res = tmp / f"{role}-{kind}.json"
    cmd = [sys.executable, __file__, "--child", role, "--kind", kind, "--data", str(a.data), "--assign", str(a.assign),
           "--out", str(out), "--n", str(a.n), "--queries", str(a.queries), "--k", str(a.k), "--result", str(res)]
    if a.verbose:
        cmd.append("-v")
    for flag, v in (("--rerank-min", a.rerank_min), ("--pq-dims", a.pq_dims)):
        if v:
            cmd += [flag, str(v)]
    subprocess.run(cmd, check=True)
    return json.loads(res.read_text())


def recall(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return round(float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth)])), 4)


def bench_dim(a, d: int, tmp: Path) -> list[dict]:
    a.data, a.assign = tmp / f"vectors-{d}.npy", tmp / f"assign-{d}.npy"
    t0 = time.perf_counter()
    assign = generate(a.data, a.n + a.queries, d, a.clusters, a.spread, a.seed)
    np.save(a.assign, assign)
    x = np.load(a.data, mmap_mode="r")
    gallery, q = x[: a.n], np.ascontiguousarray(x[a.n :])
    lab = labels_of(assign[: a.n])
    masks = {name: None if labels is None else np.isin(lab, labels) for name, labels in FILTERS.items()}
    truth = {name: exact_truth(gallery, q, a.k, m) for name, m in masks.items()}
    print(f"## dim {d}: data + exact ground truth in {time.perf_counter() - t0:.1f}s (rows allowed: narrow "
          f"{masks['narrow'].sum()} = {masks['narrow'].mean():.3f}, wide {masks['wide'].sum()} = "
          f"{masks['wide'].mean():.3f})", flush=True)
    del x, gallery
    rows = []
    for kind in a.kinds:
        folder = tmp / f"gallery-{kind}-{d}"
        built = run_child("build", a, kind, folder, tmp)
        served = run_child("serve", a, kind, folder, tmp)
        row = {"kind": built["kind"], "requested": kind, "dim": d, "n": a.n, "params": built["params"],
               "build_s": built["build_s"], "rss_mb": served["rss_mb"],
               "recall_at_10": recall(served["none"]["found"], truth["none"], a.k),
               "ms_per_query": served["none"]["ms_per_query"],
               "ms_per_query_batched": served["none"]["ms_per_query_batched"]}
        for name in ("narrow", "wide"):
            row[f"{name}_recall_at_10"] = recall(served[name]["found"], truth[name], a.k)
            row[f"{name}_ms_per_query"] = served[name]["ms_per_query"]
            row[f"{name}_ms_per_query_batched"] = served[name]["ms_per_query_batched"]
        for name in FILTERS:
            row[f"{name}_recall_at_10_batched"] = recall(served[name]["found_batched"], truth[name], a.k)
            row[f"{name}_ms_median"], row[f"{name}_ms_p95"] = served[name]["ms_median"], served[name]["ms_p95"]
        row.update({"violations": served.get("narrow_violations", 0) + served.get("wide_violations", 0),
                    "load_s": served["load_s"], "rss_base_mb": served["rss_base_mb"],
                    "rss_loaded_mb": served["rss_loaded_mb"], "rss_peak_mb": served["rss_peak_mb"],
                    "rss_anon_mb": served["rss_anon_mb"], "rss_file_mb": served["rss_file_mb"],
                    "disk_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1),
                    **{k: built[k] for k in ("save_s", "faiss_build_s", "build_report_recall_at_10",
                                             "build_report_filtered", "build_peak_rss_mb")}})
        rows.append(row)
        print(json.dumps(row), flush=True)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    a.data.unlink()
    return rows


# ---- metadata store: SQLite vs Parquet ------------------------------------------------
def child_store(a) -> dict:
    import random

    base = rss_mb()[0]
    rng = random.Random(0)
    ids = [rng.randrange(a.n) for _ in range(1000)]
    t0 = time.perf_counter()
    if a.kind == "sqlite":
        from entrep.retrieval.store import MetaDB

        db = MetaDB.open(Path(a.out), a.n)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in ids:
            db.items([i])
    else:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(a.out)
        id_col = table.column("id").to_numpy()
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in ids:
            pos = int(np.searchsorted(id_col, i))
            table.slice(pos, 1).to_pylist()
        _ = pc  # the table is sorted by id: a binary search finds each row
    lookup_ms = (time.perf_counter() - t0) * 1000 / len(ids)
    return {"store": a.kind, "open_s": round(open_s, 3), "lookup_ms": round(lookup_ms, 4),
            "rss_mb_added": round(rss_mb()[0] - base, 1)}


def store_bench(a, tmp: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from entrep.retrieval.store import GalleryItem, MetaDB

    n = a.store_bench
    lab = labels_of(np.random.default_rng(0).integers(0, 7, n))
    items = (GalleryItem(i, f"/archive/site-a/exam{i // 50:06d}/frame{i:07d}.png", f"frame{i:07d}.png", str(lab[i]),
                         None, f"endoscopy frame {i}, {lab[i]}", f"{i:064x}") for i in range(n))
    t0 = time.perf_counter()
    MetaDB.write(tmp / "rows.sqlite", items)
    sqlite_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    cols = {"id": pa.array(np.arange(n, dtype=np.int64)),
            "path": pa.array([f"/archive/site-a/exam{i // 50:06d}/frame{i:07d}.png" for i in range(n)]),
            "name": pa.array([f"frame{i:07d}.png" for i in range(n)]), "label": pa.array(lab.tolist()),
            "grp": pa.nulls(n, pa.string()), "caption": pa.array([f"endoscopy frame {i}, {lab[i]}" for i in range(n)]),
            "content_hash": pa.array([f"{i:064x}" for i in range(n)])}
    pq.write_table(pa.table(cols), tmp / "rows.parquet")
    parquet_write = time.perf_counter() - t0
    del cols
    out = []
    for kind, path, write_s in (("sqlite", tmp / "rows.sqlite", sqlite_write), ("parquet", tmp / "rows.parquet",
                                                                                parquet_write)):
        res = tmp / f"store-{kind}.json"
        subprocess.run([sys.executable, __file__, "--child", "store", "--kind", kind, "--out", str(path), "--n", str(n),
                        "--result", str(res)], check=True)
        row = {"n": n, **json.loads(res.read_text()), "write_s": round(write_s, 2),
               "file_mb": round(path.stat().st_size / 2**20, 1)}
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


# ---- main ---------------------------------------------------------------------------
def table(rows: list[dict], cols: list[str]) -> str:
    fmt = lambda v: ", ".join(f"{k}={x}" for k, x in v.items()) or "-" if isinstance(v, dict) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="gallery size")
    ap.add_argument("--dims", type=int, nargs="+", default=[512])
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq"], help="also: hnsw (slow to build at 1M)")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries, each timed as a single search")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0, help="per-dimension noise around each centre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the memory-mapped data and galleries go "
                    "(default: a temporary folder; needs ~ n * dim * 8 bytes)")
    ap.add_argument("--rerank-min", type=int, default=None, help="IVF-PQ: re-rank max(N/10 * k, N) candidates "
                    "(default: backend.RERANK_MIN, RERANK_FACTOR)")
    ap.add_argument("--pq-dims", type=int, default=None, help="IVF-PQ: dimensions per sub-quantizer "
                    "(default: backend.PQ_DIMS_PER_SUBQUANTIZER)")
    ap.add_argument("--store-bench", type=int, default=None, metavar="N", help="measure SQLite vs Parquet metadata")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--child", choices=["build", "serve", "store"], help=argparse.SUPPRESS)
    for name in ("--kind", "--data", "--assign", "--out", "--result"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if a.child:
        res = {"build": child_build, "serve": child_serve, "store": child_store}[a.child](a)
        Path(a.result).write_text(json.dumps(res))
        return 0

    import faiss

    env = {"python": platform.python_version(), "faiss": faiss.__version__, "numpy": np.__version__,
           "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
           "loadavg_at_start": [round(v, 2) for v in os.getloadavg()], "cpu": platform.processor() or platform.machine()}
    print(f"# bench_search: n={a.n} dims={a.dims} kinds={a.kinds} queries={a.queries} k={a.k} {env}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=a.workdir, prefix="bench-search-") as tmp:
        tmp = Path(tmp)
        if a.store_bench:
            rows = store_bench(a, tmp)
            print("\n" + table(rows, ["store", "n", "write_s", "file_mb", "open_s", "rss_mb_added", "lookup_ms"]))
        else:
            rows = [r for d in a.dims for r in bench_dim(a, d, tmp)]
            cols = ["dim", "kind", "params", "build_s", "rss_mb", "recall_at_10", "ms_per_query",
                    "ms_per_query_batched"] + [f"{f}_{key}" for f in ("narrow", "wide") for key in
                                               ("recall_at_10", "ms_per_query", "ms_per_query_batched")] + [
                "violations", "load_s"]
            print("\n" + table(rows, cols))
    env["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    env["total_s"] = round(time.perf_counter() - t_start, 1)
    print(f"\nload average at end: {env['loadavg_at_end']}; total {env['total_s']}s")
    if a.json:
        from entrep.io import atomic_path

        with atomic_path(a.json) as tmp_json:
            tmp_json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items() if k != "child"},
                                            "env": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
