"""Speed of the synthetic generator at full size (target: 1,857 images in < 2 min on 2 cores).

    python benchmarks/bench_synth.py [--n 1857] [--workers 2] [--public] [--keep DIR] [--json OUT]

Writes to a temporary folder (removed afterwards unless --keep), prints one
JSON line (and writes it to ``--json OUT``): images written (training + held-out queries [+ public]), wall
seconds, ms per image, CPU seconds (this process + render workers; on a busy
machine wall time / cores overstates the cost, CPU time does not), workers,
CPU count and load average. Not run by CI.
Restrict cores with ``taskset -c 0,1`` to reproduce the 2-core number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from entrep.data.synthetic import generate


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the render workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1857)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--public", action="store_true")
    ap.add_argument("--no-queries", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="write here and keep the data")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    tmp = None
    out = args.keep
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
        out = tmp / "data"
    try:
        t0 = time.perf_counter()
        c0 = _cpu()
        s = generate(out, n=args.n, seed=args.seed, public=args.public, queries=not args.no_queries,
                     workers=args.workers, force=args.keep is not None)
        wall = time.perf_counter() - t0
        cpu = _cpu() - c0
        n_img = s["n_images"] + (s["queries"] or {}).get("n_images", 0) + (s["public"] or {}).get("n_images", 0)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        figures = {
            "n_train": s["n_images"], "n_images_written": n_img, "wall_s": round(wall, 1),
            "ms_per_image": round(1000 * wall / n_img, 1), "mib": round(size / 2**20, 1),
            "cpu_s": round(cpu, 1), "cpu_ms_per_image": round(1000 * cpu / n_img, 1),
            "workers": args.workers, "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
        }
        print(json.dumps(figures))
        if args.json:
            from entrep.io import write_json_atomic

            write_json_atomic(args.json, figures)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
