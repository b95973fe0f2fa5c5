"""The content-hash memo: cold hashing vs reuse, and the uncached path it replaces.

    python benchmarks/bench_hashing.py [--n 1000] [--kb 300] [--json OUT]

Writes ``n`` random files of ``kb`` KiB to a temporary folder and times
(1) ``sha256_files`` (uncached, what split used to do on every run),
(2) ``HashCache.sha256`` on an empty memo (hash + remember),
(3) the same call again (memo hits: one stat per file and a SQLite lookup),
(4) after touching 10% of the files (only those are hashed again).
Prints one JSON object (and writes it to ``--json``). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from entrep.data.hashing import HashCache, sha256_files


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        paths = []
        for i in range(a.n):
            p = root / f"img{i:05d}.png"
            p.write_bytes(rng.bytes(a.kb * 1024))
            paths.append(p)
        plain, s_plain = _timed(lambda: sha256_files(paths))
        memo = HashCache(root=root / "memo")
        cold, s_cold = _timed(lambda: memo.sha256(paths))
        warm, s_warm = _timed(lambda: memo.sha256(paths))
        assert plain == cold == warm
        for p in paths[:: 10]:
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        _, s_touched = _timed(lambda: memo.sha256(paths))
        touched = memo.last_computed
    out = {"n_files": a.n, "kb_per_file": a.kb, "uncached_s": s_plain, "memo_cold_s": s_cold,
           "memo_warm_s": s_warm, "memo_after_touching_10pct_s": s_touched, "rehashed_after_touch": touched,
           "warm_ms_per_file": round(1000 * s_warm / a.n, 4), "cpus": os.cpu_count()}
    print(json.dumps(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
