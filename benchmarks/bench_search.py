"""Search latency and recall of GalleryIndex kinds on a large synthetic gallery (not run by CI).

    python benchmarks/bench_search.py [--n 100000] [--dims 512 1280] [--queries 200] [--json out.json]

For each dimension: a seeded clustered gallery (unit vectors around
``--clusters`` centres) and held-out queries from the same distribution. For
each kind (flat = exact, hnsw, ivf) it reports build time, index size on disk
(what it holds in memory), single-query latency through ``GalleryIndex.search``
(median and p95 over ``--queries`` one-query calls), the same with a label
filter allowing 1/7 of the gallery ("narrow": approximate kinds scan the
allowed rows exactly) and one allowing 4/7 ("wide": approximate search with an
IDSelector), and recall@10 of the returned ids against exact numpy search.
Labels follow clusters, as classes do, so a filtered query's allowed
neighbours often lie far from it: the hard case for graph and list search. Numbers go to stdout as a Markdown table (and JSON with
``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from entrep.retrieval.index import GalleryIndex

LABELS = ["nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat"]
FILTERS = {"none": None, "narrow": {"throat"}, "wide": set(LABELS[:4])}


def clustered(n: int, d: int, n_clusters: int, spread: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    assign = rng.integers(0, n_clusters, n)
    x = centres[assign]
    x += spread * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, assign


def exact_ids(gallery: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[set[int]]:
    s = q @ gallery.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return [set(r.tolist()) for r in top]


def recall(found: list[list[int]], truth: list[set[int]], k: int) -> float:
    return float(np.mean([len(set(f[:k]) & t) / k for f, t in zip(found, truth)]))


def time_queries(index: GalleryIndex, q: np.ndarray, k: int, **kw) -> tuple[list[float], list[list[int]]]:
    for j in range(min(5, len(q))):  # warm-up
        index.search(q[j : j + 1], k, **kw)
    ms, ids = [], []
    for j in range(len(q)):
        t0 = time.perf_counter()
        hits = index.search(q[j : j + 1], k, **kw)[0]
        ms.append((time.perf_counter() - t0) * 1000)
        ids.append([h.id for h in hits])
    return ms, ids


def bench_one(kind: str, x: np.ndarray, labels: list[str], q: np.ndarray, k: int, truth: dict) -> dict:
    d = x.shape[1]
    index = GalleryIndex(d, kind=kind)
    meta = [{"name": f"img{i}.png", "label": lab} for i, lab in enumerate(labels)]
    t0 = time.perf_counter()
    index.add(x, meta)
    add_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index._faiss, str(path))  # noqa: SLF001 - size of the structure itself
        size_mb = path.stat().st_size / 2**20
    out = {}
    for name, allowed in FILTERS.items():
        ms, ids = time_queries(index, q, k, allowed=allowed)
        out[name] = {"ms_median": round(float(np.median(ms)), 3), "ms_p95": round(float(np.percentile(ms, 95)), 3),
                     "recall@10": round(recall(ids, truth[name], k), 4),
                     "violations": 0 if allowed is None else
                     int(sum(it.label not in allowed for r in ids for it in index.metadata_for(r)))}
    report = index.build_report
    return {
        "kind": index.kind,
        "params": index.params,
        "build_s": round(report.build_s if report else add_s, 2),
        "add_total_s": round(add_s, 2),
        "index_mb": round(size_mb, 1),
        **{f"{name}_{key}": v for name, r in out.items() for key, v in r.items()},
        "self_recall@10_build_report": None if report is None else report.recall_at_10,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="gallery size")
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 1280])
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    ap.add_argument("--queries", type=int, default=200, help="single-query searches timed per kind")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0, help="per-dimension noise around each centre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    env = {"python": platform.python_version(), "faiss": faiss.__version__, "numpy": np.__version__,
           "cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
           "loadavg_at_start": [round(v, 2) for v in os.getloadavg()], "cpu": platform.processor() or platform.machine()}
    print(f"# bench_search: n={args.n} dims={args.dims} queries={args.queries} k={args.k} {env}", flush=True)
    rows = []
    for d in args.dims:
        rng = np.random.default_rng(args.seed)
        t0 = time.perf_counter()
        data, assign = clustered(args.n + args.queries, d, args.clusters, args.spread, rng)
        x, q = data[: args.n], data[args.n :]
        labels = [LABELS[c % 7] for c in assign[: args.n]]  # labels follow clusters, like classes do
        lab = np.array(labels)
        masks = {name: None if a is None else np.isin(lab, sorted(a)) for name, a in FILTERS.items()}
        truth = {name: exact_ids(x, q, args.k, m) for name, m in masks.items()}
        print(f"## dim {d}: data + exact ground truth in {time.perf_counter() - t0:.1f}s "
              f"(rows allowed: narrow {masks['narrow'].sum()}, wide {masks['wide'].sum()})", flush=True)
        for kind in args.kinds:
            r = {"dim": d, "n": args.n, **bench_one(kind, x, labels, q, args.k, truth)}
            rows.append(r)
            print(json.dumps(r), flush=True)
        del data, x, q
    cols = ["dim", "kind", "params", "build_s", "index_mb"] + [
        f"{name}_{key}" for name in FILTERS for key in ("ms_median", "ms_p95", "recall@10")] + [
        "narrow_violations", "wide_violations"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) if c != "params" else (", ".join(f"{k}={v}" for k, v in r[c].items()) or "-")
                                for c in cols) + " |")
    env["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\nload average at end: {env['loadavg_at_end']}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "env": env, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
