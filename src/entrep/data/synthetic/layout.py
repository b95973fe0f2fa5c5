"""Write a synthetic dataset in the exact ENTRep on-disk layouts.

```
OUT/imgs/<uuid>.png                     training images
OUT/cls.json  {"<file>.png": "<class>"}
OUT/i2i.json  {"a.png": "b.png", "b.png": "a.png", ...}   symmetric pairs sharing a finding
OUT/t2i.json  {"<English caption>": "<file>.png"}
OUT/public/data.json + OUT/public/*.png  public-release format (with --public)
OUT/queries/{cls,i2i,t2i}.csv           header-less query lists
OUT/queries/imgs/<uuid>.png             held-out query images
OUT/queries/answers.json                answer keys
```
Everything is built in a temporary folder beside OUT and renamed into place at
the end (:func:`entrep.io.atomic_path`), so an interrupted run leaves no half
dataset.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from entrep.data.synthetic.findings import description_en, description_vi, is_normal
from entrep.data.synthetic.plan import ImageSpec, Plan, PublicSpec, make_plan
from entrep.data.synthetic.render import render_image
from entrep.errors import UserError
from entrep.io import atomic_path
from entrep.taxonomy import ENT

log = logging.getLogger(__name__)

#: zlib level for PNGs: fastest; higher levels shrink these noisy frames by <3%.
PNG_COMPRESS_LEVEL = 1
#: Below this many images a worker pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 48

Job = tuple[int, int, int, str, tuple[str, ...], str]


def render_job(job: Job) -> int:
    """Render one planned image and save it as PNG; returns its index (worker entry point)."""
    seed, stream, index, label, findings, path = job
    rng = np.random.default_rng([seed, stream, index])
    arr = render_image(label, findings, rng)
    Image.fromarray(arr, "RGB").save(path, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return index


def _jobs(specs: Iterable[ImageSpec], seed: int, folder: Path) -> list[Job]:
    return [(seed, s.stream, s.index, s.label, tuple(s.findings), str(folder / s.name)) for s in specs]


def _default_workers(n_images: int) -> int:
    if n_images < MIN_IMAGES_FOR_POOL:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def render_all(jobs: list[Job], *, workers: int | None = None, progress: bool = False) -> None:
    """Render ``jobs`` in a pool of ``workers`` processes (1: in this process)."""
    w = _default_workers(len(jobs)) if workers is None else max(1, int(workers))
    bar = _progress(progress, len(jobs))
    try:
        if w == 1:
            for job in jobs:
                render_job(job)
                bar.advance()
        else:
            with _pool_context().Pool(w) as pool:
                for _ in pool.imap_unordered(render_job, jobs, chunksize=max(1, min(16, len(jobs) // (w * 8)))):
                    bar.advance()
                pool.close()  # on an error the context manager terminates the workers instead
                pool.join()
    finally:
        bar.close()


def _pool_context():
    """fork (instant start) unless torch is loaded, whose threads do not survive a fork; then spawn.

    Each image's bytes depend only on its seed, so the choice never changes the output.
    """
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self._p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True), transient=True)
            self._p.start()
            self._task = self._p.add_task("render", total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _lines(path: Path, items: Iterable[str]) -> None:
    items = list(items)
    path.write_text("".join(f"{x}\n" for x in items), encoding="utf-8")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} is not empty; choose a new folder or pass --force to replace it")


def write_layout(root: Path, plan: Plan) -> dict[str, str]:
    """Write the JSON and CSV files of ``plan`` under ``root`` (images are rendered separately)."""
    files: dict[str, str] = {}
    _dump(root / "cls.json", {s.name: s.label for s in sorted(plan.train, key=lambda s: s.name)})
    i2i: dict[str, str] = {}
    for a, b in plan.pairs:
        i2i[a] = b
        i2i[b] = a
    _dump(root / "i2i.json", i2i)
    _dump(root / "t2i.json", plan.captions)
    files.update(imgs="imgs", cls="cls.json", i2i="i2i.json", t2i="t2i.json")
    if plan.public:
        records = [{
            "Path": s.path,
            "Classification": s.label,
            "Type": "normal" if is_normal(s.findings) else "abnormal",
            "Description": description_vi(s.findings),
            "DescriptionEN": description_en(s.findings),
        } for s in plan.public if isinstance(s, PublicSpec)]
        _dump(root / "public" / "data.json", records)
        files["public"] = "public/data.json"
    if plan.queries:
        q = root / "queries"
        names = sorted(s.name for s in plan.queries)
        _lines(q / "cls.csv", names)
        _lines(q / "i2i.csv", plan.query_i2i)
        _lines(q / "t2i.csv", plan.query_t2i)
        _dump(q / "answers.json", {
            "cls": {s.name: ENT.class_id(s.label) for s in sorted(plan.queries, key=lambda s: s.name)},
            "i2i": plan.query_i2i,
            "t2i": plan.query_t2i,
            "i2i_train": plan.query_i2i_train,
        })
        files.update(queries_imgs="queries/imgs", queries_cls="queries/cls.csv", queries_i2i="queries/i2i.csv",
                     queries_t2i="queries/t2i.csv", answers="queries/answers.json")
    return files


def generate(out_dir: str | Path, *, n: int = 1857, seed: int = 0, public: bool = False,
             public_n: int | None = None, queries: bool = True, progress: bool = False,
             workers: int | None = None, force: bool = False) -> dict:
    """Write a synthetic ENTRep dataset to ``out_dir`` and return a summary.

    ``n`` training images (Table 1 class proportions), ``public`` adds a
    public-release folder of ``public_n`` images, ``queries`` adds held-out
    query CSVs, images and answer keys. Same ``seed`` -> byte-identical files,
    whatever ``workers``. Refuses a non-empty ``out_dir`` unless ``force``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"--n must be a positive whole number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a whole number >= 0, got {seed!r}")
    if public_n is not None and (not isinstance(public_n, (int, np.integer)) or public_n < 1):
        raise UserError(f"--public-n must be a positive whole number of images, got {public_n!r}")
    if workers is not None and int(workers) < 1:
        raise UserError(f"--workers must be at least 1, got {workers!r}")
    out = Path(out_dir)
    _check_out(out, force)
    t0 = time.perf_counter()
    plan = make_plan(int(n), int(seed), public=public, public_n=public_n, queries=queries)
    with atomic_path(out) as tmp:
        (tmp / "imgs").mkdir(parents=True)
        jobs = _jobs(plan.train, plan.seed, tmp / "imgs")
        if plan.public:
            (tmp / "public").mkdir()
            jobs += _jobs(plan.public, plan.seed, tmp / "public")
        if plan.queries:
            (tmp / "queries" / "imgs").mkdir(parents=True)
            jobs += _jobs(plan.queries, plan.seed, tmp / "queries" / "imgs")
        render_all(jobs, workers=workers, progress=progress)
        files = write_layout(tmp, plan)
    seconds = time.perf_counter() - t0
    log.info("wrote %d images to %s in %.1f s", len(jobs), out, seconds)
    return _summary(out, plan, files, seconds)


def _summary(out: Path, plan: Plan, files: dict[str, str], seconds: float) -> dict:
    counts = Counter(s.label for s in plan.train)
    summary = {
        "out": str(out),
        "seed": plan.seed,
        "n_images": len(plan.train),
        "counts": {c: counts.get(c, 0) for c in ENT.classes},
        "n_pairs": len(plan.pairs),
        "n_i2i_entries": 2 * len(plan.pairs),
        "n_captions": len(plan.captions),
        "paths": {k: str(out / v) for k, v in files.items()},
        "seconds": round(seconds, 2),
        "public": None,
        "queries": None,
    }
    if plan.public:
        pc = Counter(s.label for s in plan.public)
        summary["public"] = {
            "n_images": len(plan.public),
            "counts": {c: pc.get(c, 0) for c in ENT.classes},
            "n_patients": len({s.patient for s in plan.public if isinstance(s, PublicSpec)}),
            "n_case_mismatch": sum(1 for s in plan.public if isinstance(s, PublicSpec) and s.name != s.path),
        }
    if plan.queries:
        summary["queries"] = {
            "n_images": len(plan.queries),
            "n_cls": len(plan.queries),
            "n_i2i": len(plan.query_i2i),
            "n_t2i": len(plan.query_t2i),
        }
    return summary
