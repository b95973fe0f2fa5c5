"""Accuracy benchmark: synthetic ENTRep-sized data -> split -> fit -> evaluate (not run by CI).

    python benchmarks/bench_classification.py --n 1857 --out /tmp/bench-cls [--n-aug 2] [--real DATA]

Prints the paper's Table 9 comparison (prototype / baseline / hybrid, fine and
coarse), the hybrid at both thresholds, and retrieval, and writes the full
report to OUT/report. With ``--real DATA`` (a labelled folder you have, e.g. a
sample of ENTRep), it runs 5-fold cross-validation on it instead of the
synthetic data. Every figure in docs/benchmarks.md comes from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run_split(train, val, test, cfg, out: Path) -> dict:
    from entrep.model.train import fit
    from entrep.report.html import write_report

    t0 = time.perf_counter()
    model = fit(train, val=val, config=cfg, stage=lambda m: print(f"  {time.perf_counter() - t0:6.1f}s {m}", flush=True))
    ev, art = model.evaluate(test)
    write_report(out, ev, confusions=art["confusions"], embeddings=art["embeddings"])
    ev["fit_seconds"] = round(time.perf_counter() - t0, 1)
    return ev


def summarise(ev: dict) -> dict:
    s = ev["classification"]["systems"]
    out = {f"{name}/{lvl}": round(v["accuracy"], 4) for name, lv in s.items() for lvl, v in lv.items()}
    for thr, r in ev.get("hybrid", {}).get("results_at_thresholds", {}).items():
        out[f"hybrid@{thr}/fine"] = round(r["fine"]["accuracy"], 4)
    for task in ("i2i", "t2i"):
        for rel, m in (ev.get("retrieval", {}).get(task) or {}).items():
            if isinstance(m, dict) and m.get("n_queries"):
                out[f"{task}/{rel}/R@1"] = round(m["recall@1"], 4)
                out[f"{task}/{rel}/R@5"] = round(m["recall@5"], 4)
                out[f"{task}/{rel}/MRR"] = round(m["mrr"], 4)
    return out


def main() -> None:
    from entrep.config import FitConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1857)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-aug", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/entrep-bench-cls"))
    ap.add_argument("--real", type=Path, default=None, help="labelled data for 5-fold cross-validation")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (default OUT/results.json)")
    args = ap.parse_args()
    cfg = FitConfig(seed=args.seed, n_aug=args.n_aug)
    results = []
    if args.real is None:
        from entrep.data.readers import read_dataset
        from entrep.data.split import split_dataset
        from entrep.data.synthetic import generate

        data = args.out / "data"
        if not data.exists():
            t = time.perf_counter()
            generate(data, n=args.n, seed=args.seed)
            print(f"synthetic data: {args.n} images in {time.perf_counter() - t:.0f}s")
        sp = split_dataset(read_dataset(data), seed=args.seed)
        results.append(summarise(run_split(sp["train"], sp["val"], sp["test"], cfg, args.out / "report")))
    else:
        from sklearn.model_selection import StratifiedKFold

        from entrep.data.readers import read_dataset
        from entrep.model.train import split_for_fit

        ds = read_dataset(args.real)
        y = [r.label for r in ds.records]
        for k, (tr, te) in enumerate(StratifiedKFold(5, shuffle=True, random_state=args.seed).split(y, y)):
            train, val, _ = split_for_fit(ds.subset(tr), None, cfg)
            results.append(summarise(run_split(train, val, ds.subset(te), cfg, args.out / f"fold{k}")))
    keys = sorted({k for r in results for k in r})
    table = {k: (float(np.mean([r[k] for r in results if k in r])), float(np.std([r[k] for r in results if k in r])))
             for k in keys}
    print(json.dumps({k: f"{m:.4f} ± {s:.4f}" if len(results) > 1 else f"{m:.4f}" for k, (m, s) in table.items()},
                     indent=1))
    out = args.json or args.out / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"folds": results, "mean_std": table, "config": cfg.to_dict()}, indent=1))


if __name__ == "__main__":
    main()
