"""Embedding throughput: the local engine vs the Ray engine on the same machine.

    python benchmarks/bench_distribute.py --n 2000 --workers 2 --shard-rows 256 --json OUT

Generates ``n`` synthetic images (``entrep.data.synthetic.generate``), then embeds
them into shards twice with the offline profile, each run with a fresh feature
cache of its own (nothing is reused between runs): once with the local engine
(one process, torch using every core), once with the Ray engine (``workers``
actors, one CPU each, Ray started here with ``num_cpus=workers``). Reports
seconds, images per second, Ray's start-up seconds and Ray's overhead against
local with and without start-up, and the load average before and after (the
comparison only means something on an otherwise idle machine). Synthetic
images are far easier than real endoscopy for a classifier, but throughput
does not depend on that. Prints one JSON object (and writes it atomically to
``--json``). Not run by CI; ``--n 100`` checks that it works in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shard-rows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import ray

    from entrep.data.readers import read_dataset
    from entrep.data.synthetic import generate
    from entrep.distribute import EmbedSpec, embed_to_shards, get_engine

    with tempfile.TemporaryDirectory() as t:
        t = Path(t)
        generate(t / "data", n=a.n, seed=0)
        ds = read_dataset(t / "data")
        n = len(ds.records)
        res: dict = {"n_images": n, "workers": a.workers, "shard_rows": a.shard_rows, "batch_size": a.batch_size,
                     "cpus": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}

        t0 = time.perf_counter()
        embed_to_shards(ds, t / "local", EmbedSpec(cache=str(t / "cache-local"), batch_size=a.batch_size),
                        shard_rows=a.shard_rows)
        res["local_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
        res["ray_start_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        embed_to_shards(ds, t / "ray", EmbedSpec(cache=str(t / "cache-ray"), batch_size=a.batch_size),
                        engine=get_engine("ray", workers=a.workers), shard_rows=a.shard_rows)
        res["ray_s"] = round(time.perf_counter() - t0, 2)
        ray.shutdown()

    res["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    res["local_images_per_s"] = round(n / res["local_s"], 1)
    res["ray_images_per_s"] = round(n / res["ray_s"], 1)
    res["ray_overhead_pct"] = round(100 * (res["ray_s"] / res["local_s"] - 1), 1)
    res["ray_overhead_with_start_pct"] = round(100 * ((res["ray_s"] + res["ray_start_s"]) / res["local_s"] - 1), 1)
    print(json.dumps(res, indent=2))
    if a.json:
        from entrep.io import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
